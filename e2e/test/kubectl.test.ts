// kubectl and helm from the Go build against the local API server: versions, server-side dry run
// of manifests (how the CRDs and the chart get validated), CEL validation of a CRD.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import type { LocalCluster } from "../providers/local.js";
import { startCluster, stopCluster } from "./helpers.js";

const run = promisify(execFile);
let cluster: LocalCluster | undefined;
let tmp = "";

before(async () => {
  cluster = await startCluster();
  tmp = await mkdtemp(path.join(os.tmpdir(), "kubectl-test-"));
});

after(async () => {
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function bin(name: string): string {
  if (!cluster) throw new Error("no cluster");
  return path.join(cluster.controlPlane.binDir, name);
}

async function kubectl(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  if (!cluster) throw new Error("no cluster");
  return run(bin("kubectl"), ["--kubeconfig", cluster.kubeconfig, ...args]);
}

async function kubectlFails(...args: string[]): Promise<string> {
  try {
    await kubectl(...args);
  } catch (e) {
    return (e as { stderr: string }).stderr;
  }
  throw new Error(`kubectl ${args.join(" ")} succeeded but should have failed`);
}

const CRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas: {type: integer, minimum: 1, maximum: 9}
                min: {type: integer}
                max: {type: integer}
              x-kubernetes-validations:
                - rule: "!has(self.min) || !has(self.max) || self.min <= self.max"
                  message: "spec.min must not exceed spec.max"
`;

test("kubectl and the API server report v1.34.4; helm reports its version", async () => {
  const v = JSON.parse((await kubectl("version", "-o", "json")).stdout) as {
    clientVersion: { gitVersion: string };
    serverVersion: { gitVersion: string };
  };
  assert.equal(v.clientVersion.gitVersion, "v1.34.4");
  assert.equal(v.serverVersion.gitVersion, "v1.34.4");
  const helm = (await run(bin("helm"), ["version", "--short"])).stdout;
  assert.match(helm, /^v3\.19\.5/);
});

test("kubectl apply --dry-run=server validates without persisting", async () => {
  const file = path.join(tmp, "crd.yaml");
  await writeFile(file, CRD);
  const dry = await kubectl("apply", "--dry-run=server", "-f", file);
  assert.match(dry.stdout, /widgets\.example\.dev created \(server dry run\)/);
  await kubectlFails("get", "crd", "widgets.example.dev");

  await kubectl("apply", "--server-side", "-f", file);
  await kubectl("wait", "--for=condition=Established", "crd/widgets.example.dev", "--timeout=60s");
  const good = path.join(tmp, "good.yaml");
  await writeFile(
    good,
    "apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\nspec: {replicas: 3, min: 1, max: 2}\n",
  );
  assert.match(
    (await kubectl("apply", "--dry-run=server", "-f", good)).stdout,
    /widget\.example\.dev\/w created \(server dry run\)/,
  );

  const schemaBad = path.join(tmp, "schema-bad.yaml");
  await writeFile(
    schemaBad,
    "apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\nspec: {replicas: 10}\n",
  );
  assert.match(
    await kubectlFails("apply", "--dry-run=server", "-f", schemaBad),
    /spec\.replicas: Invalid value: 10: spec\.replicas in body should be less than or equal to 9/,
  );

  const celBad = path.join(tmp, "cel-bad.yaml");
  await writeFile(
    celBad,
    "apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\nspec: {replicas: 1, min: 5, max: 2}\n",
  );
  assert.match(
    await kubectlFails("apply", "--dry-run=server", "-f", celBad),
    /spec\.min must not exceed spec\.max/,
  );
});

test("helm template output passes a server-side dry run", async () => {
  const chart = path.join(tmp, "chart");
  await mkdir(path.join(chart, "templates"), { recursive: true });
  await writeFile(path.join(chart, "Chart.yaml"), "apiVersion: v2\nname: demo\nversion: 0.1.0\n");
  await writeFile(path.join(chart, "values.yaml"), "replicas: 2\n");
  await writeFile(
    path.join(chart, "templates", "deploy.yaml"),
    `apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo}}
    spec:
      containers: [{name: main, image: e2e-testserver:dev}]
`,
  );
  const rendered = path.join(tmp, "rendered.yaml");
  await writeFile(rendered, (await run(bin("helm"), ["template", "demo", chart])).stdout);
  assert.match(
    (await kubectl("apply", "--dry-run=server", "-f", rendered)).stdout,
    /deployment\.apps\/demo created \(server dry run\)/,
  );
});
