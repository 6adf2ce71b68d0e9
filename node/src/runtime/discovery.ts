// Does this member found a group or join one? `--peers` cannot tell: a founding member gets every
// founding voter (itself included), a joining learner the current voters plus itself. A member
// with no state asks its seeds on the peer port (`/paxos/group/v1`): any seed that belongs to a
// running group answers with the group's configuration, and the member joins with it (as a learner,
// until the group promotes it). When a majority of the members in `--peers`, itself included,
// answer that they have no state either, the group is being founded and it founds it with them.
// While it asks, it answers the same question from the others on its own peer port.
//
// A member with no state that finds the group running may have promised and voted before: a voter
// that lost its state, a founder that starts late, or a member removed from the group before its
// disk went (a member cut off since then may still count on its old votes). Whatever the group
// lists it as, it keeps asking until enough of the voters other than itself have answered that
// every majority of the group has one of them among its other members (voters - majority + 1 of
// them), and joins with the highest ballot they promised and the highest instance they have voted
// on or know chosen (README, "A member without its state"). Those answers only tell it a ballot
// above any it may have voted at: it then has enough voters promise that ballot (`/fence`, the
// answer goes once the promise is synced) and takes the highest instance they report after it, so
// no vote its old self counted on can be cast after the answer that should cover it. While a
// configuration is chosen but not yet in force, both it and the one in force decide instances, so
// it asks enough of each. Of the seeds that answer, the one that has seen the most instances names
// the configurations. A new member pays two rounds of questions, and the master one phase 1. The
// same two rounds (`fenceVoters`) cover a configuration the member learns of while it catches up
// (the core's `fenceNeeded`).

import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import WebSocket, { WebSocketServer } from "ws";
import { rejoinAnswersNeeded } from "../paxos/config.js";
import { fenceBallot, type RejoinReport, rejoinState } from "../paxos/core.js";
import type { Ballot, Member } from "../paxos/types.js";
import { MEMBER_HEADER } from "../transport/peer-transport.js";

export const GROUP_PATH = "/paxos/group/v1";
/** The asker sends `{"counter": n}` and is answered once the member has promised (n, asker). */
export const FENCE_PATH = "/paxos/group/v1/fence";

export interface GroupAnswer {
  /** False from a member that has no state yet (it is founding or joining too). */
  readonly established: boolean;
  readonly members: readonly Member[];
  /**
   * A configuration chosen but not yet in force at the answering member, which decides the
   * instances from its activation on (absent when none, and from members of older versions).
   */
  readonly pending?: readonly Member[];
  /** An established member's highest promised ballot (absent from members of older versions). */
  readonly promised?: Ballot;
  /** An established member's highest instance voted on or known chosen. */
  readonly highestInstance?: number;
}

/** What a member without its state joins a running group with: see CoreOptions.abstainUntil. */
export interface Rejoin {
  readonly promised: Ballot;
  readonly abstainUntil: number;
  /** The voters that promised `fence` and whose answers these are. */
  readonly from: readonly string[];
  readonly fence: Ballot;
}

export type Discovery =
  | { readonly founding: true }
  | { readonly founding: false; readonly members: readonly Member[]; readonly rejoin: Rejoin };

const ASK_TIMEOUT_MS = 2000;
const RETRY_MS = 500;
const PROGRESS_LOG_MS = 10_000;

/** Serves one asker on an established member's peer port. */
export function answerGroup(ws: WebSocket, answer: GroupAnswer): void {
  ws.send(JSON.stringify(answer), () => ws.close(1000));
}

/** Serves one fence request (FENCE_PATH) from `member`; `fence` promises the ballot, then answers. */
export function answerFence(
  ws: WebSocket,
  member: string,
  fence: (ballot: Ballot) => Promise<GroupAnswer>,
): void {
  const timer = setTimeout(() => ws.terminate(), ASK_TIMEOUT_MS);
  ws.once("message", (data) => {
    clearTimeout(timer);
    let counter: unknown;
    try {
      counter = (JSON.parse(String(data)) as { counter?: unknown }).counter;
    } catch {}
    if (typeof counter !== "number" || !Number.isSafeInteger(counter) || counter < 1) {
      ws.close(1008, 'a fence request is {"counter": a positive integer}');
      return;
    }
    fence({ counter, member }).then(
      (answer) => answerGroup(ws, answer),
      () => ws.terminate(),
    );
  });
}

export async function discoverGroup(opts: {
  readonly self: string;
  /** Every member of `--peers`, self included: name -> host:port. */
  readonly peers: ReadonlyMap<string, string>;
  readonly host: string;
  readonly peerPort: number;
  readonly token?: string;
  readonly logger: Logger;
}): Promise<Discovery> {
  const seeds = [...opts.peers].filter(([name]) => name !== opts.self);
  if (seeds.length === 0) return { founding: true };
  const stopServing = await serveFresh(opts);
  try {
    const needed = Math.floor(opts.peers.size / 2) + 1;
    let lastLog = performance.now();
    for (;;) {
      const answers = await Promise.all(seeds.map(([, address]) => ask(address, opts).catch(() => null)));
      const established = mostAdvanced(answers);
      if (established) {
        return { founding: false, members: established.members, rejoin: await askVoters(established, opts) };
      }
      const fresh = answers.filter((a) => a !== null && !a.established).length + 1;
      if (fresh >= needed) return { founding: true };
      if (performance.now() - lastLog > PROGRESS_LOG_MS) {
        lastLog = performance.now();
        opts.logger.info(
          { answeredFresh: fresh, needed, seeds: seeds.map(([n]) => n) },
          "no state here: waiting for a majority of --peers to found the group, or for a running member to answer",
        );
      }
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  } finally {
    await stopServing();
  }
}

/** The established answer that has seen the most instances: its configurations are the newest. */
function mostAdvanced(answers: readonly (GroupAnswer | null)[]): GroupAnswer | undefined {
  let best: GroupAnswer | undefined;
  for (const a of answers) {
    if (!a?.established) continue;
    if (best === undefined || (a.highestInstance ?? -1) > (best.highestInstance ?? -1)) best = a;
  }
  return best;
}

/**
 * Asks the other voters of `found`'s configurations (in force, and pending if any) until enough of
 * each have answered, then has enough of each promise a ballot above all they answered (see the
 * top of this file). Waits as long as it takes: voting with less would be unsafe. `found`'s own
 * answer counts too: a higher ballot or instance only makes it wait longer.
 */
async function askVoters(
  found: GroupAnswer,
  opts: { self: string; token?: string; logger: Logger },
): Promise<Rejoin> {
  const configs = [found.members, ...(found.pending === undefined ? [] : [found.pending])];
  return fenceVoters(configs, answerOf(found), opts);
}

/**
 * The two rounds of a rejoin over the voters of `configs`: their promised ballots, then enough of
 * them promise a fence above those and report what they have seen (see the top of this file). Also
 * run by a rejoining member that learns of a configuration these did not cover (`fenceNeeded`).
 * `seen`, when given, is counted with the answers. Rejects once `signal` is aborted.
 */
export async function fenceVoters(
  configs: readonly (readonly Member[])[],
  seen: RejoinReport | null,
  opts: { self: string; token?: string; logger: Logger; signal?: AbortSignal },
): Promise<Rejoin> {
  const asking = configs.map((members) => ({
    others: members.filter((m) => m.role === "voter" && m.name !== opts.self),
    needed: rejoinAnswersNeeded({ members }),
  }));
  if (asking.some((c) => c.others.length < c.needed)) {
    // Only a configuration with a single voter gets here: that voter lost its state, and nobody can
    // say what it had promised or chosen. Voting anyway could undo acknowledged writes. At start-up
    // the member refuses to start; a rejoining member that learns of such a configuration abstains.
    throw new Error(
      `${opts.self} is the only voter of a running group and has no state: what it had chosen is ` +
        "lost unless a learner holds it, and it must not decide those instances again",
    );
  }
  const known = seen === null ? [] : [seen];
  const asked = await gatherEnough(asking, (address) => ask(address, opts), "answer", opts);
  const fence = fenceBallot(opts.self, [...known, ...asked.values()]);
  const fenced = await gatherEnough(
    asking,
    (address) => ask(address, opts, fence.counter),
    `promise ballot ${fence.counter}`,
    opts,
  );
  return { ...rejoinState([...known, ...fenced.values()]), from: [...fenced.keys()], fence };
}

function answerOf(a: GroupAnswer | null): RejoinReport | null {
  if (!a?.established || a.promised === undefined || a.highestInstance === undefined) return null;
  return { promised: a.promised, highestInstance: a.highestInstance };
}

/** Asks the voters of `configs` until enough of each have answered, retrying the others. */
async function gatherEnough(
  configs: readonly { others: readonly Member[]; needed: number }[],
  askOne: (address: string) => Promise<GroupAnswer>,
  what: string,
  opts: { logger: Logger; signal?: AbortSignal },
): Promise<Map<string, RejoinReport>> {
  const voters = new Map(configs.flatMap((c) => c.others.map((m) => [m.name, m.address] as const)));
  const answered = new Map<string, RejoinReport>();
  const enough = () => configs.every((c) => c.others.filter((m) => answered.has(m.name)).length >= c.needed);
  let lastLog = performance.now();
  for (;;) {
    opts.signal?.throwIfAborted();
    const missing = [...voters].filter(([name]) => !answered.has(name));
    const answers = await Promise.all(missing.map(([, address]) => askOne(address).catch(() => null)));
    missing.forEach(([name], i) => {
      const a = answerOf(answers[i] ?? null);
      if (a !== null) answered.set(name, a);
    });
    if (enough()) return answered;
    if (performance.now() - lastLog > PROGRESS_LOG_MS) {
      lastLog = performance.now();
      opts.logger.warn(
        {
          answered: [...answered.keys()],
          needed: configs.map((c) => c.needed),
          voters: configs.map((c) => c.others.map((m) => m.name)),
        },
        `no state here and the group is running: waiting for enough of its other voters to ${what} before joining`,
      );
    }
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
}

/** Asks one member what it knows; with `fenceCounter`, has it promise (fenceCounter, self) first. */
function ask(
  address: string,
  opts: { self: string; token?: string },
  fenceCounter?: number,
): Promise<GroupAnswer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { [MEMBER_HEADER]: opts.self };
    if (opts.token !== undefined) headers.Authorization = `Bearer ${opts.token}`;
    const path = fenceCounter === undefined ? GROUP_PATH : FENCE_PATH;
    const ws = new WebSocket(`ws://${address}${path}`, {
      headers,
      perMessageDeflate: false,
      maxPayload: 1 << 20,
    });
    if (fenceCounter !== undefined) ws.once("open", () => ws.send(JSON.stringify({ counter: fenceCounter })));
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no answer from ${address}`));
    }, ASK_TIMEOUT_MS);
    ws.once("message", (data) => {
      clearTimeout(timer);
      ws.close();
      try {
        resolve(JSON.parse(String(data)) as GroupAnswer);
      } catch (e) {
        reject(e);
      }
    });
    ws.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    ws.once("close", () => {
      clearTimeout(timer);
      reject(new Error(`${address} closed without answering`));
    });
  });
}

/** Answers "no state here" on the peer port until the real transport takes it over. */
async function serveFresh(opts: {
  host: string;
  peerPort: number;
  token?: string;
}): Promise<() => Promise<void>> {
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 });
  const digest = (s: string) => createHash("sha256").update(s).digest();
  const expected = opts.token === undefined ? undefined : digest(`Bearer ${opts.token}`);
  const server = createServer((_req, res) => {
    res.writeHead(503, { Connection: "close" });
    res.end("starting\n");
  });
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const authorized =
      expected === undefined || timingSafeEqual(digest(req.headers.authorization ?? ""), expected);
    if (req.url !== GROUP_PATH || !authorized) {
      socket.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => answerGroup(ws, { established: false, members: [] }));
  });
  const sockets = new Set<Duplex>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.peerPort, opts.host, resolve);
  });
  return async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  };
}
