// A member that lost its disk rejoins as discovery.ts has it (answers, fence, answers again), on a
// hand-driven network: the schedule the README's "A member without its state" argues about, which
// random runs rarely produce.

import assert from "node:assert/strict";
import { test } from "node:test";
import { votersOf } from "../../src/paxos/config.js";
import { PaxosCore } from "../../src/paxos/core.js";
import { type Ballot, compareBallots, type MemberId, type Value } from "../../src/paxos/types.js";
import { NAMES, Network, seeded, TICK_MS } from "./hand-network.js";

test("a vote in flight when the answers were given cannot complete a quorum with the forgotten vote", () => {
  const { net, m } = Network.withMaster();
  // M is the master, N the member that will lose its disk, X the answerer M's retry reaches later.
  const [n, x, y, z] = NAMES.filter((name) => name !== m) as [MemberId, MemberId, MemberId, MemberId];
  for (let i = 0; i < 3; i++) net.write(m);
  net.run(200);

  // M's accept for the next instance reaches N alone; N votes and loses its disk.
  net.partition([
    [m, n],
    [x, y, z],
  ]);
  const inFlight = net.write(m);
  net.run(TICK_MS);
  const instance = Math.max(...net.executed.get(m)!.keys()) + 1;
  assert.equal(net.cores.get(n)!.rejoinAnswer().highestInstance, instance, "N voted");
  net.lose(n);

  // N rejoins with the answers of X, Y and Z, none of which has seen that instance.
  const { abstainUntil } = net.rejoin(n, [x, y, z]);
  assert.ok(abstainUntil < instance, `the answerers knew of instance ${instance}`);

  // M's retried accept now reaches X. Had X voted, {M, N's forgotten vote, X} would have chosen
  // the value, and the phase 1 of {N, Y, Z} below would have missed it: the fence makes X refuse.
  net.partition([
    [m, x],
    [n, y, z],
  ]);
  net.run(300);
  net.down.add(m);
  net.down.add(x);
  net.run(1500);
  const master = net.master([n, y, z]);
  assert.ok(master !== null, "N, Y and Z elect a master once N has learned what it missed");
  const after = net.write(master);
  net.run(300);
  assert.ok(net.acknowledged.has(after), "the group writes again");

  // Everyone back: one value per instance everywhere, and the acknowledged write kept.
  net.down.clear();
  net.partition(null);
  net.run(1500);
  const chosen = new Map<number, string>();
  for (const [name, log] of net.executed) {
    for (const [i, id] of log) {
      const other = chosen.get(i);
      assert.ok(
        other === undefined || other === id,
        `${name} executed ${id} at ${i}, another member ${other}`,
      );
      chosen.set(i, id);
    }
  }
  const acked = net.acknowledged.get(inFlight);
  if (acked !== undefined)
    assert.equal(chosen.get(acked.instance), acked.valueId, "an acknowledged write was lost");
});

test("a configuration learned while catching up that the fenced voters do not cover is fenced before any promise", () => {
  const voter = (name: MemberId) => ({ name, address: "", role: "voter" as const });
  const core = new PaxosCore({
    self: "n",
    voters: ["n", "a", "b", "c"],
    learners: ["e"],
    incarnation: "1",
    random: seeded(1),
    now: 0,
    recovered: { promised: { counter: 3, member: "n" }, chosenUpTo: -1, unchosen: [] },
    // Fenced by b and c: enough for four voters (every majority of them has b or c besides n).
    abstainUntil: 3,
    fencedBy: ["b", "c"],
    activationDelay: 4,
  });
  const noop = (i: number): Value => ({ kind: "noop", id: `x/${i}` });
  const five: Value = {
    kind: "config",
    id: "x/promote",
    config: { members: ["n", "a", "b", "c", "e"].map(voter) },
  };
  const learn = (from: number, values: Value[]) =>
    core.step({
      type: "receive",
      from: "b",
      message: {
        type: "learnReply",
        entries: values.map((value, k) => ({ instance: from + k, value })),
        chosenUpTo: from + values.length - 1,
      },
    });
  const promises = (rd: ReturnType<PaxosCore["ready"]>) =>
    [...rd.sendNow, ...rd.send].filter((e) => e.message.type === "promise").length;

  // Up to its bound it learns that e was promoted at 1: five voters from 5 on, whose majority
  // {n, a, e} holds neither b nor c. So it abstains and asks for fences among the five.
  learn(0, [noop(0), five, noop(2), noop(3)]);
  let rd = core.ready();
  assert.deepEqual(
    rd.fenceNeeded?.map((c) => votersOf(c).sort()),
    [["a", "b", "c", "e", "n"]],
  );
  assert.notEqual(core.status().abstainingUntil, null, "stopped abstaining with an unfenced configuration");
  core.step({
    type: "receive",
    from: "a",
    message: { type: "prepare", ballot: { counter: 9, member: "a" }, from: 4 },
  });
  rd = core.ready();
  assert.equal(promises(rd), 0, "promised while a majority of the new configuration may hold its votes");
  assert.equal(rd.fenceNeeded, null, "asked twice");

  // a and e promised a fence and had seen up to 6: it learns up to there, then may promise.
  core.step({ type: "fenced", by: ["a", "e"], promised: { counter: 10, member: "n" }, highestInstance: 6 });
  rd = core.ready();
  assert.deepEqual(rd.persist, {
    records: [],
    promised: { counter: 10, member: "n" },
    abstainUntil: 6,
    fencedBy: ["b", "c", "a", "e"],
    sync: true,
  });
  learn(4, [noop(4), noop(5)]);
  core.ready();
  assert.notEqual(core.status().abstainingUntil, null, "stopped abstaining below its new bound");
  learn(6, [noop(6)]);
  rd = core.ready();
  assert.equal(core.status().abstainingUntil, null);
  assert.equal(rd.persist?.fencedBy, null, "the check is not dropped for good");
  core.step({
    type: "receive",
    from: "a",
    message: { type: "prepare", ballot: { counter: 11, member: "a" }, from: 7 },
  });
  assert.equal(promises(core.ready()), 1);
});

test("a fenced master runs phase 1 again at once, above the fence, and its write goes through", () => {
  const { net, m } = Network.withMaster();
  const fence: Ballot = { counter: net.cores.get(m)!.status().ballot.counter + 5, member: "newcomer" };
  const write = net.write(m);
  net.step(m, { type: "fence", ballot: fence });
  const s = net.cores.get(m)!.status();
  assert.equal(s.role, "candidate");
  assert.ok(
    compareBallots(s.ballot, fence) > 0,
    `campaigns at ${JSON.stringify(s.ballot)}, not above the fence`,
  );
  // Well inside an election timeout (100 ms): no member had to wait for one.
  net.run(3 * TICK_MS);
  assert.equal(net.master(), m);
  assert.ok(net.acknowledged.has(write), "the write in flight was lost");
});

test("a master refused by fenced followers campaigns above the fence it never saw, and wins at once", () => {
  const { net, m } = Network.withMaster();
  const fence: Ballot = { counter: net.cores.get(m)!.status().ballot.counter + 50, member: "newcomer" };
  // Three of its four followers promise the fence: no majority is left below it.
  for (const f of NAMES.filter((n) => n !== m).slice(0, 3)) net.step(f, { type: "fence", ballot: fence });
  const write = net.write(m);
  net.run(5 * TICK_MS);
  assert.equal(net.master(), m, "stepped down to wait for an election timeout");
  assert.ok(compareBallots(net.cores.get(m)!.status().ballot, fence) > 0);
  assert.ok(net.acknowledged.has(write));
});
