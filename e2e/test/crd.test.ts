// The PaxosGroup CRD on a real API server: schema defaults, bounds and CEL rules refuse invalid
// specs at `kubectl apply` with a message naming the field, and `kubectl get pxg` shows the
// printer columns.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { REPO_ROOT } from "../cluster/binaries.js";
import type { LocalCluster } from "../providers/local.js";
import { startCluster, stopCluster } from "./helpers.js";

const run = promisify(execFile);
const CRD_FILE = path.join(REPO_ROOT, "crds", "paxosgroup.yaml");
let cluster: LocalCluster | undefined;
let tmp = "";

async function kubectl(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  if (!cluster) throw new Error("no cluster");
  return run(path.join(cluster.controlPlane.binDir, "kubectl"), [
    "--kubeconfig",
    cluster.kubeconfig,
    ...args,
  ]);
}

async function kubectlFails(...args: string[]): Promise<string> {
  try {
    await kubectl(...args);
  } catch (e) {
    return (e as { stderr: string }).stderr;
  }
  throw new Error(`kubectl ${args.join(" ")} succeeded but should have failed`);
}

let files = 0;
async function manifest(spec: string, name = "kv"): Promise<string> {
  const file = path.join(tmp, `pxg-${files++}.yaml`);
  await writeFile(
    file,
    `apiVersion: paxos.dev/v1alpha1\nkind: PaxosGroup\nmetadata: {name: ${name}, namespace: default}\nspec: ${spec}\n`,
  );
  return file;
}

before(async () => {
  cluster = await startCluster();
  tmp = await mkdtemp(path.join(os.tmpdir(), "crd-test-"));
  await kubectl("apply", "--server-side", "-f", CRD_FILE);
  await kubectl("wait", "--for=condition=Established", "crd/paxosgroups.paxos.dev", "--timeout=60s");
});

after(async () => {
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test("a valid PaxosGroup passes a server-side dry run with the defaults applied", async () => {
  const minimal = await manifest("{logCleaner: {windows: [{schedule: '0 2 * * *', duration: 2h}]}}");
  const out = await kubectl("apply", "--dry-run=server", "-o", "json", "-f", minimal);
  const obj = JSON.parse(out.stdout) as { spec: unknown };
  assert.deepEqual(obj.spec, {
    replicas: 3,
    storage: { size: "1Gi" },
    logCleaner: { holdCount: 100000, windows: [{ schedule: "0 2 * * *", duration: "2h", timeZone: "UTC" }] },
  });

  const empty = await manifest("{}");
  const defaults = JSON.parse(
    (await kubectl("apply", "--dry-run=server", "-o", "json", "-f", empty)).stdout,
  ) as {
    spec: unknown;
  };
  assert.deepEqual(defaults.spec, {
    replicas: 3,
    storage: { size: "1Gi" },
    logCleaner: { holdCount: 100000 },
  });

  const full = await manifest(`
  replicas: 5
  image: paxos-node:0.1.0
  storage: {size: 2Gi, storageClassName: standard}
  logCleaner:
    holdCount: 300
    windows:
      - {schedule: "0 2 * * *", duration: 2h, timeZone: Europe/Berlin}
      - {schedule: "*/15 1-5 * JAN-MAR mon,wed", duration: 1h30m}
      - {schedule: "30 23 1,15 * ?", duration: 0.5h}
    maxLogSize: 5Gi
  resources: {requests: {cpu: 100m, memory: 128Mi}}
  podTemplate:
    labels: {team: storage}
    annotations: {note: hi}
    nodeSelector: {disk: ssd}
    tolerations: [{key: dedicated, operator: Equal, value: paxos, effect: NoSchedule}]
    affinity: {nodeAffinity: {}}
    priorityClassName: high`);
  assert.match(
    (await kubectl("apply", "--dry-run=server", "-f", full)).stdout,
    /paxosgroup\.paxos\.dev\/kv created \(server dry run\)/,
  );
});

const window = (schedule: string, duration: string): string =>
  `{logCleaner: {windows: [{schedule: '${schedule}', duration: '${duration}'}]}}`;
const SCHEDULE_MSG =
  /spec\.logCleaner\.windows\[0\]\.schedule: Invalid value: "string": spec\.logCleaner\.windows\[\]\.schedule must be a 5-field cron expression/;
const DURATION_MSG =
  /spec\.logCleaner\.windows\[0\]\.duration: Invalid value: "string": spec\.logCleaner\.windows\[\]\.duration must be a positive Go duration/;

const invalid: [string, string, RegExp][] = [
  [
    "replicas 0",
    "{replicas: 0}",
    /spec\.replicas: Invalid value: 0: spec\.replicas in body should be greater than or equal to 1/,
  ],
  [
    "replicas 10",
    "{replicas: 10}",
    /spec\.replicas: Invalid value: 10: spec\.replicas in body should be less than or equal to 9/,
  ],
  ["a six-field cron", window("0 0 2 * * *", "2h"), SCHEDULE_MSG],
  ["a garbage cron", window("every night at two", "2h"), SCHEDULE_MSG],
  ["a cron with a bad character", window("0 2 * * $", "2h"), SCHEDULE_MSG],
  ["a negative duration", window("0 2 * * *", "-1h"), DURATION_MSG],
  ["a zero duration", window("0 2 * * *", "0s"), DURATION_MSG],
  ["a zero duration in parts", window("0 2 * * *", "0h0.0m"), DURATION_MSG],
  ["a duration without a unit", window("0 2 * * *", "90"), DURATION_MSG],
  ["a duration in days", window("0 2 * * *", "1d"), DURATION_MSG],
  [
    "holdCount 5",
    "{logCleaner: {holdCount: 5}}",
    /spec\.logCleaner\.holdCount: Invalid value: .*spec\.logCleaner\.holdCount must be at least 300/,
  ],
  [
    "a window without a duration",
    "{logCleaner: {windows: [{schedule: '0 2 * * *'}]}}",
    /spec\.logCleaner\.windows\[0\]\.duration: Required value/,
  ],
  ["a storage size that is no quantity", "{storage: {size: lots}}", /spec\.storage\.size/],
  [
    "a podTemplate field that is not allowed",
    "{podTemplate: {containers: []}}",
    /unknown field "spec\.podTemplate\.containers"/,
  ],
];

test("invalid specs are refused with a message naming the field", async () => {
  for (const [name, spec, message] of invalid) {
    const stderr = await kubectlFails("apply", "--dry-run=server", "-f", await manifest(spec));
    assert.match(stderr, message, `${name}: ${stderr}`);
  }
  // Nothing was stored by any of them.
  assert.equal((await kubectl("get", "pxg", "-n", "default", "-o", "name")).stdout.trim(), "");
});

test("a name longer than 52 characters is refused", async () => {
  const long = "a".repeat(53);
  const stderr = await kubectlFails("apply", "--dry-run=server", "-f", await manifest("{}", long));
  assert.match(stderr, /metadata\.name must be at most 52 characters/);
  const fits = await kubectl("apply", "--dry-run=server", "-f", await manifest("{}", "a".repeat(52)));
  assert.match(fits.stdout, /created \(server dry run\)/);
});

test("the storage class cannot change after creation; the size can", async () => {
  await kubectl(
    "apply",
    "--server-side",
    "-f",
    await manifest("{storage: {size: 1Gi, storageClassName: standard}}", "fixed"),
  );
  const stderr = await kubectlFails(
    "apply",
    "--server-side",
    "-f",
    await manifest("{storage: {size: 1Gi, storageClassName: fast}}", "fixed"),
  );
  assert.match(
    stderr,
    /spec\.storage: Invalid value: "object": spec\.storage\.storageClassName cannot change/,
  );
  await kubectl(
    "apply",
    "--server-side",
    "-f",
    await manifest("{storage: {size: 2Gi, storageClassName: standard}}", "fixed"),
  );
  await kubectl("delete", "pxg", "fixed", "-n", "default", "--wait=true");
});

test("kubectl get pxg shows the printer columns", async () => {
  await kubectl("apply", "--server-side", "-f", await manifest("{replicas: 3}", "shown"));
  await kubectl(
    "patch",
    "pxg",
    "shown",
    "-n",
    "default",
    "--subresource=status",
    "--type=merge",
    "-p",
    JSON.stringify({ status: { readyReplicas: 2, master: "shown-0", cleaner: { open: true } } }),
  );
  const lines = (await kubectl("get", "pxg", "-n", "default")).stdout.trim().split("\n");
  assert.deepEqual(lines[0]?.split(/\s+/), ["NAME", "REPLICAS", "READY", "MASTER", "CLEANER", "AGE"]);
  assert.match(lines[1] ?? "", /^shown\s+3\s+2\s+shown-0\s+true\s+\d+s$/);
  await kubectl("delete", "pxg", "shown", "-n", "default", "--wait=true");
});
