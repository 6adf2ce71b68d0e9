import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeClock, flushMicrotasks } from "../../src/controller/clock.js";
import { Manager } from "../../src/controller/manager.js";
import { WorkQueue } from "../../src/controller/work-queue.js";

test("a failing reconcile is retried with growing backoff, then forgotten on success", async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  const calls: number[] = [];
  let failuresLeft = 3;
  const manager = new Manager({
    queue,
    clock,
    reconcile: async () => {
      calls.push(clock.now());
      if (failuresLeft-- > 0) throw new Error("boom");
      return {};
    },
  });
  await manager.start();
  queue.add("ns/a");
  await clock.advance(1000);
  assert.deepEqual(calls, [0, 5, 15, 35], "retried after 5, 10 and 20 ms");
  assert.equal(queue.numRequeues("ns/a"), 0, "success forgets the backoff");
  await manager.stop();
});

test("requeueAfterMs schedules the next reconcile; stop drains and ends the workers", async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  const calls: number[] = [];
  const manager = new Manager({
    queue,
    clock,
    workers: 2,
    reconcile: async () => {
      calls.push(clock.now());
      return { requeueAfterMs: 60_000 };
    },
  });
  await manager.start();
  queue.add("k");
  await clock.advance(150_000);
  assert.deepEqual(calls, [0, 60_000, 120_000]);
  await manager.stop();
  assert.equal(clock.pending(), 0, "no requeue left scheduled after stop");
  queue.add("k");
  await clock.advance(100_000);
  assert.equal(calls.length, 3);
});

test("one key is never reconciled by two workers at once", async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  let running = 0;
  let maxRunning = 0;
  let calls = 0;
  const manager = new Manager({
    queue,
    clock,
    workers: 4,
    reconcile: async () => {
      calls++;
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise<void>((r) => clock.setTimeout(r, 10));
      running--;
      return {};
    },
  });
  await manager.start();
  queue.add("k");
  await flushMicrotasks();
  queue.add("k");
  queue.add("k");
  await clock.advance(100);
  assert.equal(maxRunning, 1);
  assert.equal(calls, 2, "the adds during processing collapse into one more reconcile");
  await manager.stop();
});

test("stop gives up on a reconcile that outlives the shutdown deadline", async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  const manager = new Manager({
    queue,
    clock,
    shutdownTimeoutMs: 5000,
    reconcile: () => new Promise(() => {}),
  });
  await manager.start();
  queue.add("stuck");
  await flushMicrotasks();
  let stopped = false;
  const stopping = manager.stop().then(() => {
    stopped = true;
  });
  await clock.advance(4999);
  assert.equal(stopped, false);
  await clock.advance(1);
  await stopping;
  assert.equal(stopped, true);
});
