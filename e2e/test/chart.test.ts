// The paxos-operator Helm chart: its CRD copy matches crds/, `helm lint --strict` is clean, the
// rendered manifests (cluster-wide and namespaced RBAC) and the example PaxosGroup pass a
// server-side dry run against a real API server, and values.schema.json refuses bad values.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { parseAllDocuments } from "yaml";
import { binaryDir, REPO_ROOT } from "../cluster/binaries.js";
import type { LocalCluster } from "../providers/local.js";
import { startCluster, stopCluster } from "./helpers.js";

const run = promisify(execFile);
const CHART = path.join(REPO_ROOT, "charts", "paxos-operator");
const CRD_FILE = path.join(REPO_ROOT, "crds", "paxosgroup.yaml");
const EXAMPLE = path.join(REPO_ROOT, "examples", "paxosgroup.yaml");
const NAMESPACE = "paxos-system";

let cluster: LocalCluster | undefined;
let tmp = "";
let binDir = "";

before(async () => {
  binDir = await binaryDir();
  tmp = await mkdtemp(path.join(os.tmpdir(), "chart-test-"));
});

after(async () => {
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The cluster is started by the first test that needs it, so the static checks run without one. */
async function liveCluster(): Promise<LocalCluster> {
  if (!cluster) {
    cluster = await startCluster();
    await kubectl("apply", "--server-side", "-f", CRD_FILE);
    await kubectl("wait", "--for=condition=Established", "crd/paxosgroups.paxos.dev", "--timeout=60s");
    await kubectl("create", "namespace", NAMESPACE);
    // The API server's PodSecurity admission then warns about any pod template that breaks the
    // restricted profile (for Deployments it warns rather than refuses).
    await kubectl(
      "label",
      "namespace",
      NAMESPACE,
      "pod-security.kubernetes.io/enforce=restricted",
      "pod-security.kubernetes.io/warn=restricted",
    );
  }
  return cluster;
}

async function kubectl(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  if (!cluster) throw new Error("no cluster");
  return run(path.join(binDir, "kubectl"), ["--kubeconfig", cluster.kubeconfig, ...args]);
}

function helm(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run(path.join(binDir, "helm"), args);
}

async function helmFails(...args: string[]): Promise<string> {
  try {
    await helm(...args);
  } catch (e) {
    return (e as { stderr: string }).stderr;
  }
  throw new Error(`helm ${args.join(" ")} succeeded but should have failed`);
}

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}

function parseManifests(text: string): Manifest[] {
  return parseAllDocuments(text)
    .map((d) => d.toJS() as Manifest | null)
    .filter((m): m is Manifest => m !== null);
}

function find(manifests: Manifest[], kind: string, name?: string): Manifest {
  const m = manifests.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  assert.ok(m, `no ${kind}${name ? ` ${name}` : ""} in the rendered chart`);
  return m;
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface Container {
  image: string;
  imagePullPolicy: string;
  env: EnvVar[];
  ports: { name: string; containerPort: number }[];
  livenessProbe: { httpGet: { path: string; port: string } };
  readinessProbe: { httpGet: { path: string; port: string } };
  securityContext: Record<string, unknown>;
  volumeMounts: { name: string; mountPath: string }[];
}
interface PodSpec {
  serviceAccountName: string;
  securityContext: Record<string, unknown>;
  containers: Container[];
  volumes: { name: string; emptyDir?: unknown }[];
}
interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

function operatorContainer(manifests: Manifest[]): { pod: PodSpec; container: Container } {
  const deploy = find(manifests, "Deployment") as unknown as {
    spec: { replicas: number; template: { spec: PodSpec } };
  };
  const pod = deploy.spec.template.spec;
  const container = pod.containers[0];
  assert.ok(container, "the Deployment has no container");
  return { pod, container };
}

function envOf(container: Container): Map<string, EnvVar> {
  return new Map(container.env.map((e) => [e.name, e]));
}

/** The verbs granted on group/resource by any of the rules. */
function verbs(rules: Rule[], group: string, resource: string): string[] {
  const granted = new Set<string>();
  for (const r of rules) {
    if (r.apiGroups.includes(group) && r.resources.includes(resource))
      for (const v of r.verbs) granted.add(v);
  }
  return [...granted].sort();
}

function assertLeastPrivilege(rules: Rule[]): void {
  const crud = ["create", "delete", "get", "list", "patch", "update", "watch"];
  assert.deepEqual(verbs(rules, "paxos.dev", "paxosgroups"), ["get", "list", "patch", "update", "watch"]);
  assert.deepEqual(verbs(rules, "paxos.dev", "paxosgroups/status"), ["get", "patch", "update"]);
  assert.deepEqual(verbs(rules, "paxos.dev", "paxosgroups/finalizers"), ["update"]);
  assert.deepEqual(verbs(rules, "apps", "statefulsets"), crud);
  assert.deepEqual(verbs(rules, "", "services"), crud);
  assert.deepEqual(verbs(rules, "", "secrets"), crud);
  assert.deepEqual(verbs(rules, "policy", "poddisruptionbudgets"), crud);
  assert.deepEqual(verbs(rules, "", "pods"), ["delete", "get", "list", "watch"]);
  assert.deepEqual(verbs(rules, "", "persistentvolumeclaims"), ["delete", "get", "list", "patch", "watch"]);
  assert.deepEqual(verbs(rules, "", "events"), ["create", "patch"]);
  assert.deepEqual(verbs(rules, "events.k8s.io", "events"), ["create", "patch"]);
  for (const r of rules) {
    assert.ok(
      !r.verbs.includes("*") && !r.resources.includes("*") && !r.apiGroups.includes("*"),
      "no wildcards",
    );
  }
}

async function dryRun(file: string): Promise<{ stdout: string; stderr: string }> {
  await liveCluster();
  return kubectl("apply", "--dry-run=server", "-f", file);
}

test("the chart's CRD is byte-identical to crds/paxosgroup.yaml", async () => {
  const source = await readFile(CRD_FILE);
  const copy = await readFile(path.join(CHART, "crds", "paxosgroup.yaml"));
  assert.ok(
    source.equals(copy),
    "charts/paxos-operator/crds/paxosgroup.yaml differs from crds/paxosgroup.yaml: copy crds/paxosgroup.yaml over it",
  );
});

test("helm lint passes with no warnings or errors, also with --strict", async () => {
  for (const args of [
    ["lint", CHART],
    ["lint", "--strict", CHART],
  ]) {
    const { stdout } = await helm(...args);
    assert.match(stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    assert.doesNotMatch(stdout, /\[(WARNING|ERROR)\]/, stdout);
  }
});

test("default values: cluster-wide RBAC, leader election, restricted pod; passes a server-side dry run", async () => {
  const { stdout } = await helm(
    "template",
    "paxos-operator",
    CHART,
    "--namespace",
    NAMESPACE,
    "--include-crds",
  );
  const manifests = parseManifests(stdout);
  const kinds = manifests.map((m) => m.kind).sort();
  assert.deepEqual(kinds, [
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "Deployment",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
  ]);

  for (const m of manifests.filter((x) => x.kind !== "CustomResourceDefinition")) {
    const labels = m.metadata.labels ?? {};
    assert.equal(labels["app.kubernetes.io/name"], "paxos-operator", `${m.kind} labels`);
    assert.equal(labels["app.kubernetes.io/instance"], "paxos-operator", `${m.kind} labels`);
    assert.equal(labels["app.kubernetes.io/version"], "0.1.0", `${m.kind} labels`);
    assert.equal(labels["app.kubernetes.io/managed-by"], "Helm", `${m.kind} labels`);
    assert.equal(labels["helm.sh/chart"], "paxos-operator-0.1.0", `${m.kind} labels`);
  }

  const deploy = find(manifests, "Deployment") as unknown as { spec: { replicas: number } };
  assert.equal(deploy.spec.replicas, 1);
  const { pod, container } = operatorContainer(manifests);
  assert.equal(container.image, "paxos-operator:0.1.0");
  assert.equal(container.imagePullPolicy, "IfNotPresent");
  const env = envOf(container);
  assert.equal(env.get("POD_NAMESPACE")?.valueFrom?.fieldRef?.fieldPath, "metadata.namespace");
  assert.equal(env.get("PAXOS_NODE_IMAGE")?.value, "paxos-node:0.1.0");
  assert.equal(env.get("LEADER_ELECT")?.value, "true");
  assert.equal(env.has("WATCH_NAMESPACE"), false, "cluster scope watches every namespace");
  assert.deepEqual(
    container.ports.map((p) => [p.name, p.containerPort]),
    [["metrics", 9090]],
  );
  assert.deepEqual(container.livenessProbe.httpGet, { path: "/healthz", port: "metrics" });
  assert.deepEqual(container.readinessProbe.httpGet, { path: "/readyz", port: "metrics" });
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.equal(pod.securityContext.runAsUser, 10001);
  assert.deepEqual(pod.securityContext.seccompProfile, { type: "RuntimeDefault" });
  assert.equal(container.securityContext.readOnlyRootFilesystem, true);
  assert.equal(container.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(container.securityContext.capabilities, { drop: ["ALL"] });
  assert.deepEqual(container.volumeMounts, [{ name: "tmp", mountPath: "/tmp" }]);
  assert.ok(pod.volumes.find((v) => v.name === "tmp")?.emptyDir, "/tmp is an emptyDir");
  assert.equal(pod.serviceAccountName, find(manifests, "ServiceAccount").metadata.name);

  assertLeastPrivilege((find(manifests, "ClusterRole") as unknown as { rules: Rule[] }).rules);
  const election = find(manifests, "Role", "paxos-operator-leader-election") as unknown as {
    metadata: { namespace: string };
    rules: Rule[];
  };
  assert.equal(election.metadata.namespace, NAMESPACE);
  assert.deepEqual(verbs(election.rules, "coordination.k8s.io", "leases"), [
    "create",
    "get",
    "list",
    "patch",
    "update",
    "watch",
  ]);
  const service = find(manifests, "Service") as unknown as {
    spec: { ports: { name: string; port: number; targetPort: string }[] };
  };
  assert.deepEqual(service.spec.ports[0], {
    name: "metrics",
    port: 9090,
    targetPort: "metrics",
    protocol: "TCP",
  });

  const file = path.join(tmp, "cluster-scope.yaml");
  await writeFile(file, stdout);
  const { stdout: out, stderr } = await dryRun(file);
  assert.doesNotMatch(stderr, /would violate PodSecurity/, stderr);
  for (const expected of [
    /deployment\.apps\/paxos-operator created \(server dry run\)/,
    /clusterrole\.rbac\.authorization\.k8s\.io\/paxos-operator created \(server dry run\)/,
    /clusterrolebinding\.rbac\.authorization\.k8s\.io\/paxos-operator created \(server dry run\)/,
    /role\.rbac\.authorization\.k8s\.io\/paxos-operator-leader-election created \(server dry run\)/,
    /service\/paxos-operator-metrics created \(server dry run\)/,
    /serviceaccount\/paxos-operator created \(server dry run\)/,
    /customresourcedefinition\.apiextensions\.k8s\.io\/paxosgroups\.paxos\.dev (configured|unchanged) \(server dry run\)/,
  ]) {
    assert.match(out, expected);
  }
});

test("rbac.scope=namespace: a Role and RoleBinding in the release namespace, WATCH_NAMESPACE set; passes a dry run", async () => {
  const { stdout } = await helm(
    "template",
    "paxos-operator",
    CHART,
    "--namespace",
    NAMESPACE,
    "--set",
    "rbac.scope=namespace",
  );
  const manifests = parseManifests(stdout);
  assert.equal(
    manifests.some((m) => m.kind === "ClusterRole" || m.kind === "ClusterRoleBinding"),
    false,
    "no cluster-wide RBAC in namespace scope",
  );
  const role = find(manifests, "Role", "paxos-operator") as unknown as {
    metadata: { namespace: string };
    rules: Rule[];
  };
  assert.equal(role.metadata.namespace, NAMESPACE);
  assertLeastPrivilege(role.rules);
  const binding = find(manifests, "RoleBinding", "paxos-operator") as unknown as {
    metadata: { namespace: string };
    roleRef: { kind: string; name: string };
    subjects: { kind: string; name: string; namespace: string }[];
  };
  assert.equal(binding.metadata.namespace, NAMESPACE);
  assert.deepEqual(binding.roleRef, {
    apiGroup: "rbac.authorization.k8s.io",
    kind: "Role",
    name: "paxos-operator",
  });
  assert.deepEqual(binding.subjects, [
    { kind: "ServiceAccount", name: "paxos-operator", namespace: NAMESPACE },
  ]);
  assert.equal(envOf(operatorContainer(manifests).container).get("WATCH_NAMESPACE")?.value, NAMESPACE);

  const file = path.join(tmp, "namespace-scope.yaml");
  await writeFile(file, stdout);
  const { stdout: out, stderr } = await dryRun(file);
  assert.doesNotMatch(stderr, /would violate PodSecurity/, stderr);
  assert.match(out, /role\.rbac\.authorization\.k8s\.io\/paxos-operator created \(server dry run\)/);
  assert.match(out, /rolebinding\.rbac\.authorization\.k8s\.io\/paxos-operator created \(server dry run\)/);
  assert.match(out, /deployment\.apps\/paxos-operator created \(server dry run\)/);
});

test("values set image, pull policy, node image and leader election", async () => {
  const { stdout } = await helm(
    "template",
    "ops",
    CHART,
    "--set",
    "image.repository=registry.example/paxos-operator,image.tag=dev,image.pullPolicy=Never",
    "--set",
    "nodeImage.repository=registry.example/paxos-node,nodeImage.tag=1.2.3",
    "--set",
    "leaderElection.enabled=false,replicaCount=2",
  );
  const manifests = parseManifests(stdout);
  const { container } = operatorContainer(manifests);
  assert.equal(container.image, "registry.example/paxos-operator:dev");
  assert.equal(container.imagePullPolicy, "Never");
  const env = envOf(container);
  assert.equal(env.get("PAXOS_NODE_IMAGE")?.value, "registry.example/paxos-node:1.2.3");
  assert.equal(env.get("LEADER_ELECT")?.value, "false");
  assert.equal(find(manifests, "Deployment").metadata.name, "ops-paxos-operator");
  assert.equal(
    manifests.some((m) => m.metadata.name.endsWith("-leader-election")),
    false,
    "no Lease RBAC without leader election",
  );
});

test("the dry run's PodSecurity check does catch a pod that breaks the restricted profile", async () => {
  const { stdout } = await helm(
    "template",
    "paxos-operator",
    CHART,
    "--namespace",
    NAMESPACE,
    "--set",
    "securityContext.allowPrivilegeEscalation=true",
  );
  const file = path.join(tmp, "privileged.yaml");
  await writeFile(file, stdout);
  const { stderr } = await dryRun(file);
  assert.match(stderr, /would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false/);
});

test("examples/paxosgroup.yaml passes a server-side dry run against the CRD", async () => {
  const example = parseManifests(await readFile(EXAMPLE, "utf8"));
  assert.equal(example.length, 1);
  const spec = (example[0] as unknown as { spec: Record<string, unknown> }).spec;
  assert.equal(spec.replicas, 3);
  assert.deepEqual(spec.storage, { size: "1Gi", storageClassName: "standard" });
  assert.deepEqual(spec.logCleaner, {
    holdCount: 100000,
    windows: [{ schedule: "0 2 * * *", duration: "2h", timeZone: "Europe/Berlin" }],
  });
  assert.match((await dryRun(EXAMPLE)).stdout, /paxosgroup\.paxos\.dev\/kv created \(server dry run\)/);
});

test("values.schema.json refuses bad values with a message naming them", async () => {
  const cases: [string, RegExp][] = [
    ["rbac.scope=everywhere", /\/rbac\/scope'?: value must be one of 'cluster', 'namespace'/],
    ["replicaCount=-1", /\/replicaCount'?: minimum: got -1/],
    ["image.pullPolicy=Sometimes", /\/image\/pullPolicy'?: value must be one of/],
    ["metrics.service.port=0", /\/metrics\/service\/port'?: minimum: got 0/],
    ["leaderElection.enabled=maybe", /\/leaderElection\/enabled'?: got string, want boolean/],
    ["rbac.scopes=cluster", /additional properties 'scopes' not allowed/],
  ];
  for (const [value, message] of cases) {
    const stderr = await helmFails("template", "paxos-operator", CHART, "--set", value);
    assert.match(stderr, /values don't meet the specifications of the schema/, value);
    assert.match(stderr, message, `${value}: ${stderr}`);
  }
});
