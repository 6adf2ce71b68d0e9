import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import pino from "pino";
import { WebSocketServer } from "ws";
import { type Ballot, compareBallots, type Member } from "../../src/paxos/types.js";
import {
  answerFence,
  answerGroup,
  type Discovery,
  discoverGroup,
  FENCE_PATH,
  GROUP_PATH,
  type GroupAnswer,
} from "../../src/runtime/discovery.js";

const servers: Server[] = [];
after(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((resolve) => s.close(resolve));
  }
});

/** Ballots promised through FENCE_PATH, by the peer's address. */
const fenced = new Map<string, Ballot[]>();

/**
 * A peer port that answers the group question with whatever `answer()` returns at the time, and a
 * fence by promising its ballot when higher (an established peer only, as the runtime does).
 */
async function fakePeer(answer: () => GroupAnswer, onFence = () => {}): Promise<string> {
  const wss = new WebSocketServer({ noServer: true });
  const server = createServer();
  let promised: Ballot | undefined;
  const current = (): GroupAnswer => {
    const a = answer();
    if (!a.established || promised === undefined || compareBallots(promised, a.promised!) <= 0) return a;
    return { ...a, promised };
  };
  server.on("upgrade", (req, socket, head) => {
    if (req.url === GROUP_PATH)
      return wss.handleUpgrade(req, socket, head, (ws) => answerGroup(ws, current()));
    if (req.url !== FENCE_PATH) return socket.destroy();
    const member = String(req.headers["x-paxos-member"]);
    wss.handleUpgrade(req, socket, head, (ws) =>
      answerFence(ws, member, async (ballot) => {
        if (!answer().established) return answer();
        onFence();
        promised = compareBallots(ballot, current().promised!) > 0 ? ballot : current().promised;
        fenced.get(address)!.push(ballot);
        return current();
      }),
    );
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  fenced.set(address, []);
  return address;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function discover(self: string, peers: Map<string, string>): Promise<Discovery> {
  return discoverGroup({
    self,
    peers,
    host: "127.0.0.1",
    peerPort: await freePort(),
    logger: pino({ level: "silent" }),
  });
}

/** Starts discovery and says, `ms` later, whether it is still waiting; `result` settles after that. */
async function discoverFor(
  ms: number,
  self: string,
  peers: Map<string, string>,
): Promise<{ waiting: boolean; result: Promise<Discovery> }> {
  let settled = false;
  const result = discover(self, peers).finally(() => {
    settled = true;
  });
  await new Promise((resolve) => setTimeout(resolve, ms));
  return { waiting: !settled, result };
}

test("a voter without state waits for 3 of its 4 fellow voters, then rejoins with their highest ballot and instance", async () => {
  const names = ["v1", "v2", "v3", "v4"];
  const up = new Set(["v1", "v2"]);
  const members: Member[] = [{ name: "me", address: "", role: "voter" }];
  const answers = new Map<string, GroupAnswer>();
  for (const [i, name] of names.entries()) {
    const address = await fakePeer(() =>
      up.has(name) ? answers.get(name)! : { established: false, members: [] },
    );
    members.push({ name, address, role: "voter" });
    answers.set(name, {
      established: true,
      members,
      promised: { counter: 10 + i, member: name },
      highestInstance: 100 * (i + 1),
    });
  }
  const peers = new Map(members.map((m) => [m.name, m.address] as [string, string]));
  const found = await discoverFor(1500, "me", peers);
  // Two answers are not enough: a majority of five (the newcomer and two others) could miss both.
  assert.ok(found.waiting, "rejoined with two answers");
  up.add("v3");
  const d = await found.result;
  assert.equal(d.founding, false);
  assert.ok(!d.founding && d.rejoin !== null);
  if (d.founding || d.rejoin === null) return;
  // Above every ballot they answered with, promised by all three before their second answers.
  const fence = { counter: 13, member: "me" };
  assert.deepEqual(d.rejoin.fence, fence);
  assert.deepEqual(d.rejoin.promised, fence);
  assert.equal(d.rejoin.abstainUntil, 300);
  assert.deepEqual([...d.rejoin.from].sort(), ["v1", "v2", "v3"]);
  for (const m of members.slice(1)) {
    assert.deepEqual(fenced.get(m.address), m.name === "v4" ? [] : [fence], `${m.name}'s promises`);
  }
});

test("a member the group lists as a learner, or not at all, joins with the rule too: it may be a removed voter", async () => {
  for (const listed of [[{ name: "me", address: "", role: "learner" as const }], []]) {
    const voter = await fakePeer(() => ({
      established: true,
      members: [{ name: "v1", address: voter, role: "voter" }, ...listed],
      promised: { counter: 3, member: "v1" },
      highestInstance: 7,
    }));
    const d = await discover("me", new Map([["v1", voter]]));
    assert.ok(!d.founding);
    if (d.founding) return;
    const fence = { counter: 4, member: "me" };
    assert.deepEqual(d.rejoin, { promised: fence, abstainUntil: 7, from: ["v1"], fence });
  }
});

test("it joins with the highest instance answered after the fence: a vote may arrive between the rounds", async () => {
  let highestInstance = 7;
  const voter = await fakePeer(
    () => ({
      established: true,
      members: [{ name: "v1", address: voter, role: "voter" }],
      promised: { counter: 3, member: "v1" },
      highestInstance,
    }),
    () => {
      highestInstance = 9;
    },
  );
  const d = await discover("me", new Map([["v1", voter]]));
  assert.ok(!d.founding);
  if (d.founding) return;
  assert.equal(d.rejoin.abstainUntil, 9);
});

test("when a majority of --peers has no state either, the group is founded", async () => {
  const fresh = () => ({ established: false, members: [] });
  const a = await fakePeer(fresh);
  const b = await fakePeer(fresh);
  const d = await discover(
    "me",
    new Map([
      ["me", ""],
      ["a", a],
      ["b", b],
    ]),
  );
  assert.equal(d.founding, true);
});

test("the only voter of a running group, without its state, refuses to start", async () => {
  const learner = await fakePeer(() => ({
    established: true,
    members: [
      { name: "me", address: "", role: "voter" },
      { name: "l1", address: learner, role: "learner" },
    ],
    promised: { counter: 2, member: "me" },
    highestInstance: 9,
  }));
  await assert.rejects(discover("me", new Map([["l1", learner]])), /only voter of a running group/);
});

test("while a removal is pending it asks enough voters of both configurations, named by the most advanced seed", async () => {
  const up = new Set(["v1", "v3"]);
  const addresses = new Map<string, string>();
  const current: Member[] = [{ name: "me", address: "", role: "voter" }];
  const answerOf = new Map<string, GroupAnswer>();
  for (const name of ["v1", "v2", "v3"]) {
    const address = await fakePeer(() =>
      up.has(name) ? answerOf.get(name)! : { established: false, members: [] },
    );
    addresses.set(name, address);
    current.push({ name, address, role: "voter" });
  }
  const pending = current.filter((m) => m.name !== "v3");
  const answer = (i: number, highestInstance: number, withPending: boolean): GroupAnswer => ({
    established: true,
    members: current,
    ...(withPending ? { pending } : {}),
    promised: { counter: 5 + i, member: `v${i}` },
    highestInstance,
  });
  // v3 has not learned the removal yet; v1 has seen more instances, and the removal with them.
  answerOf.set("v1", answer(1, 50, true));
  answerOf.set("v2", answer(2, 40, true));
  answerOf.set("v3", answer(3, 10, false));

  // The stale seed comes first: the newest answer must win, not the first.
  const found = await discoverFor(1500, "me", new Map([...addresses].reverse()));
  // v1 and v3 meet every majority of the four voters in force, but of the three pending ones only
  // v1 answered: a majority of those (the newcomer and v2) would miss it.
  assert.ok(found.waiting, "joined without a second voter of the pending configuration");
  up.add("v2");
  const d = await found.result;
  assert.ok(!d.founding);
  if (d.founding) return;
  assert.deepEqual([...d.rejoin.from].sort(), ["v1", "v2", "v3"]);
  assert.deepEqual(d.rejoin.promised, { counter: 9, member: "me" });
  assert.equal(d.rejoin.abstainUntil, 50);
});
