// The operator as users run it: `helm install` of charts/paxos-operator puts it in a pod of the
// cluster (its service account, the chart's RBAC, the restricted Pod Security Standard enforced),
// and a three-member PaxosGroup in another namespace becomes Available and serves writes and reads.
// Then a real operator restart: its pod is deleted, the Deployment's new pod takes the Lease, and the
// settled group sees no spurious writes.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { KubeClient, type KubeObject, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";
import {
  condition,
  GroupDriver,
  groupManifest,
  type InstalledOperator,
  installCrd,
  installOperator,
  kubectl,
  restrictedNamespace,
  tail,
} from "./paxos-group.js";

const OPERATOR_NS = "paxos-system";
const NS = "apps";
const GROUP = "kv";

let cluster: LocalCluster | undefined;
let client: KubeClient | undefined;
let operator: InstalledOperator | undefined;
let group: GroupDriver | undefined;
let tmp = "";
/** The instance of the first test's write. */
let written = -1;

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "helm-operator-e2e-"));
  cluster = await startCluster();
  client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  await installCrd(cluster);
  operator = await installOperator(cluster, client, { namespace: OPERATOR_NS, tmpDir: tmp });
  await restrictedNamespace(client, NS);
  const op = operator;
  group = new GroupDriver(client, NS, GROUP, async () => `operator log:\n${tail(await op.logs())}`);
});

after(async () => {
  client?.close();
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function ready(pod: KubeObject): boolean {
  return pod.status?.conditions?.some(
    (c: { type: string; status: string }) => c.type === "Ready" && c.status === "True",
  );
}

const leasePath = `/apis/coordination.k8s.io/v1/namespaces/${OPERATOR_NS}/leases/paxos-operator`;

/** The operator pod's successful reconciles, from its /metrics through the API server's pod proxy. */
async function reconciles(c: KubeClient, pod: string): Promise<number> {
  const text = await c.requestText("GET", `/api/v1/namespaces/${OPERATOR_NS}/pods/${pod}:9090/proxy/metrics`);
  const m = /^paxos_operator_reconciles_total\{result="success"\} (\d+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

test("helm install: the operator runs in a pod; a PaxosGroup in another namespace becomes Available, serves writes and reads, and kubectl shows it", async () => {
  const c = client;
  const g = group;
  const op = operator;
  if (!c || !g || !op || !cluster) throw new Error("no cluster");

  const [pod, ...others] = await op.pods();
  assert.ok(pod, "the Deployment has a pod");
  assert.deepEqual(others, [], "one operator pod");
  assert.ok(ready(pod), "the operator pod is Ready");
  assert.equal(pod.spec.serviceAccountName, "paxos-operator");
  const lease = await waitFor("the operator to take the Lease", async () => {
    const l = await c.getOrNull(leasePath);
    return l?.spec?.holderIdentity ? l : undefined;
  });
  assert.equal(lease.spec.holderIdentity, pod.metadata.name, "the operator pod holds the Lease");

  // As a user does it: kubectl apply of a manifest (JSON is YAML too).
  const manifest = path.join(tmp, "group.yaml");
  await writeFile(
    manifest,
    JSON.stringify(
      groupManifest(NS, GROUP, { replicas: 3, storage: { size: "64Mi", storageClassName: "standard" } }),
    ),
  );
  await kubectl(cluster, "apply", "-f", manifest);
  const available = await g.waitAvailable("the group to become Available with 3 ready members");
  assert.equal(condition(available, "Degraded")?.status, "False");
  assert.equal(condition(available, "Progressing")?.status, "False");
  assert.equal(condition(available, "CleanerWindowOpen")?.status, "True");
  assert.deepEqual(
    available.status.members.map((m: { name: string; ready: boolean }) => [m.name, m.ready]),
    [0, 1, 2].map((i) => [g.member(i), true]),
  );
  // The StatefulSet got the chart's nodeImage as the default image.
  const sts = await c.get(g.objectPaths().statefulSet);
  assert.equal(sts.spec.template.spec.containers[0].image, cluster.images.node);

  written = await g.put(g.member(0), "greeting", "hello from helm");
  assert.equal(await g.get(g.member(2), "greeting"), "hello from helm");
  assert.equal(await g.get(g.member(1), "greeting", { local: true }), "hello from helm");

  const table = await kubectl(cluster, "get", "pxg", GROUP, "-n", NS);
  log(table);
  const [header, row, ...rest] = table.trim().split("\n");
  assert.deepEqual(rest, []);
  assert.match(header ?? "", /^NAME\s+REPLICAS\s+READY\s+MASTER\s+CLEANER\s+AGE$/);
  const master = available.status.master as string;
  assert.match(master, new RegExp(`^${GROUP}-[0-2]$`));
  assert.match(row ?? "", new RegExp(`^${GROUP}\\s+3\\s+3\\s+${GROUP}-[0-2]\\s+true\\s+\\d+[smh]`));

  const restarts = (await op.pods())[0]?.status?.containerStatuses?.[0]?.restartCount;
  assert.equal(restarts, 0, "the operator container never restarted");
});

test("restarting the operator (its pod deleted, the Deployment makes a new one) changes nothing in a settled group", async () => {
  const c = client;
  const g = group;
  const op = operator;
  if (!c || !g || !op) throw new Error("no cluster");
  const o = g.objectPaths();
  const managed = [o.statefulSet, o.clientService, o.peerService, o.secret, o.pdb];
  // Written by the operator alone (the StatefulSet's status is the StatefulSet controller's).
  const operatorOnly = [o.clientService, o.peerService, o.secret, o.pdb];
  // The group too: its spec is the user's, its status the operator's alone.
  const snapshot = async () => ({
    fields: await g.operatorFields(managed),
    versions: await g.resourceVersions(operatorOnly),
    group: await g.read(),
  });
  // The status shows the members' instance numbers as of the last reconcile, and nothing made one
  // since the test's write: a touch (an annotation) brings it up to date before the snapshot.
  await c.patch(g.path, { metadata: { annotations: { "e2e/refresh": String(Date.now()) } } }, "merge");
  const settled = await g.waitQuiet("the group and its objects to settle", snapshot);
  for (const m of settled.group.status.members) {
    assert.ok(
      m.chosen >= written,
      `the status of ${m.name} shows the test's write (${m.chosen} >= ${written})`,
    );
  }
  const [old] = await op.pods();
  assert.ok(old, "an operator pod");

  await c.delete(`/api/v1/namespaces/${OPERATOR_NS}/pods/${old.metadata.name}`);
  const fresh = await waitFor(
    "a new operator pod to be Ready and hold the Lease",
    async () => {
      const p = (await op.pods()).find((x) => x.metadata.uid !== old.metadata.uid && ready(x));
      if (!p) return undefined;
      const lease = await c.get(leasePath);
      return lease.spec?.holderIdentity === p.metadata.name ? p : undefined;
    },
    180_000,
    1000,
  ).catch(async (e: unknown) => {
    throw new Error(`${(e as Error).message}\n${tail(await op.logs())}`);
  });
  log(`operator pod ${old.metadata.name} replaced by ${fresh.metadata.name}`);

  // The new leader reconciles every group once its informers have synced; then a spurious write
  // gets time to show.
  await waitFor(
    "the new operator to reconcile the group",
    async () => (await reconciles(c, fresh.metadata.name ?? "")) >= 1,
    120_000,
    1000,
  );
  await new Promise((r) => setTimeout(r, 10_000));

  const now = await snapshot();
  assert.deepEqual(now.fields, settled.fields, "the new operator re-applied nothing that changed");
  assert.deepEqual(now.versions, settled.versions, "the Services, the Secret and the PDB were not written");
  assert.equal(
    now.group.metadata.resourceVersion,
    settled.group.metadata.resourceVersion,
    `the group was not written: ${JSON.stringify(settled.group.status)} -> ${JSON.stringify(now.group.status)}`,
  );
  assert.equal(condition(now.group, "Available")?.status, "True");
});

test("with the chart's RBAC the operator scales 3 -> 4 -> 3 and deletes the removed member's PVC", async () => {
  const g = group;
  const c = client;
  if (!g || !c) throw new Error("no cluster");
  const settledAs = (replicas: number) => (x: KubeObject) =>
    x.status?.observedGeneration === x.metadata.generation &&
    condition(x, "Progressing")?.status === "False" &&
    x.status?.readyReplicas === replicas &&
    x.status?.members?.length === replicas &&
    x.status.members.every((m: { role?: string }) => m.role === "voter") &&
    x;
  const spec = (replicas: number) => ({ replicas, storage: { size: "64Mi", storageClassName: "standard" } });

  await g.apply(spec(4));
  await g.waitFor("4 voters", settledAs(4), 300_000);
  await g.apply(spec(3));
  await g.waitFor("back to 3 voters", settledAs(3), 300_000);
  await g.waitFor("the PVC of kv-3 to be gone", async () =>
    (await c.getOrNull(`/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${g.member(3)}`)) === null
      ? true
      : undefined,
  );
  const steps = new Set((await g.events("RemoveMember")).map((e) => e.reason));
  assert.deepEqual([...steps], ["RemoveMember"], "the member was removed by the operator");
});
