// The operator as a local process against the local control plane: a three-member PaxosGroup
// becomes Available, writes and reads go through the members' HTTP API, `kubectl get pxg` shows the
// printer columns, and a deleted member pod comes back on its PVC while the group stays available.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { KubeClient, type KubeObject, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";

const run = promisify(execFile);
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const NS = "default";
const GROUP = "kv";

let cluster: LocalCluster | undefined;
let client: KubeClient | undefined;
let operator: ChildProcess | undefined;
let tmp = "";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

async function kubectl(...args: string[]): Promise<string> {
  if (!cluster) throw new Error("no cluster");
  const bin = path.join(cluster.controlPlane.binDir, "kubectl");
  return (await run(bin, ["--kubeconfig", cluster.kubeconfig, ...args])).stdout;
}

async function stopOperator(): Promise<void> {
  const p = operator;
  operator = undefined;
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
  p.kill("SIGTERM");
  const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "operator-e2e-"));
  cluster = await startCluster();
  client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  await kubectl("apply", "--server-side", "-f", path.join(repoRoot, "crds", "paxosgroup.yaml"));
  await kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/paxosgroups.paxos.dev");

  const logFile = path.join(tmp, "operator.log");
  const out = createWriteStream(logFile);
  operator = spawn(process.execPath, [path.join(repoRoot, "dist", "operator", "src", "main.js")], {
    cwd: repoRoot,
    env: {
      ...process.env,
      KUBECONFIG: cluster.kubeconfig,
      POD_NAMESPACE: NS,
      LEADER_ELECT: "true",
      PAXOS_NODE_IMAGE: cluster.images.node,
      METRICS_PORT: String(await freePort()),
      LOG_LEVEL: "debug",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  operator.stdout?.pipe(out);
  operator.stderr?.pipe(out);
  log(`operator pid ${operator.pid}, log ${logFile}`);
});

after(async () => {
  await stopOperator();
  client?.close();
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const groupPath = `/apis/paxos.dev/v1alpha1/namespaces/${NS}/paxosgroups/${GROUP}`;
const proxy = (pod: string, rest: string) => `/api/v1/namespaces/${NS}/pods/${pod}:8080/proxy${rest}`;

function condition(group: KubeObject, type: string): string | undefined {
  return group.status?.conditions?.find((c: { type: string }) => c.type === type)?.status;
}

async function waitAvailable(what: string): Promise<KubeObject> {
  const c = client;
  if (!c) throw new Error("no client");
  return waitFor(
    what,
    async () => {
      const g = await c.get(groupPath);
      return condition(g, "Available") === "True" && g.status?.readyReplicas === 3 && g.status?.master
        ? g
        : undefined;
    },
    240_000,
    1000,
  ).catch(async (e: unknown) => {
    const opLog = await readFile(path.join(tmp, "operator.log"), "utf8").catch(() => "");
    const g = await c.get(groupPath).catch(() => undefined);
    throw new Error(
      `${e instanceof Error ? e.message : String(e)}\nstatus: ${JSON.stringify(g?.status)}\noperator log tail:\n${opLog.slice(-4000)}`,
    );
  });
}

/** PUT through the API server's pod proxy, retried while the group elects a master (503/504). */
async function put(pod: string, key: string, value: string): Promise<void> {
  const c = client;
  if (!c) throw new Error("no client");
  await waitFor(
    `PUT ${key} via ${pod}`,
    async () => {
      await c.requestText("PUT", proxy(pod, `/v1/kv/${key}`), {
        body: value,
        contentType: "application/octet-stream",
      });
      return true;
    },
    60_000,
    1000,
  );
}

async function get(pod: string, key: string): Promise<string> {
  const c = client;
  if (!c) throw new Error("no client");
  return waitFor(
    `GET ${key} via ${pod}`,
    () => c.requestText("GET", proxy(pod, `/v1/kv/${key}`)),
    60_000,
    1000,
  );
}

test("a three-member PaxosGroup becomes Available; writes and reads work; kubectl shows it", async () => {
  const c = client;
  if (!c || !cluster) throw new Error("no cluster");
  const manifest = path.join(tmp, "group.yaml");
  await writeFile(
    manifest,
    `apiVersion: paxos.dev/v1alpha1
kind: PaxosGroup
metadata: {name: ${GROUP}, namespace: ${NS}}
spec:
  replicas: 3
  storage: {size: 64Mi, storageClassName: standard}
`,
  );
  await kubectl("apply", "-f", manifest);
  const group = await waitAvailable("the group to become Available with 3 ready members");
  assert.equal(group.status.observedGeneration, group.metadata.generation);
  assert.equal(condition(group, "Degraded"), "False");
  assert.equal(condition(group, "Progressing"), "False");
  assert.equal(condition(group, "CleanerWindowOpen"), "True", "no windows: the cleaner may always run");
  assert.deepEqual(
    group.status.members.map((m: { name: string; ready: boolean }) => [m.name, m.ready]),
    [
      [`${GROUP}-0`, true],
      [`${GROUP}-1`, true],
      [`${GROUP}-2`, true],
    ],
  );
  assert.equal(group.status.cleaner.open, true);

  // The token Secret was generated once and the members run with it.
  const secret = await c.get(`/api/v1/namespaces/${NS}/secrets/${GROUP}-token`);
  assert.equal(Buffer.from(secret.data.token, "base64").length, 64, "32 random bytes, hex");

  await put(`${GROUP}-0`, "x", "hello");
  assert.equal(await get(`${GROUP}-2`, "x"), "hello");

  // Every member got `running` without an end (no windows).
  for (const i of [0, 1, 2]) {
    const status = JSON.parse(await c.requestText("GET", proxy(`${GROUP}-${i}`, "/v1/status")));
    assert.equal(status.cleaner.state, "running", `${GROUP}-${i} cleaner`);
    assert.equal(status.cleaner.until, null);
  }

  const table = await kubectl("get", "pxg", GROUP, "-n", NS);
  log(table);
  const [header, row] = table.trim().split("\n");
  assert.match(header ?? "", /NAME\s+REPLICAS\s+READY\s+MASTER/);
  assert.match(row ?? "", new RegExp(`^${GROUP}\\s+3\\s+3\\s+${GROUP}-[0-2]\\s`));
});

test("a deleted member pod comes back on its PVC and the group stays available", async () => {
  const c = client;
  if (!c) throw new Error("no client");
  const victim = `${GROUP}-1`;
  const before = await c.get(`/api/v1/namespaces/${NS}/pods/${victim}`);
  const pvc = await c.get(`/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${victim}`);
  await put(`${GROUP}-0`, "before-delete", "kept");

  await c.request("DELETE", `/api/v1/namespaces/${NS}/pods/${victim}`);
  // Two members keep a quorum: writes go on while the third is away.
  await put(`${GROUP}-2`, "during-delete", "also-kept");
  await waitFor(
    "the pod to be recreated",
    async () => {
      const p = await c.get(`/api/v1/namespaces/${NS}/pods/${victim}`);
      return p.metadata.uid !== before.metadata.uid ? p : undefined;
    },
    120_000,
    1000,
  );
  await waitAvailable("the group to be Available again with 3 ready members");
  const pvcAfter = await c.get(`/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${victim}`);
  assert.equal(pvcAfter.metadata.uid, pvc.metadata.uid, "same PVC");
  assert.equal(await get(victim, "before-delete"), "kept");
  assert.equal(await get(victim, "during-delete"), "also-kept");
});

test("a settled group sees no spurious updates", async () => {
  const c = client;
  if (!c) throw new Error("no client");
  const paths = [
    groupPath,
    `/apis/apps/v1/namespaces/${NS}/statefulsets/${GROUP}`,
    `/api/v1/namespaces/${NS}/services/${GROUP}`,
    `/api/v1/namespaces/${NS}/services/${GROUP}-peers`,
    `/api/v1/namespaces/${NS}/secrets/${GROUP}-token`,
    `/apis/policy/v1/namespaces/${NS}/poddisruptionbudgets/${GROUP}`,
  ];
  // What the operator wrote to each object: its field manager's entry changes (time included) only
  // when an apply or update of the operator changed something. resourceVersions would also move with
  // the status that the StatefulSet and disruption controllers keep writing.
  const versions = async () =>
    Promise.all(
      paths.map(async (p) =>
        JSON.stringify(
          ((await c.get(p)).metadata.managedFields ?? []).filter(
            (f: { manager?: string; subresource?: string }) =>
              f.manager === "paxos-operator" && f.subresource === undefined,
          ),
        ),
      ),
    );
  // Settled: the operator stops writing once the restarted member has caught up.
  let last = await versions();
  await waitFor(
    "the group to settle",
    async () => {
      await new Promise((r) => setTimeout(r, 5000));
      const now = await versions();
      const same = now.every((v, i) => v === last[i]);
      last = now;
      return same;
    },
    120_000,
    0,
  );
  // A touch of the group (an annotation) makes the operator reconcile; nothing else may change.
  await c.patch(groupPath, { metadata: { annotations: { touched: "1" } } }, "merge");
  await new Promise((r) => setTimeout(r, 10_000));
  const after = await versions();
  assert.deepEqual(
    after.slice(1),
    last.slice(1),
    "the operator wrote nothing to its objects when it reconciled a settled group",
  );
  const g = await c.get(groupPath);
  assert.equal(condition(g, "Available"), "True");
});
