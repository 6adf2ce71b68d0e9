// Does this member found a group or join one? `--peers` cannot tell: a founding member gets every
// founding voter (itself included), a joining learner the current voters plus itself. A member
// with no state asks its seeds on the peer port (`/paxos/group/v1`): any seed that belongs to a
// running group answers with the group's configuration, and the member joins with it (as a learner,
// until the group promotes it). When a majority of the members in `--peers`, itself included,
// answer that they have no state either, the group is being founded and it founds it with them.
// While it asks, it answers the same question from the others on its own peer port.

import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import WebSocket, { WebSocketServer } from "ws";
import type { Member } from "../paxos/types.js";
import { MEMBER_HEADER } from "../transport/peer-transport.js";

export const GROUP_PATH = "/paxos/group/v1";

export interface GroupAnswer {
  /** False from a member that has no state yet (it is founding or joining too). */
  readonly established: boolean;
  readonly members: readonly Member[];
}

export type Discovery =
  | { readonly founding: true }
  | { readonly founding: false; readonly members: readonly Member[] };

const ASK_TIMEOUT_MS = 2000;
const RETRY_MS = 500;
const PROGRESS_LOG_MS = 10_000;

/** Serves one asker on an established member's peer port. */
export function answerGroup(ws: WebSocket, answer: GroupAnswer): void {
  ws.send(JSON.stringify(answer), () => ws.close(1000));
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
      const established = answers.find((a) => a?.established);
      if (established) return { founding: false, members: established.members };
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

function ask(address: string, opts: { self: string; token?: string }): Promise<GroupAnswer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { [MEMBER_HEADER]: opts.self };
    if (opts.token !== undefined) headers.Authorization = `Bearer ${opts.token}`;
    const ws = new WebSocket(`ws://${address}${GROUP_PATH}`, {
      headers,
      perMessageDeflate: false,
      maxPayload: 1 << 20,
    });
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
