// The pod runner as a kubelet: exit codes and termination messages, CrashLoopBackOff, unknown
// images, the environment and volumes a pod gets, the service-account token, graceful deletion.
import assert from "node:assert/strict";
import https from "node:https";
import { after, before, test } from "node:test";
import { KubeClient, type KubeObject, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";

const NS = "runner-test";
let cluster: LocalCluster | undefined;
let client: KubeClient | undefined;

function k(): KubeClient {
  if (!client) throw new Error("no cluster");
  return client;
}

function images() {
  if (!cluster) throw new Error("no cluster");
  return cluster.images;
}

before(async () => {
  cluster = await startCluster();
  client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  await k().create("/api/v1/namespaces", { metadata: { name: NS } });
});

after(async () => {
  client?.close();
  await stopCluster(cluster);
});

const podPath = (name: string) => `/api/v1/namespaces/${NS}/pods/${name}`;
const proxy = (name: string, rest: string) => `/api/v1/namespaces/${NS}/pods/${name}:8080/proxy${rest}`;

function serverContainer(extra: Record<string, unknown> = {}) {
  return {
    name: "main",
    image: images().testServer,
    env: [{ name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } }],
    readinessProbe: { httpGet: { path: "/readyz", port: 8080 }, periodSeconds: 1 },
    ...extra,
  };
}

async function readyPod(name: string): Promise<KubeObject> {
  return waitFor(
    `pod ${name} Ready`,
    async () => {
      const p = await k().get(podPath(name));
      return (
        (p.status?.conditions ?? []).some(
          (c: { type: string; status: string }) => c.type === "Ready" && c.status === "True",
        ) && p
      );
    },
    120_000,
  );
}

test("exit 75: lastState shows the exit code and termination message; restarts back off", async () => {
  const message = "checkpoint-loaded instance=42 from=kv-1";
  await k().create(`/api/v1/namespaces/${NS}/pods`, {
    metadata: { name: "exit75" },
    spec: {
      containers: [
        serverContainer({
          args: ["--exit-code", "75", "--exit-after-ms", "300", "--message", message],
          readinessProbe: undefined,
        }),
      ],
    },
  });
  let sawBackoff = "";
  const status = await waitFor(
    "two restarts of exit75",
    async () => {
      const p = await k().get(podPath("exit75"));
      const cs = p.status?.containerStatuses?.[0];
      if (cs?.state?.waiting?.reason === "CrashLoopBackOff") sawBackoff = cs.state.waiting.message;
      return cs && cs.restartCount >= 2 && cs;
    },
    120_000,
    250,
  );
  log(`exit75 status: ${JSON.stringify(status)}`);
  assert.equal(status.lastState.terminated.exitCode, 75);
  assert.equal(status.lastState.terminated.reason, "Error");
  assert.equal(status.lastState.terminated.message, message);
  assert.match(sawBackoff, /^back-off 10s restarting failed container=main pod=exit75_runner-test/);
  await k().delete(podPath("exit75"));
});

test("an unknown image waits with ErrImagePull", async () => {
  await k().create(`/api/v1/namespaces/${NS}/pods`, {
    metadata: { name: "noimage" },
    spec: { containers: [{ name: "main", image: "registry.example/nothing-here:1.0" }] },
  });
  const waiting = await waitFor("ErrImagePull", async () => {
    const p = await k().get(podPath("noimage"));
    const w = p.status?.containerStatuses?.[0]?.state?.waiting;
    return w?.reason === "ErrImagePull" && w;
  });
  assert.match(waiting.message, /image "registry\.example\/nothing-here:1\.0" .* is not one it can run/);
  const p = await k().get(podPath("noimage"));
  assert.equal(p.status.phase, "Pending");
  await k().delete(podPath("noimage"));
});

test("env (fieldRef, secretKeyRef, configMapKeyRef), Secret/ConfigMap volumes, service account, hostname", async () => {
  await k().create(`/api/v1/namespaces/${NS}/secrets`, {
    metadata: { name: "s" },
    stringData: { password: "hunter2", "token.txt": "file-secret" },
  });
  await k().create(`/api/v1/namespaces/${NS}/configmaps`, {
    metadata: { name: "c" },
    data: { mode: "fast" },
  });
  await k().create(`/api/v1/namespaces/${NS}/pods`, {
    metadata: { name: "envpod", labels: { tier: "gold" } },
    spec: {
      containers: [
        serverContainer({
          env: [
            { name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
            { name: "POD_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
            { name: "POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
            { name: "TIER", valueFrom: { fieldRef: { fieldPath: "metadata.labels['tier']" } } },
            { name: "PASSWORD", valueFrom: { secretKeyRef: { name: "s", key: "password" } } },
            { name: "MODE", valueFrom: { configMapKeyRef: { name: "c", key: "mode" } } },
            { name: "GREETING", value: "hello $(POD_NAME)" },
          ],
          volumeMounts: [
            { name: "secret", mountPath: "/config/secret" },
            { name: "cm", mountPath: "/config/cm" },
          ],
        }),
      ],
      volumes: [
        { name: "secret", secret: { secretName: "s" } },
        { name: "cm", configMap: { name: "c" } },
      ],
    },
  });
  const pod = await readyPod("envpod");
  assert.match(pod.status.podIP, /^10\.244\.\d+\.\d+$/);
  const env = JSON.parse(await k().requestText("GET", proxy("envpod", "/env"))) as Record<string, string>;
  assert.equal(env.POD_IP, pod.status.podIP);
  assert.equal(env.POD_NAME, "envpod");
  assert.equal(env.POD_NAMESPACE, NS);
  assert.equal(env.TIER, "gold");
  assert.equal(env.PASSWORD, "hunter2");
  assert.equal(env.MODE, "fast");
  assert.equal(env.GREETING, "hello envpod");
  assert.ok(env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT);
  const file = (p: string) => k().requestText("GET", proxy("envpod", "/file"), { query: { path: p } });
  assert.equal(await file("/config/secret/token.txt"), "file-secret");
  assert.equal(await file("/config/cm/mode"), "fast");
  const who = JSON.parse(await k().requestText("GET", proxy("envpod", "/whoami"))) as { hostname: string };
  assert.equal(who.hostname, "envpod");

  const sa = "/var/run/secrets/kubernetes.io/serviceaccount";
  assert.equal(await file(`${sa}/namespace`), NS);
  const caText = await file(`${sa}/ca.crt`);
  assert.match(caText, /BEGIN CERTIFICATE/);
  const token = await file(`${sa}/token`);
  // The token authenticates as the pod's service account: RBAC then forbids what it did not grant.
  const answer = await new Promise<{ code: number; body: string }>((resolve, reject) => {
    const url = `https://${env.KUBERNETES_SERVICE_HOST}:${env.KUBERNETES_SERVICE_PORT}/api/v1/namespaces/${NS}/secrets`;
    https
      .get(url, { ca: caText, headers: { authorization: `Bearer ${token}` } }, (res) => {
        let body = "";
        res.on("data", (c) => {
          body += c;
        });
        res.on("end", () => resolve({ code: res.statusCode ?? 0, body }));
      })
      .on("error", reject);
  });
  assert.equal(answer.code, 403);
  assert.match(answer.body, new RegExp(`system:serviceaccount:${NS}:default`));
  await k().delete(podPath("envpod"));
});

test("deleting a pod sends SIGTERM and the pod is gone well before its grace period", async () => {
  await k().create(`/api/v1/namespaces/${NS}/pods`, {
    metadata: { name: "graceful" },
    spec: { terminationGracePeriodSeconds: 60, containers: [serverContainer()] },
  });
  await readyPod("graceful");
  const started = Date.now();
  await k().delete(podPath("graceful"));
  await waitFor("pod graceful gone", async () => (await k().getOrNull(podPath("graceful"))) === null, 50_000);
  assert.ok(Date.now() - started < 50_000);
  if (!cluster) throw new Error("no cluster");
  const output = await cluster.containerLog(NS, "graceful", "main");
  assert.match(output, /SIGTERM: shutting down/);
});

test("a container restarts when its liveness probe fails", async () => {
  await k().create(`/api/v1/namespaces/${NS}/pods`, {
    metadata: { name: "liveness" },
    spec: {
      terminationGracePeriodSeconds: 2,
      containers: [
        serverContainer({
          livenessProbe: {
            httpGet: { path: "/no-such-path", port: 8080 },
            periodSeconds: 1,
            failureThreshold: 2,
          },
        }),
      ],
    },
  });
  const cs = await waitFor(
    "liveness restart",
    async () => {
      const p = await k().get(podPath("liveness"));
      const s = p.status?.containerStatuses?.[0];
      return s && s.restartCount >= 1 && s;
    },
    120_000,
  );
  assert.equal(cs.lastState.terminated.exitCode, 0, "the test server exits 0 on SIGTERM");
  await k().delete(podPath("liveness"));
});

test("container output is kept in a file per pod, also after the pod is gone", async () => {
  if (!cluster) throw new Error("no cluster");
  // The pods of the tests above are deleted by now.
  const text = await cluster.containerLog(NS, "liveness", "main");
  assert.match(text, /e2e-testserver listening on 10\.244\./);
});
