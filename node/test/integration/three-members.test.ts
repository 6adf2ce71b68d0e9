// Three real members on 127.0.0.1: kill -9 a follower and the master under load, restart all, and
// lose a follower's data directory.
// Acknowledged writes must never be lost, and restarted members must serve the same data.

import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { after, before, test } from "node:test";
import { assertAllReadable, Cluster, Writers, waitCaughtUp, waitFor } from "./cluster.js";

let cluster: Cluster;

before(async () => {
  cluster = await Cluster.start(3);
  await cluster.waitForMaster();
});

after(async () => {
  await cluster.destroy();
});

test("writes and reads through every member, forwarded to the master", async () => {
  const master = await cluster.waitForMaster();
  for (const m of cluster.members) {
    const r = await cluster.put(m.name, `hello-${m.name}`, `from ${m.name}`);
    assert.equal(r.status, 200);
    const body = (await r.json()) as { instance: number };
    assert.ok(Number.isInteger(body.instance) && body.instance >= 0);
  }
  for (const m of cluster.members) {
    for (const w of cluster.members) {
      const r = await cluster.get(m.name, `hello-${w.name}`);
      assert.equal(await r.text(), `from ${w.name}`);
    }
    // A write is answered once executed on the member that took it, so local reads see it too.
    const local = await cluster.get(m.name, `hello-${m.name}`, "local");
    assert.equal(await local.text(), `from ${m.name}`);
  }
  const missing = await cluster.get(master, "no-such-key");
  assert.equal(missing.status, 404);
  const del = await cluster.put(master, "to-delete", "x");
  assert.equal(del.status, 200);
  const d = await fetch(cluster.url(master, "/v1/kv/to-delete"), { method: "DELETE" });
  assert.equal(d.status, 200);
  assert.equal((await cluster.get(master, "to-delete")).status, 404);
});

test("kill -9 a follower under load: it restarts, catches up and serves the same data", async () => {
  const master = await cluster.waitForMaster();
  const follower = cluster.members.find((m) => m.name !== master)!.name;
  const writers = new Writers(cluster, 4);
  await waitFor(30_000, "some writes", async () => (writers.acknowledged.size >= 100 ? true : undefined));
  await cluster.kill(follower);
  const atKill = writers.acknowledged.size;
  await waitFor(30_000, "writes with the follower down", async () =>
    writers.acknowledged.size >= atKill + 200 ? true : undefined,
  );
  cluster.startMember(follower);
  await waitFor(30_000, "writes after the restart", async () =>
    writers.acknowledged.size >= atKill + 400 ? true : undefined,
  );
  await writers.stop();
  await waitCaughtUp(cluster, follower, master);
  await assertAllReadable(cluster, follower, writers.acknowledged, true);
  await assertAllReadable(cluster, master, writers.acknowledged);
});

test("kill -9 the master under load: a new master serves writes and nothing acknowledged is lost", async () => {
  const oldMaster = await cluster.waitForMaster();
  const writers = new Writers(cluster, 4);
  await waitFor(30_000, "some writes", async () => (writers.acknowledged.size >= 100 ? true : undefined));
  await cluster.kill(oldMaster);
  const killedAt = Date.now();
  const survivors = cluster.members.filter((m) => m.name !== oldMaster).map((m) => m.name);
  const newMaster = await cluster.waitForMaster(30_000, survivors);
  assert.notEqual(newMaster, oldMaster);
  const before = writers.acknowledged.size;
  await waitFor(30_000, "writes acknowledged by the new master", async () =>
    writers.acknowledged.size >= before + 100 ? true : undefined,
  );
  // Election timeout is 1-2 s; allow generously for a loaded CI machine, but bounded.
  assert.ok(Date.now() - killedAt < 30_000);
  await writers.stop();
  await assertAllReadable(cluster, newMaster, writers.acknowledged);
  cluster.startMember(oldMaster);
  await waitCaughtUp(cluster, oldMaster, newMaster);
  await assertAllReadable(cluster, oldMaster, writers.acknowledged, true);
});

test("restart all three: data intact, replay bounded by what the state machine lacked", async () => {
  const master = await cluster.waitForMaster();
  const writers = new Writers(cluster, 2, 150);
  await writers.stop();
  assert.ok(writers.acknowledged.size > 0);
  await waitCaughtUp(cluster, cluster.members.find((m) => m.name !== master)!.name, master);
  for (const m of cluster.members) {
    const exit = await cluster.stop(m.name);
    assert.equal(exit.code, 0, `${m.name} exited with ${exit.code} on SIGTERM`);
  }
  for (const m of cluster.members) cluster.startMember(m.name);
  const newMaster = await cluster.waitForMaster();
  for (const m of cluster.members) await assertAllReadable(cluster, m.name, writers.acknowledged);
  const s = await cluster.status(newMaster);
  assert.ok(s !== null && s.instances.chosen >= 0);
});

test("a voter whose data directory is lost rejoins: it promises nothing until it has learned what the others had", async () => {
  const master = await cluster.waitForMaster();
  const follower = cluster.members.find((m) => m.name !== master)!;
  const writers = new Writers(cluster, 2);
  await waitFor(30_000, "some writes", async () => (writers.acknowledged.size >= 100 ? true : undefined));
  await cluster.kill(follower.name);
  const chosenAtLoss = (await cluster.status(master))!.instances.chosen;
  await rm(follower.dataDir, { recursive: true, force: true });
  cluster.startMember(follower.name);

  await waitFor(60_000, "the rejoined member to catch up and stop abstaining", async () => {
    const s = await cluster.status(follower.name);
    return s !== null && s.instances.abstainUntil === null && s.instances.chosen >= chosenAtLoss
      ? true
      : undefined;
  });
  await writers.stop();
  await waitCaughtUp(cluster, follower.name, master);
  await assertAllReadable(cluster, follower.name, writers.acknowledged, true);

  // A full voter again: with the master gone, no master can be elected without its promise.
  await cluster.kill(master);
  const survivors = cluster.members.filter((m) => m.name !== master).map((m) => m.name);
  const newMaster = await cluster.waitForMaster(30_000, survivors);
  assert.equal((await cluster.put(newMaster, "after-rejoin", "ok")).status, 200);

  // What it rejoined with (its log is complete once it has stopped): the answers of both other
  // voters, since every majority of three has one of them, and a bound covering what was chosen.
  await cluster.stop(follower.name);
  const line = cluster
    .logs(follower.name)
    .split("\n")
    .find((l) => l.includes("joining with the promised ballot of its other voters"));
  assert.ok(line !== undefined, "the rejoin is logged");
  const rejoin = JSON.parse(line) as {
    level: number;
    abstainUntil: number;
    answeredBy: string[];
    promised: { counter: number; member: string };
    fence: { counter: number; member: string };
  };
  assert.equal(rejoin.level, 40, "a voter that lost its state is a warning");
  assert.ok(rejoin.abstainUntil >= chosenAtLoss, `abstainUntil ${rejoin.abstainUntil} < ${chosenAtLoss}`);
  assert.deepEqual(
    [...rejoin.answeredBy].sort(),
    cluster.members
      .filter((m) => m.name !== follower.name)
      .map((m) => m.name)
      .sort(),
  );
  // Both promised a ballot of its own above all they had promised, before their second answers.
  assert.equal(rejoin.fence.member, follower.name);
  assert.ok(rejoin.promised.counter >= rejoin.fence.counter, "joined below its fence");

  cluster.startMember(follower.name);
  cluster.startMember(master);
  await waitCaughtUp(cluster, master, newMaster);
  await waitCaughtUp(cluster, follower.name, newMaster);
});
