// Smoke scenario: the cluster machinery an operator relies on, seen only through a kubeconfig.
// A StatefulSet of three test servers with a PVC template behind a headless Service: pods Ready,
// PVCs Bound, each pod reaches the others by DNS name; a deleted pod comes back with its PVC data;
// deleting the StatefulSet garbage-collects its pods.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { KubeClient, type KubeObject, waitFor } from "../cluster/kube.js";
import type { ClusterHandle } from "../providers/types.js";

const REPLICAS = 3;
const PORT = 8080;

export interface ScenarioOptions {
  log?: (line: string) => void;
  /** Keep the namespace afterwards for a look (default false). */
  keep?: boolean;
}

function isReady(p: KubeObject): boolean {
  return (p.status?.conditions ?? []).some(
    (c: { type: string; status: string }) => c.type === "Ready" && c.status === "True",
  );
}

export async function smokeScenario(cluster: ClusterHandle, opts: ScenarioOptions = {}): Promise<void> {
  const log = opts.log ?? (() => {});
  const client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  const ns = `e2e-smoke-${randomBytes(3).toString("hex")}`;
  const podsPath = `/api/v1/namespaces/${ns}/pods`;
  const proxy = (pod: string, rest: string) => `/api/v1/namespaces/${ns}/pods/${pod}:${PORT}/proxy${rest}`;
  const listPods = async () => (await client.list(podsPath, { labelSelector: "app=web" })).items;

  try {
    log(`namespace ${ns}`);
    await client.create("/api/v1/namespaces", { metadata: { name: ns } });
    await client.apply({
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "web", namespace: ns },
      spec: { clusterIP: "None", selector: { app: "web" }, ports: [{ name: "http", port: PORT }] },
    });
    await client.apply({
      apiVersion: "apps/v1",
      kind: "StatefulSet",
      metadata: { name: "web", namespace: ns },
      spec: {
        replicas: REPLICAS,
        serviceName: "web",
        podManagementPolicy: "Parallel",
        selector: { matchLabels: { app: "web" } },
        template: {
          metadata: { labels: { app: "web" } },
          spec: {
            terminationGracePeriodSeconds: 5,
            containers: [
              {
                name: "server",
                image: cluster.images.testServer,
                args: ["--port", String(PORT), "--data-dir", "/data"],
                env: [
                  { name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
                  { name: "POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
                ],
                ports: [{ name: "http", containerPort: PORT }],
                readinessProbe: { httpGet: { path: "/readyz", port: "http" }, periodSeconds: 1 },
                livenessProbe: { httpGet: { path: "/healthz", port: "http" }, periodSeconds: 5 },
                volumeMounts: [{ name: "data", mountPath: "/data" }],
              },
            ],
          },
        },
        volumeClaimTemplates: [
          {
            metadata: { name: "data" },
            spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "16Mi" } } },
          },
        ],
      },
    });

    log("waiting for 3 Ready pods and 3 Bound PVCs");
    await waitFor(
      "3 Ready pods",
      async () => {
        const pods = await listPods();
        return pods.length === REPLICAS && pods.every(isReady) && pods;
      },
      180_000,
    );
    const pvcs = await waitFor("3 Bound PVCs", async () => {
      const l = await client.list(`/api/v1/namespaces/${ns}/persistentvolumeclaims`);
      return l.items.length === REPLICAS && l.items.every((c) => c.status?.phase === "Bound") && l.items;
    });
    assert.deepEqual(pvcs.map((c) => c.metadata.name).sort(), ["data-web-0", "data-web-1", "data-web-2"]);

    const names = Array.from({ length: REPLICAS }, (_, i) => `web-${i}`);
    log("each pod writes its name to its volume");
    for (const pod of names) {
      await client.requestText("PUT", proxy(pod, "/data"), { body: pod, contentType: "text/plain" });
    }

    log("each pod reaches every other by DNS name");
    for (const from of names) {
      for (const to of names) {
        if (from === to) continue;
        for (const host of [`${to}.web.${ns}.svc.cluster.local`, `${to}.web`]) {
          const res = JSON.parse(
            await client.requestText("GET", proxy(from, "/fetch"), {
              query: { url: `http://${host}:${PORT}/whoami` },
            }),
          ) as { status: number; body: string };
          assert.equal(res.status, 200, `${from} -> ${host}`);
          assert.equal((JSON.parse(res.body) as { hostname: string }).hostname, to, `${from} -> ${host}`);
        }
      }
    }

    log("delete web-1: it comes back with the same PVC data");
    const old = await client.get(`${podsPath}/web-1`);
    await client.delete(`${podsPath}/web-1`);
    await waitFor(
      "web-1 recreated and Ready",
      async () => {
        const p = await client.getOrNull(`${podsPath}/web-1`);
        return p !== null && p.metadata.uid !== old.metadata.uid && isReady(p);
      },
      180_000,
    );
    assert.equal(await client.requestText("GET", proxy("web-1", "/data")), "web-1");

    log("delete the StatefulSet: the garbage collector removes its pods");
    await client.delete(`/apis/apps/v1/namespaces/${ns}/statefulsets/web`, {
      propagationPolicy: "Background",
    });
    await waitFor(
      "pods of the deleted StatefulSet gone",
      async () => (await listPods()).length === 0,
      180_000,
    );
    log("smoke scenario passed");
  } finally {
    if (!opts.keep) await client.delete(`/api/v1/namespaces/${ns}`).catch(() => {});
    client.close();
  }
}
