// Thrifty accepts (README.md): a master sends each instance at once only to enough voters for a
// quorum with itself; the others get it lazyAcceptMs later, as a chosen value when it is chosen by
// then (nothing to vote on or sync), as an accept when it is not.

import assert from "node:assert/strict";
import { test } from "node:test";
import { PaxosCore } from "../../src/paxos/core.js";
import { type MemberId, ZERO_BALLOT } from "../../src/paxos/types.js";
import { Network, TICK_MS } from "./hand-network.js";

/**
 * Receivers of the messages of `type` sent since `from` (an index into net.sent) that carry
 * `instance`. A master's messages to itself are handled inside its core, so it is never one.
 */
function receivers(net: Network, from: number, type: "accept" | "learnReply", instance: number): MemberId[] {
  return net.sent
    .slice(from)
    .filter(
      ({ env }) => env.message.type === type && env.message.entries.some((e) => e.instance === instance),
    )
    .map(({ env }) => env.to)
    .sort();
}

/** The instance at which `name` executed the write acknowledged as `requestId`. */
function ackedInstance(net: Network, requestId: number): number {
  const acked = net.acknowledged.get(requestId);
  assert.ok(acked !== undefined, `write ${requestId} was not acknowledged`);
  return acked.instance;
}

test("a write goes at once to a quorum; the other voters get the chosen value, with nothing to vote on", () => {
  const { net, m } = Network.withMaster();
  const mark = net.sent.length;
  const write = net.write(m);
  net.deliver();
  const instance = ackedInstance(net, write);
  const followers = ["m1", "m2", "m3", "m4", "m5"].filter((n) => n !== m);
  const eager = receivers(net, mark, "accept", instance);
  assert.equal(eager.length, 2, "a quorum of five is the master and two followers");

  net.run(TICK_MS);
  const lazy = followers.filter((n) => !eager.includes(n));
  assert.deepEqual(receivers(net, mark, "learnReply", instance), lazy);
  assert.deepEqual(
    receivers(net, mark, "accept", instance),
    eager,
    "a lazy voter was asked to vote on a value chosen before lazyAcceptMs",
  );
  for (const name of followers)
    assert.equal(net.executed.get(name)!.get(instance), net.executed.get(m)!.get(instance));
  assert.equal(net.lateAccepts, 0);
});

test("a follower that stops answering loses its place to one that answers", () => {
  const { net, m } = Network.withMaster(["m1", "m2", "m3"]);
  let mark = net.sent.length;
  const first = net.write(m);
  net.deliver();
  const [eager] = receivers(net, mark, "accept", ackedInstance(net, first));
  const other = ["m1", "m2", "m3"].find((n) => n !== m && n !== eager)!;

  net.partition([[m, other], [eager!]]);
  const stalled = net.write(m);
  net.deliver();
  assert.ok(!net.acknowledged.has(stalled), "chosen without the eager follower's vote");
  const late = net.lateAccepts;
  net.run(TICK_MS);
  assert.ok(net.acknowledged.has(stalled), "not chosen once the accept went to the other follower");
  assert.equal(net.lateAccepts - late, 1, "one late accept reported");

  mark = net.sent.length;
  const next = net.write(m);
  net.deliver();
  assert.deepEqual(
    receivers(net, mark, "accept", ackedInstance(net, next)),
    [other],
    "the write after goes at once to the follower that answered",
  );
});

test("with lazyAcceptMs 0 every voter gets every accept at once", () => {
  const { net, m } = Network.withMaster(["m1", "m2", "m3", "m4", "m5"], { lazyAcceptMs: 0 });
  const mark = net.sent.length;
  const write = net.write(m);
  net.deliver();
  const followers = ["m1", "m2", "m3", "m4", "m5"].filter((n) => n !== m);
  assert.deepEqual(receivers(net, mark, "accept", ackedInstance(net, write)), followers);
});

test("a chosen value sent to a lazy voter is executed there and needs no sync", () => {
  const core = new PaxosCore({
    self: "m3",
    voters: ["m1", "m2", "m3"],
    incarnation: "1",
    random: () => 0.5,
    now: 0,
    recovered: { promised: ZERO_BALLOT, chosenUpTo: -1, unchosen: [] },
  });
  const value = { kind: "commands" as const, id: "m1/1/0", commands: [new Uint8Array([7])] };
  core.step({
    type: "receive",
    from: "m1",
    message: { type: "learnReply", entries: [{ instance: 0, value }], chosenUpTo: 0 },
  });
  const rd = core.ready();
  assert.deepEqual(
    rd.committed.map((c) => c.instance),
    [0],
  );
  assert.equal(rd.persist?.sync, false);
  assert.deepEqual(rd.sendNow.concat(rd.send), [], "nothing to answer or to ask for");
});
