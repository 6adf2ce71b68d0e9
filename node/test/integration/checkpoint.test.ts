// Checkpoints with real processes: restart from a checkpoint, the cleaner, and the seed's
// scenario — a member that fell behind the cleaned log receives a checkpoint, exits 75, and after
// its restart holds exactly the others' data — with faults during the transfer.

import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { PaxosLog } from "../../src/storage/paxos-log.js";
import { assertAllReadable, Cluster, type StatusJson, waitCaughtUp, waitFor } from "./cluster.js";

const TOKEN = "checkpoint-test-token";
/** A 64 KiB value, so a few hundred writes make a checkpoint of several chunks. */
const BIG = "x".repeat(64 * 1024);

async function writeKeys(c: Cluster, prefix: string, count: number, value = (i: number) => `${prefix}-${i}`) {
  const written = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const key = `${prefix}-${i}`;
    const v = value(i);
    const target = c.members.find((m) => m.child !== null)!.name;
    const r = await c.put(target, key, v);
    assert.equal(r.status, 200, `PUT ${key}: ${r.status} ${await r.text()}`);
    await r.arrayBuffer().catch(() => {});
    written.set(key, v);
  }
  return written;
}

async function statusOf(c: Cluster, name: string): Promise<StatusJson> {
  return waitFor(30_000, `status of ${name}`, async () => (await c.status(name)) ?? undefined);
}

async function checkpointNow(c: Cluster, name: string): Promise<number> {
  const r = await c.admin(name, "POST", "/v1/admin/checkpoint");
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.checkpoint as number;
}

/** Starts `name` and waits for its exit after it loaded a checkpoint; returns the termination line. */
async function expectCheckpointExit(c: Cluster, name: string): Promise<string> {
  const exit = await waitFor(120_000, `${name} to exit`, async () => {
    const m = c.member(name);
    if (m.child !== null) return undefined;
    return m.exit ?? undefined;
  });
  const { code } = await exit;
  assert.equal(code, 75, `${name} exited with ${code}; log:\n${c.logs(name).slice(-3000)}`);
  return readFileSync(c.member(name).terminationLog, "utf8").trim();
}

test("a restart replays only the log after the checkpoint", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN, args: ["--checkpoint-every=1000000"] });
  t.after(() => c.destroy());
  await c.waitForMaster();
  const before = await writeKeys(c, "a", 100);
  const checkpoint = await checkpointNow(c, "n1");
  assert.ok(checkpoint >= 99, `checkpoint ${checkpoint} covers the 100 writes`);
  const after = await writeKeys(c, "b", 20);
  await c.kill("n1");
  c.startMember("n1");
  const s = await waitFor(30_000, "n1 to serve again", async () => {
    const st = await c.status("n1");
    return st !== null && st.instances.executed >= checkpoint + 20 ? st : undefined;
  });
  assert.equal(s.instances.checkpoint, checkpoint);
  assert.ok(
    s.instances.replayedOnStart <= s.instances.chosen - checkpoint,
    `replayed ${s.instances.replayedOnStart} instances, more than the ${s.instances.chosen - checkpoint} after the checkpoint`,
  );
  await waitCaughtUp(c, "n1", await c.waitForMaster());
  await assertAllReadable(c, "n1", after, true);

  // With its state machine lost, the member starts from the checkpoint and replays only the log
  // after it: never from instance 0.
  await c.stop("n1");
  rmSync(join(c.member("n1").dataDir, "sm"), { recursive: true, force: true });
  c.startMember("n1");
  const rebuilt = await waitFor(30_000, "n1 to serve from its checkpoint", async () => {
    const st = await c.status("n1");
    return st !== null && st.instances.executed >= checkpoint + 20 ? st : undefined;
  });
  assert.ok(
    rebuilt.instances.replayedOnStart >= 20 &&
      rebuilt.instances.replayedOnStart <= rebuilt.instances.chosen - checkpoint,
    `replayed ${rebuilt.instances.replayedOnStart}: the ${rebuilt.instances.chosen - checkpoint} instances after checkpoint ${checkpoint} at most, and at least the 20 written after it`,
  );
  await assertAllReadable(c, "n1", before, true);
  await assertAllReadable(c, "n1", after, true);
});

test("the cleaner deletes below checkpoint - holdCount only while running", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN, args: ["--checkpoint-every=1000000", "--hold-count=10"] });
  t.after(() => c.destroy());
  await c.waitForMaster();
  const paused = await c.admin("n1", "PUT", "/v1/admin/cleaner", { state: "paused" });
  assert.equal(paused.status, 200);
  assert.deepStrictEqual(paused.json, { state: "paused", until: null, holdCount: 10 });
  await writeKeys(c, "k", 120, () => BIG);
  const checkpoint = await checkpointNow(c, "n1");
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await statusOf(c, "n1")).instances.minKept, 0, "a paused cleaner deletes nothing");

  // An until in the past ends paused at once.
  const past = await c.admin("n1", "PUT", "/v1/admin/cleaner", {
    state: "running",
    until: "2020-01-01T00:00:00Z",
  });
  assert.equal(past.status, 200);
  assert.equal(past.json.state, "paused");

  const until = new Date(Date.now() + 3_600_000).toISOString();
  const running = await c.admin("n1", "PUT", "/v1/admin/cleaner", { state: "running", until });
  assert.equal(running.json.state, "running");
  const bound = checkpoint - 10;
  const s = await waitFor(30_000, "the cleaner to reach the bound", async () => {
    const st = await c.status("n1");
    return st !== null && st.instances.minKept >= bound ? st : undefined;
  });
  assert.equal(s.instances.minKept, bound, "nothing at or above checkpoint - holdCount is deleted");
  assert.equal(s.cleaner.state, "running");

  // Gone from RocksDB itself, not only from the status.
  await c.stop("n1");
  const log = await PaxosLog.open(`${c.member("n1").dataDir}/log`);
  try {
    assert.deepStrictEqual(await log.readChosen(0, 10, 1 << 20), []);
    assert.deepStrictEqual(await log.readChosen(bound - 1, 1, 1 << 20), []);
    const kept = await log.readChosen(bound, 1, 1 << 20);
    assert.equal(kept[0]?.instance, bound);
  } finally {
    await log.close();
  }
  // The settings survive the restart.
  c.startMember("n1");
  const restarted = await statusOf(c, "n1");
  assert.equal(restarted.cleaner.state, "running");
  assert.equal(restarted.cleaner.until, until);
});

test("cleaner admin calls: bad input is a 400 that changes nothing, no token is a 401", async (t) => {
  const c = await Cluster.start(1, { token: TOKEN });
  t.after(() => c.destroy());
  await c.waitForMaster();
  const before = (await c.admin("n1", "GET", "/v1/admin/cleaner")).json;
  for (const body of [
    { state: "sleeping" },
    { state: "running", until: "tomorrow" },
    { state: "running", holdCount: -1 },
    { state: "running", holdCount: 1.5 },
    { holdCount: 5 },
    [],
  ]) {
    const r = await c.admin("n1", "PUT", "/v1/admin/cleaner", body);
    assert.equal(r.status, 400, `${JSON.stringify(body)} answered ${r.status}`);
    assert.equal(r.json.error, "bad_request");
    assert.deepStrictEqual((await c.admin("n1", "GET", "/v1/admin/cleaner")).json, before);
  }
  const anonymous = await fetch(c.url("n1", "/v1/admin/cleaner"), {
    method: "PUT",
    body: JSON.stringify({ state: "paused" }),
  });
  assert.equal(anonymous.status, 401);
  assert.deepStrictEqual((await c.admin("n1", "GET", "/v1/admin/cleaner")).json, before);
});

/**
 * Stops n3, writes until n1 and n2 have checkpointed and cleaned past n3's position, and returns
 * what was written. The members checkpoint by themselves every 50 instances.
 */
async function leaveN3Behind(c: Cluster): Promise<Map<string, string>> {
  await c.waitForMaster();
  const data = await writeKeys(c, "early", 10);
  await waitCaughtUp(c, "n3", "n1");
  const n3At = (await statusOf(c, "n3")).instances.chosen;
  await c.stop("n3");
  for (const [k, v] of await writeKeys(c, "late", 200, () => BIG)) data.set(k, v);
  // Wait until both have cleaned past n3 and will make no further checkpoint (fewer than
  // CHECKPOINT_EVERY instances since their last): otherwise the checkpoint n3 receives can be
  // superseded and cleaned past while it restarts, and it would rightly need a second one.
  await waitFor(60_000, "n1 and n2 to checkpoint and clean past n3's position, then settle", async () => {
    const s = await Promise.all([c.status("n1"), c.status("n2")]);
    const settled = s.every(
      (x) =>
        x !== null &&
        x.instances.minKept > n3At + 1 &&
        x.instances.executed - x.instances.checkpoint < CHECKPOINT_EVERY &&
        x.instances.minKept === x.instances.checkpoint - HOLD_COUNT,
    );
    return settled ? true : undefined;
  });
  return data;
}

const CHECKPOINT_EVERY = 50;
const HOLD_COUNT = 5;
const SEED_ARGS = [
  `--checkpoint-every=${CHECKPOINT_EVERY}`,
  "--checkpoint-min-interval=0",
  `--hold-count=${HOLD_COUNT}`,
];

test("the seed's scenario: a member behind the cleaned log loads a checkpoint, exits 75, and catches up", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN, args: SEED_ARGS });
  t.after(() => c.destroy());
  const data = await leaveN3Behind(c);

  c.startMember("n3");
  const line = await expectCheckpointExit(c, "n3");
  assert.match(line, /^checkpoint-loaded instance=\d+ from=n[12]$/);
  const loaded = Number(/instance=(\d+)/.exec(line)![1]);

  c.startMember("n3"); // as a kubelet would
  const master = await c.waitForMaster();
  await waitCaughtUp(c, "n3", master);
  const s = await statusOf(c, "n3");
  assert.ok(s.instances.checkpoint >= loaded, `n3 serves from checkpoint ${s.instances.checkpoint}`);
  assert.equal(s.instances.replayedOnStart, 0, "nothing of the old log is replayed after a load");
  await assertAllReadable(c, "n3", data, true);

  const more = await writeKeys(c, "after", 20);
  await waitCaughtUp(c, "n3", master);
  await assertAllReadable(c, "n3", more, true);
});

test("transfer faults: a corrupted chunk is detected and retried, a killed receiver starts on its old state", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN, args: SEED_ARGS });
  t.after(() => c.destroy());
  const data = await leaveN3Behind(c);
  // Every sender corrupts its first transfer and sends slowly, so there is time to kill mid-stream.
  const hooks = { PAXOS_TEST_CORRUPT_CHECKPOINT_CHUNK: "1", PAXOS_TEST_CHECKPOINT_CHUNK_DELAY_MS: "150" };
  for (const n of ["n1", "n2"]) {
    await c.stop(n);
    c.startMember(n, hooks);
  }
  await c.waitForMaster(30_000, ["n1", "n2"]);

  // Receiver killed mid-stream: it restarts on its old state (no exit 75) and asks again.
  c.startMember("n3");
  await waitFor(60_000, "n3 to receive some checkpoint bytes", async () => {
    const receiving = (await c.status("n3"))?.transfer.receiving;
    return receiving !== null && receiving !== undefined && receiving.bytes > 0 ? true : undefined;
  });
  await c.kill("n3");
  c.startMember("n3");
  const line = await expectCheckpointExit(c, "n3");
  assert.match(line, /^checkpoint-loaded instance=\d+ from=n[12]$/);
  const log = c.logs("n3");
  assert.match(log, /CRC/i, "the corrupted chunk was detected");

  c.startMember("n3");
  await waitCaughtUp(c, "n3", await c.waitForMaster());
  await assertAllReadable(c, "n3", data, true);
});

test("transfer faults: the sender killed mid-stream, the receiver times out and gets it from another peer", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN, args: SEED_ARGS });
  t.after(() => c.destroy());
  const data = await leaveN3Behind(c);
  for (const n of ["n1", "n2"]) {
    await c.stop(n);
    c.startMember(n, { PAXOS_TEST_CHECKPOINT_CHUNK_DELAY_MS: "150" });
  }
  await c.waitForMaster(30_000, ["n1", "n2"]);

  c.startMember("n3");
  const sender = await waitFor(60_000, "n3 to receive some checkpoint bytes", async () => {
    const receiving = (await c.status("n3"))?.transfer.receiving;
    return receiving !== null && receiving !== undefined && receiving.bytes > 0 ? receiving.from : undefined;
  });
  await c.kill(sender);
  const line = await expectCheckpointExit(c, "n3");
  const other = sender === "n1" ? "n2" : "n1";
  assert.equal(line.split("from=")[1], other);

  c.startMember(sender);
  c.startMember("n3");
  await waitCaughtUp(c, "n3", await c.waitForMaster());
  await assertAllReadable(c, "n3", data, true);
});

test("a learner added after the log was cleaned loads a checkpoint, exits 75, catches up and is promoted", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN, args: SEED_ARGS });
  t.after(() => c.destroy());
  await c.waitForMaster();
  const data = await writeKeys(c, "early", 4 * CHECKPOINT_EVERY);
  await waitFor(60_000, "every member to clean past instance 0", async () => {
    const s = await Promise.all(["n1", "n2", "n3"].map((n) => c.status(n)));
    return s.every((x) => x !== null && x.instances.minKept > 1) ? true : undefined;
  });

  // What a scale-up does: the new member starts empty, is added as a learner, and can only catch
  // up from a checkpoint because the log it would need is gone.
  const master = await c.waitForMaster();
  const learner = await c.joinLearner(master);
  assert.match(await expectCheckpointExit(c, learner), /^checkpoint-loaded instance=\d+ from=n[123]$/);

  c.startMember(learner);
  await waitCaughtUp(c, learner, master);
  const more = await writeKeys(c, "later", 20);
  await waitCaughtUp(c, learner, master);
  const promoted = await c.admin(master, "POST", `/v1/admin/members/${learner}/promote`);
  assert.equal(promoted.status, 200, JSON.stringify(promoted.json));
  await waitFor(30_000, `${learner} to see itself a voter`, async () =>
    (await c.status(learner))?.role !== "learner" ? true : undefined,
  );
  await assertAllReadable(c, learner, data, true);
  await assertAllReadable(c, learner, more, true);
});
