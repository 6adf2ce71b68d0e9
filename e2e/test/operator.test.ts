// The operator as a local process against the local control plane: a three-member PaxosGroup
// becomes Available, writes and reads go through the members' HTTP API, `kubectl get pxg` shows the
// printer columns, and a deleted member pod comes back on its PVC while the group stays available.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { KubeClient, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";
import { OperatorProcess } from "./operator-process.js";
import { condition, GroupDriver, installCrd, kubectl, tail } from "./paxos-group.js";

const NS = "default";
const GROUP = "kv";

let cluster: LocalCluster | undefined;
let client: KubeClient | undefined;
let group: GroupDriver | undefined;
let operator: OperatorProcess | undefined;
let tmp = "";

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "operator-e2e-"));
  cluster = await startCluster();
  client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  await installCrd(cluster);
  const op = await OperatorProcess.start({
    kubeconfig: cluster.kubeconfig,
    namespace: NS,
    nodeImage: cluster.images.node,
    logFile: path.join(tmp, "operator.log"),
    leaderElect: true,
  });
  operator = op;
  group = new GroupDriver(client, NS, GROUP, async () => tail(`operator log:\n${await op.logTail(100_000)}`));
});

after(async () => {
  await operator?.stop();
  client?.close();
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test("a three-member PaxosGroup becomes Available; writes and reads work; kubectl shows it", async () => {
  const c = client;
  const g = group;
  if (!c || !g || !cluster) throw new Error("no cluster");
  await g.apply({ replicas: 3, storage: { size: "64Mi", storageClassName: "standard" } });
  const available = await g.waitAvailable("the group to become Available with 3 ready members");
  assert.equal(condition(available, "Degraded")?.status, "False");
  assert.equal(condition(available, "Progressing")?.status, "False");
  assert.equal(
    condition(available, "CleanerWindowOpen")?.status,
    "True",
    "no windows: the cleaner may always run",
  );
  assert.deepEqual(
    available.status.members.map((m: { name: string; ready: boolean }) => [m.name, m.ready]),
    [0, 1, 2].map((i) => [g.member(i), true]),
  );
  assert.equal(available.status.cleaner.open, true);

  // The token Secret was generated once and the members run with it.
  assert.equal(Buffer.from(await g.token()).length, 64, "32 random bytes, hex");

  await g.put(g.member(0), "x", "hello");
  assert.equal(await g.get(g.member(2), "x"), "hello");

  // Every member got `running` without an end (no windows).
  for (const i of [0, 1, 2]) {
    const status = await g.nodeStatus(g.member(i));
    assert.equal(status.cleaner.state, "running", `${g.member(i)} cleaner`);
    assert.equal(status.cleaner.until, null);
  }

  const table = await kubectl(cluster, "get", "pxg", GROUP, "-n", NS);
  log(table);
  const [header, row] = table.trim().split("\n");
  assert.match(header ?? "", /^NAME\s+REPLICAS\s+READY\s+MASTER\s+CLEANER\s+AGE$/);
  assert.match(row ?? "", new RegExp(`^${GROUP}\\s+3\\s+3\\s+${GROUP}-[0-2]\\s+true\\s`));
});

test("a deleted member pod comes back on its PVC and the group stays available", async () => {
  const c = client;
  const g = group;
  if (!c || !g) throw new Error("no cluster");
  const victim = g.member(1);
  const before = await c.get(g.podPath(victim));
  const pvcPath = `/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${victim}`;
  const pvc = await c.get(pvcPath);
  await g.put(g.member(0), "before-delete", "kept");

  await c.delete(g.podPath(victim));
  // Two members keep a quorum: writes go on while the third is away.
  await g.put(g.member(2), "during-delete", "also-kept");
  await waitFor(
    "the pod to be recreated",
    async () => {
      const p = await c.get(g.podPath(victim));
      return p.metadata.uid !== before.metadata.uid ? p : undefined;
    },
    120_000,
    1000,
  );
  await g.waitAvailable("the group to be Available again with 3 ready members");
  assert.equal((await c.get(pvcPath)).metadata.uid, pvc.metadata.uid, "same PVC");
  assert.equal(await g.get(victim, "before-delete"), "kept");
  assert.equal(await g.get(victim, "during-delete"), "also-kept");
});

test("a settled group sees no spurious updates", async () => {
  const c = client;
  const g = group;
  if (!c || !g) throw new Error("no cluster");
  const o = g.objectPaths();
  // The operator's own entries, not resourceVersions: those also move with the status that the
  // StatefulSet and disruption controllers keep writing.
  const paths = [o.statefulSet, o.clientService, o.peerService, o.secret, o.pdb];
  // Settled: the operator stops writing once the restarted member has caught up.
  const settled = await g.waitQuiet("the operator to stop writing the group's objects", () =>
    g.operatorFields(paths),
  );
  // A touch of the group (an annotation) makes the operator reconcile; nothing else may change.
  await c.patch(g.path, { metadata: { annotations: { touched: "1" } } }, "merge");
  await new Promise((r) => setTimeout(r, 10_000));
  assert.deepEqual(
    await g.operatorFields(paths),
    settled,
    "the operator wrote nothing to its objects when it reconciled a settled group",
  );
  assert.equal(condition(await g.read(), "Available")?.status, "True");
});
