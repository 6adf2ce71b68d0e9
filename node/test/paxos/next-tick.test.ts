// nextTickAt(): the core says when a tick next has work, and the shells tick only then. A deadline
// it fails to report would leave a member idle when it should act; the simulation runs whole
// groups ticked this way, and these cases pin the simplest deadlines one by one.

import assert from "node:assert/strict";
import { test } from "node:test";
import { PaxosCore } from "../../src/paxos/core.js";
import { type Envelope, type Message, ZERO_BALLOT } from "../../src/paxos/types.js";

const TIMING = { heartbeatMs: 20, electionTimeoutMs: 100, retryMs: 40, lazyAcceptMs: 10 };

function core(voters: string[]): PaxosCore {
  return new PaxosCore({
    self: "m1",
    voters,
    incarnation: "1",
    random: () => 0.5,
    now: 0,
    recovered: { promised: ZERO_BALLOT, chosenUpTo: -1, unchosen: [] },
    timing: TIMING,
  });
}

test("a follower's next tick is its election deadline: nothing happens before it, a campaign at it", () => {
  const c = core(["m1", "m2", "m3"]);
  const deadline = c.nextTickAt();
  assert.equal(deadline, 150, "election timeout plus half the jitter");
  c.step({ type: "tick", now: deadline - 1 });
  const before = c.ready();
  assert.equal(before.sendNow.length + before.send.length, 0);
  c.step({ type: "tick", now: deadline });
  const at = c.ready();
  assert.deepEqual(at.send.map((e) => `${e.to}:${e.message.type}`).sort(), [
    "m1:prepare",
    "m2:prepare",
    "m3:prepare",
  ]);
  assert.equal(c.nextTickAt(), deadline + TIMING.retryMs, "unanswered prepares are retried");
});

/** Delivers what `c` sends itself, over and over, and returns what it sends the others. */
function settle(c: PaxosCore, now: number): Envelope[] {
  const out: Envelope[] = [];
  for (let rd = c.ready(); ; rd = c.ready()) {
    const own = [...rd.sendNow, ...rd.send].filter((e) => e.to === "m1");
    out.push(...[...rd.sendNow, ...rd.send].filter((e) => e.to !== "m1"));
    if (own.length === 0) return out;
    for (const e of own) c.step({ type: "receive", from: "m1", message: e.message }, now);
  }
}

test("a master's next tick is its heartbeat, a retry of what is unanswered, or at once to announce", () => {
  const c = core(["m1", "m2", "m3"]);
  c.step({ type: "tick", now: 150 });
  const prepare = settle(c, 150).find((e) => e.message.type === "prepare")!.message;
  assert.equal(prepare.type, "prepare");
  if (prepare.type !== "prepare") return;
  const promise: Message = { type: "promise", ballot: prepare.ballot, chosenUpTo: -1, accepted: [] };
  c.step({ type: "receive", from: "m2", message: promise }, 151);
  settle(c, 151);
  assert.equal(c.currentRole, "master");
  assert.equal(c.nextTickAt(), 151 + TIMING.heartbeatMs, "idle: the next heartbeat");

  c.step({ type: "propose", requestId: 1, command: new Uint8Array([1]) }, 155);
  const accepts = settle(c, 155).filter((e) => e.message.type === "accept");
  assert.deepEqual(
    accepts.map((e) => e.to),
    ["m2"],
    "a quorum with the master: the promiser first, then by name",
  );
  assert.equal(c.nextTickAt(), 155 + TIMING.lazyAcceptMs, "the accept held back from m3");
  c.step({ type: "tick", now: 165 });
  assert.deepEqual(
    settle(c, 165).map((e) => `${e.to}:${e.message.type}`),
    ["m3:accept", "m3:commit"],
    "unchosen after lazyAcceptMs: m3 gets it to vote on",
  );
  assert.equal(c.nextTickAt(), 151 + TIMING.heartbeatMs, "the heartbeat comes before the retry");
  for (const now of [171, 191]) {
    c.step({ type: "tick", now });
    settle(c, now);
  }
  assert.equal(c.nextTickAt(), 155 + TIMING.retryMs, "then the retry of the unanswered accept");

  const accept = accepts[0]!.message;
  if (accept.type !== "accept") return;
  const instances = accept.entries.map((e) => e.instance);
  c.step(
    { type: "receive", from: "m2", message: { type: "accepted", ballot: accept.ballot, instances } },
    192,
  );
  settle(c, 192);
  assert.ok(c.chosenPoint >= instances.at(-1)!, "chosen with m2's vote");
  assert.equal(c.nextTickAt(), 192, "no accept carries the commit notice: due at once");
});
