import assert from "node:assert/strict";
import { test } from "node:test";
import { CatchUpPlanner } from "../../src/checkpoint/catch-up.js";

const GRACE = 500;

function report(peer: string, from: number, at: number, checkpoint = 1000, minKept = 900) {
  return { peer, from, minKept, checkpoint, at };
}

test("a quorum of three needs one compacted peer, and only after the grace period", () => {
  const p = new CatchUpPlanner(GRACE);
  assert.equal(p.report(report("b", 10, 0), 9), true);
  assert.equal(p.decide(GRACE - 1, 9, 2), null);
  assert.deepStrictEqual(p.decide(GRACE, 9, 2), { source: "b", checkpoint: 1000 });
});

test("a quorum of five needs two peers; the highest checkpoint is the source", () => {
  const p = new CatchUpPlanner(GRACE);
  p.report(report("b", 10, 0, 1000), 9);
  assert.equal(p.decide(10 * GRACE, 9, 3), null);
  assert.equal(p.report(report("c", 10, 100, 2000), 9), false);
  assert.deepStrictEqual(p.decide(10 * GRACE, 9, 3), { source: "c", checkpoint: 2000 });
});

test("progress from the log drops every report", () => {
  const p = new CatchUpPlanner(GRACE);
  p.report(report("b", 10, 0), 9);
  assert.equal(p.decide(10 * GRACE, 10, 2), null);
  // The old answer was for instance 10; we now need 11 and nobody has said anything about it.
  assert.equal(p.decide(20 * GRACE, 10, 2), null);
});

test("stale answers, answers whose log still holds the point, and useless checkpoints are ignored", () => {
  const p = new CatchUpPlanner(GRACE);
  assert.equal(p.report(report("b", 5, 0), 9), false, "answer for an older learn point");
  assert.equal(p.report(report("b", 10, 0, 1000, 10), 9), false, "its log starts at the point");
  assert.equal(p.report(report("b", 10, 0, 9, 900), 9), false, "checkpoint not past what we have");
  assert.equal(p.decide(10 * GRACE, 9, 2), null);
});

test("reset forgets the reports", () => {
  const p = new CatchUpPlanner(GRACE);
  p.report(report("b", 10, 0), 9);
  p.reset();
  assert.equal(p.decide(10 * GRACE, 9, 2), null);
  assert.equal(p.report(report("b", 10, 20 * GRACE), 9), true);
});
