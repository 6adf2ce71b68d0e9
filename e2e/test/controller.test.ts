// The generic controller machinery against a real kube-apiserver: the informer follows ConfigMaps
// through creates, updates, deletes, broken connections and silent watches; two leader electors
// share one Lease.
import assert from "node:assert/strict";
import type https from "node:https";
import { after, before, test } from "node:test";
import { KubeConfig } from "@kubernetes/client-node";
import { Informer } from "../../operator/src/controller/informer.js";
import { LeaderElector } from "../../operator/src/controller/leader-election.js";
import { type KubeObject, KubeRest } from "../../operator/src/controller/rest.js";
import { waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";

let cluster: LocalCluster | undefined;
let rest: KubeRest | undefined;
const NS = "controller-e2e";

before(async () => {
  cluster = await startCluster();
  const kc = new KubeConfig();
  kc.loadFromFile(cluster.kubeconfig);
  rest = await KubeRest.fromKubeConfig(kc);
  await rest.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: NS } });
});

after(async () => {
  rest?.close();
  await stopCluster(cluster);
});

const cmPath = `/api/v1/namespaces/${NS}/configmaps`;
const configMap = (name: string, data: Record<string, string>, labels = { app: "ctl" }) => ({
  apiVersion: "v1",
  kind: "ConfigMap",
  metadata: { name, namespace: NS, labels },
  data,
});

/** Destroys every connection of the client's pool: the watch stream breaks like on a network fault. */
function breakConnections(client: KubeRest): number {
  const agent = client.agent as https.Agent;
  let n = 0;
  for (const sockets of Object.values(agent.sockets)) {
    for (const s of sockets ?? []) {
      s.destroy();
      n++;
    }
  }
  return n;
}

test("informer: creates, updates and deletes, a broken watch, a silent watch", async () => {
  if (!rest) throw new Error("no client");
  const r = rest;
  const events: string[] = [];
  await r.create(cmPath, configMap("before-start", { v: "0" }));
  await r.create(cmPath, configMap("other-label", { v: "0" }, { app: "other" }));
  const informer = new Informer<KubeObject>(r, {
    path: "/api/v1/configmaps",
    namespace: NS,
    labelSelector: "app=ctl",
    initialBackoffMs: 100,
    maxBackoffMs: 1000,
    inactivityTimeoutMs: 3000,
    handlers: {
      onAdd: (o) => events.push(`add ${o.metadata.name} ${o.data?.v}`),
      onUpdate: (_old, o) => events.push(`update ${o.metadata.name} ${o.data?.v}`),
      onDelete: (o) => events.push(`delete ${o.metadata.name}`),
    },
  });
  informer.start();
  try {
    await informer.waitForSync();
    assert.equal(informer.hasSynced(), true);
    assert.deepEqual(informer.keys(), [`${NS}/before-start`], "the label selector applies");
    assert.deepEqual(events, ["add before-start 0"]);

    await r.create(cmPath, configMap("a", { v: "1" }));
    await waitFor("add of a", () => events.includes("add a 1"), 30_000, 50);
    await r.patch(`${cmPath}/a`, { data: { v: "2" } }, "merge");
    await waitFor("update of a", () => events.includes("update a 2"), 30_000, 50);
    await r.delete(`${cmPath}/before-start`);
    await waitFor("delete of before-start", () => events.includes("delete before-start"), 30_000, 50);
    assert.equal(informer.get(`${NS}/a`)?.data?.v, "2");
    assert.equal(informer.get(`${NS}/before-start`), undefined);

    // Break the watch's connection; the informer backs off, lists again and follows new changes.
    const before = informer.stats();
    assert.ok(breakConnections(r) > 0, "the watch had a connection to break");
    await waitFor(
      "a re-list after the broken watch",
      () => informer.stats().lists > before.lists,
      30_000,
      50,
    );
    await r.create(cmPath, configMap("b", { v: "1" }));
    await r.delete(`${cmPath}/a`);
    await waitFor(
      "changes seen after the re-list",
      () => events.includes("add b 1") && events.includes("delete a"),
      30_000,
      50,
    );
    assert.ok(informer.stats().restarts > before.restarts);

    // With no change for longer than the inactivity timeout, the informer restarts its watch.
    const quiet = informer.stats();
    await waitFor(
      "a restart after the inactivity timeout",
      () => informer.stats().restarts > quiet.restarts,
      30_000,
      200,
    );
    await waitFor(
      "a fresh watch after the restart",
      () => informer.stats().watches > quiet.watches,
      30_000,
      50,
    );
    await r.patch(`${cmPath}/b`, { data: { v: "3" } }, "merge");
    await waitFor("update after the silent watch", () => events.includes("update b 3"), 30_000, 50);
    assert.deepEqual(informer.keys(), [`${NS}/b`]);
    log(`informer events: ${events.join(", ")}; stats ${JSON.stringify(informer.stats())}`);
  } finally {
    await informer.stop();
  }
});

test("leader election: one of two electors leads; the other takes over after a release", async () => {
  if (!rest) throw new Error("no client");
  const r = rest;
  const leading = new Set<string>();
  const everLed: string[] = [];
  let overlap = false;
  const elector = (identity: string) =>
    new LeaderElector(r, {
      namespace: NS,
      name: "controller-e2e-lock",
      identity,
      leaseDurationMs: 4000,
      renewDeadlineMs: 3000,
      retryPeriodMs: 500,
      onStartedLeading: async (signal) => {
        if (leading.size > 0) overlap = true;
        leading.add(identity);
        everLed.push(identity);
        await new Promise<void>((resolve) =>
          signal.addEventListener("abort", () => resolve(), { once: true }),
        );
        leading.delete(identity);
      },
    });
  const stopA = new AbortController();
  const stopB = new AbortController();
  const a = elector("a");
  const b = elector("b");
  const runA = a.run(stopA.signal);
  const runB = b.run(stopB.signal);
  try {
    await waitFor("a leader", () => leading.size === 1, 30_000, 50);
    // Long enough for several renewals and acquisition attempts of the other.
    await new Promise((res) => setTimeout(res, 3000));
    assert.equal(leading.size, 1);
    assert.equal(everLed.length, 1, "no change of leader while the leader renews");
    const first = everLed[0]!;
    const lease = await r.get(`/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/controller-e2e-lock`);
    assert.equal(lease.spec.holderIdentity, first);

    const [firstStop, firstRun, second] = first === "a" ? [stopA, runA, "b"] : [stopB, runB, "a"];
    const stoppedAt = Date.now();
    firstStop.abort();
    await firstRun;
    await waitFor(`${second} to take over`, () => leading.has(second), 30_000, 50);
    // A release hands over within a few retry periods, not after the 4 s lease duration.
    log(`take-over after ${Date.now() - stoppedAt} ms`);
    assert.ok(Date.now() - stoppedAt < 4000, "the released lease is taken without waiting for expiry");
    assert.equal(overlap, false, "never two leaders at once");
    const after = await r.get(`/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/controller-e2e-lock`);
    assert.equal(after.spec.holderIdentity, second);
    assert.equal(after.spec.leaseTransitions, 1, "one hand-over since the lease was created");
  } finally {
    stopA.abort();
    stopB.abort();
    await Promise.all([runA, runB]);
  }
});
