import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeClock, flushMicrotasks } from "../../src/controller/clock.js";
import { RateLimiter, WorkQueue } from "../../src/controller/work-queue.js";

test("add de-duplicates queued keys and keeps FIFO order", async () => {
  const q = new WorkQueue({ clock: new FakeClock() });
  q.add("a");
  q.add("b");
  q.add("a");
  assert.equal(q.len(), 2);
  assert.equal(await q.get(), "a");
  assert.equal(await q.get(), "b");
  assert.equal(q.len(), 0);
});

test("a key re-added while processing is handed out again only after done", async () => {
  const q = new WorkQueue({ clock: new FakeClock() });
  q.add("a");
  const first = await q.get();
  assert.equal(first, "a");
  q.add("a");
  q.add("a");
  assert.equal(q.len(), 0, "not queued while being processed");
  let second: string | undefined;
  void q.get().then((k) => {
    second = k;
  });
  await flushMicrotasks();
  assert.equal(second, undefined, "no concurrent processing of one key");
  q.done("a");
  await flushMicrotasks();
  assert.equal(second, "a");
  q.done("a");
  assert.equal(q.len(), 0, "processed once more, not twice");
});

test("a waiting get receives the next added key", async () => {
  const q = new WorkQueue({ clock: new FakeClock() });
  const pending = q.get();
  q.add("x");
  assert.equal(await pending, "x");
});

test("addAfter adds when due; the earliest of several delays wins", async () => {
  const clock = new FakeClock();
  const q = new WorkQueue({ clock });
  q.addAfter("a", 1000);
  q.addAfter("a", 300);
  q.addAfter("a", 2000);
  await clock.advance(299);
  assert.equal(q.len(), 0);
  await clock.advance(1);
  assert.equal(q.len(), 1);
  await clock.advance(5000);
  assert.equal(q.len(), 1, "the later delays were not kept");
  assert.equal(clock.pending(), 0);
});

test("per-key backoff doubles from 5 ms, caps at 1000 s, and forget resets it", () => {
  const limiter = new RateLimiter({ qps: 1e9, burst: 1e9 }, new FakeClock());
  const delays = Array.from({ length: 5 }, () => limiter.when("a"));
  assert.deepEqual(delays, [5, 10, 20, 40, 80]);
  assert.equal(limiter.when("b"), 5, "keys back off independently");
  for (let i = 0; i < 40; i++) limiter.when("a");
  assert.equal(limiter.when("a"), 1_000_000);
  assert.equal(limiter.numRequeues("a"), 46);
  limiter.forget("a");
  assert.equal(limiter.numRequeues("a"), 0);
  assert.equal(limiter.when("a"), 5);
});

test("the overall token bucket limits retries beyond the burst to qps", async () => {
  const clock = new FakeClock();
  const limiter = new RateLimiter({ qps: 10, burst: 3 }, clock);
  // Distinct keys: only the bucket delays them.
  assert.deepEqual(
    ["a", "b", "c", "d", "e"].map((k) => limiter.when(k)),
    [5, 5, 5, 100, 200],
  );
  await clock.advance(1000);
  // 10 tokens refilled, minus the 2 owed, capped at the burst of 3.
  assert.deepEqual(
    ["f", "g", "h", "i"].map((k) => limiter.when(k)),
    [5, 5, 5, 100],
  );
});

test("addRateLimited re-adds after the backoff, forget resets it", async () => {
  const clock = new FakeClock();
  const q = new WorkQueue({ clock });
  q.addRateLimited("a");
  await clock.advance(4);
  assert.equal(q.len(), 0);
  await clock.advance(1);
  assert.equal(q.len(), 1);
  const key = await q.get();
  assert.equal(key, "a");
  q.addRateLimited("a");
  q.done("a");
  await clock.advance(9);
  assert.equal(q.len(), 0, "second failure waits 10 ms");
  await clock.advance(1);
  assert.equal(q.len(), 1);
  assert.equal(q.numRequeues("a"), 2);
  q.forget("a");
  assert.equal(q.numRequeues("a"), 0);
});

test("shutDown refuses new keys, drops delayed ones, hands out queued ones, then waits for done", async () => {
  const clock = new FakeClock();
  const q = new WorkQueue({ clock });
  q.add("a");
  q.add("b");
  q.addAfter("c", 100);
  const a = await q.get();
  assert.equal(a, "a");
  let drained = false;
  const shut = q.shutDown().then(() => {
    drained = true;
  });
  q.add("d");
  assert.equal(clock.pending(), 0, "delayed key dropped");
  assert.equal(await q.get(), "b");
  assert.equal(await q.get(), undefined);
  q.done("b");
  await flushMicrotasks();
  assert.equal(drained, false, "a is still being processed");
  q.done("a");
  await shut;
  assert.equal(drained, true);
  assert.equal(await q.get(), undefined);
});

test("shutDown wakes every waiting get with undefined", async () => {
  const q = new WorkQueue({ clock: new FakeClock() });
  const waiting = [q.get(), q.get()];
  await q.shutDown();
  assert.deepEqual(await Promise.all(waiting), [undefined, undefined]);
});
