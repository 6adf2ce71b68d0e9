// Issue 7 on the local control plane: scaling 3 -> 5 -> 3 and 3 -> 1 -> 3, a rolling update of the
// image, an operator killed after each kind of step, and a voter whose PVC is lost, all with the
// membership, the StatefulSet, the PVCs and the data checked against what users rely on: one
// member changed at a time, no acknowledged write lost, no stale PVC left for a later scale-up,
// the master moved before its pod restarts, and a restarted operator that finishes the change. The operator runs as a local process
// here so that a test can kill it (a test-only hook) and start it again with other settings.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { Informer, KubeClient, type KubeObject, sleep, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";
import { OperatorProcess } from "./operator-process.js";
import { condition, holdPodDown, installCrd } from "./paxos-group.js";

const NS = "default";
const GROUP = "kv";
const groupPath = `/apis/paxos.dev/v1alpha1/namespaces/${NS}/paxosgroups/${GROUP}`;
const stsPath = `/apis/apps/v1/namespaces/${NS}/statefulsets/${GROUP}`;
const SETTLE_MS = 300_000;

let cluster: LocalCluster | undefined;
let client: KubeClient | undefined;
let operator: OperatorProcess | undefined;
let tmp = "";
let token = "";

function kube(): KubeClient {
  if (!client) throw new Error("no cluster");
  return client;
}

async function startOperator(env: Record<string, string> = {}): Promise<OperatorProcess> {
  if (!cluster) throw new Error("no cluster");
  await operator?.stop();
  operator = await OperatorProcess.start({
    kubeconfig: cluster.kubeconfig,
    namespace: NS,
    nodeImage: cluster.images.node,
    logFile: path.join(tmp, "operator.log"),
    env,
  });
  return operator;
}

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "scaling-e2e-"));
  cluster = await startCluster();
  client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  await installCrd(cluster);
  await startOperator();
});

after(async () => {
  await operator?.stop();
  client?.close();
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

interface Pod extends KubeObject {
  status?: { podIP?: string; conditions?: { type: string; status: string }[] };
}

async function pods(): Promise<Pod[]> {
  return (
    await kube().list<Pod>(`/api/v1/namespaces/${NS}/pods`, {
      labelSelector: `app.kubernetes.io/instance=${GROUP}`,
    })
  ).items.filter((p) => !p.metadata.deletionTimestamp);
}

const isReady = (p: Pod) =>
  p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;

/** A member's HTTP API, straight at its pod IP (local on this machine). */
async function memberFetch(
  ip: string,
  urlPath: string,
  init: RequestInit = {},
  timeoutMs = 10_000,
): Promise<Response> {
  return fetch(`http://${ip}:8080${urlPath}`, { ...init, signal: AbortSignal.timeout(timeoutMs) });
}

/**
 * For samplers: a status call answers in milliseconds, and one that hangs (a pod going away) must
 * not stretch a sample over the seconds a change takes, or the change would fall between samples.
 */
const SAMPLE_TIMEOUT_MS = 1500;
/** Well inside the followers' election timeout (1 s, plus jitter, after the last heartbeat). */
const MASTER_QUERY_WINDOW_MS = 300;

interface NodeStatus {
  member: string;
  role: string;
  master: string | null;
  members: { name: string; role: "voter" | "learner" }[];
  instances: { chosen: number; executed: number; abstainUntil: number | null };
}

/**
 * The status of the master a majority of the answering members name, when it claims the role
 * itself: a deposed master that has not noticed yet is not taken for the group's view.
 */
async function masterStatus(timeoutMs?: number): Promise<NodeStatus | undefined> {
  const answers = await Promise.all(
    (await pods()).map(async (p) => {
      if (!p.status?.podIP) return undefined;
      const res = await memberFetch(p.status.podIP, "/v1/status", {}, timeoutMs).catch(() => undefined);
      return res?.ok ? ((await res.json()) as NodeStatus) : undefined;
    }),
  );
  const statuses = answers.filter((s) => s !== undefined);
  const votes = new Map<string, number>();
  for (const s of statuses) if (s.master) votes.set(s.master, (votes.get(s.master) ?? 0) + 1);
  const [named, count] = [...votes].sort(([, a], [, b]) => b - a)[0] ?? [];
  if (named === undefined || (count ?? 0) * 2 <= statuses.length) return undefined;
  const s = statuses.find((x) => x.member === named);
  return s?.role === "master" ? s : undefined;
}

const configText = (s: NodeStatus) =>
  [...s.members]
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((m) => `${m.name}:${m.role}`)
    .join(",");

const voters = (n: number) => Array.from({ length: n }, (_, i) => `${GROUP}-${i}:voter`).join(",");

async function setReplicas(replicas: number): Promise<void> {
  await kube().patch(groupPath, { spec: { replicas } }, "merge");
}

/** Waits until the group is exactly `replicas` ready voters and the operator says it settled. */
async function waitSettled(replicas: number, what: string): Promise<void> {
  await waitFor(
    what,
    async () => {
      const g = await kube().get(groupPath);
      if (g.status?.observedGeneration !== g.metadata.generation) return false;
      if (condition(g, "Available")?.status !== "True" || condition(g, "Progressing")?.status !== "False") {
        return false;
      }
      if (g.status?.readyReplicas !== replicas) return false;
      const sts = await kube().get(stsPath);
      if (sts.spec.replicas !== replicas) return false;
      const s = await masterStatus();
      return s !== undefined && configText(s) === voters(replicas);
    },
    SETTLE_MS,
    1000,
  ).catch(async (e: unknown) => {
    const g = await kube().getOrNull(groupPath);
    throw new Error(
      `${e instanceof Error ? e.message : String(e)}\nstatus: ${JSON.stringify(g?.status)}\noperator log:\n${await operator?.logTail()}`,
    );
  });
}

/** Writes distinct keys to whichever member is ready, one at a time; remembers what was acknowledged. */
class Writer {
  readonly acked = new Map<string, string>();
  private stopped = false;
  private readonly loop: Promise<void>;
  private n = 0;

  constructor(private readonly prefix: string) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    let targets: string[] = [];
    let refreshed = 0;
    // Bounded: a test stops it, and it never writes more than this many keys.
    while (!this.stopped && this.n < 20_000) {
      if (Date.now() - refreshed > 2000 || targets.length === 0) {
        targets = (await pods().catch(() => [])).filter(isReady).flatMap((p) => p.status?.podIP ?? []);
        refreshed = Date.now();
        if (targets.length === 0) {
          await sleep(200);
          continue;
        }
      }
      const key = `${this.prefix}-${this.n++}`;
      const value = `value-${key}`;
      const ip = targets[this.n % targets.length] ?? "";
      const res = await memberFetch(ip, `/v1/kv/${key}`, { method: "PUT", body: value }).catch(
        () => undefined,
      );
      if (res?.ok) {
        this.acked.set(key, value);
      } else {
        await res?.body?.cancel();
        targets = [];
        await sleep(100);
      }
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  /** Every acknowledged write reads back, linearizably, from a ready member. */
  async verify(): Promise<void> {
    assert.ok(this.acked.size > 0, "the writer got acknowledgements");
    const ip = (await pods()).find(isReady)?.status?.podIP;
    assert.ok(ip, "a ready member");
    for (const [key, value] of this.acked) {
      const res = await waitFor(`GET ${key}`, async () => {
        const r = await memberFetch(ip, `/v1/kv/${key}`);
        return r.status === 200 || r.status === 404 ? r : undefined;
      });
      assert.equal(res.status, 200, `acknowledged write ${key} is there`);
      assert.equal(await res.text(), value);
    }
    log(`${this.prefix}: ${this.acked.size} acknowledged writes read back`);
  }
}

/**
 * Samples, until stopped, the master's configuration and the group's Progressing reason; returns
 * the distinct configurations in order and the set of reasons seen.
 */
function sampleProgress(signal: AbortSignal): {
  stop: () => Promise<{ configs: string[]; reasons: Set<string> }>;
} {
  const configs: string[] = [];
  const reasons = new Set<string>();
  let stopped = false;
  const loop = (async () => {
    for (let i = 0; !stopped && !signal.aborted && i < 10_000; i++) {
      const s = await masterStatus(SAMPLE_TIMEOUT_MS).catch(() => undefined);
      const text = s ? configText(s) : undefined;
      if (text && configs.at(-1) !== text) configs.push(text);
      const g = await kube()
        .get(groupPath)
        .catch(() => undefined);
      const progressing = g ? condition(g, "Progressing") : undefined;
      if (progressing?.status === "True") reasons.add(progressing.reason);
      await sleep(200);
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      return { configs, reasons };
    },
  };
}

/** Each observed configuration is one of `chain`, in the chain's order: one change at a time. */
function assertFollows(observed: string[], chain: string[]): void {
  let at = 0;
  for (const c of observed) {
    const i = chain.indexOf(c, at);
    assert.ok(
      i >= 0,
      `configuration ${c} is not a next step of ${JSON.stringify(chain.slice(at))}; seen ${JSON.stringify(observed)}`,
    );
    at = i;
  }
  assert.equal(observed.at(-1), chain.at(-1));
}

async function assertPvcs(replicas: number): Promise<void> {
  await waitFor(
    `PVCs of exactly ${replicas} members`,
    async () => {
      const names = (
        await kube().list(`/api/v1/namespaces/${NS}/persistentvolumeclaims`, {
          labelSelector: `app.kubernetes.io/instance=${GROUP}`,
        })
      ).items
        .map((c) => c.metadata.name)
        .sort();
      const want = Array.from({ length: replicas }, (_, i) => `data-${GROUP}-${i}`).sort();
      return JSON.stringify(names) === JSON.stringify(want);
    },
    120_000,
    1000,
  );
}

test("a three-member group settles", async () => {
  await kube().create(`/apis/paxos.dev/v1alpha1/namespaces/${NS}/paxosgroups`, {
    apiVersion: "paxos.dev/v1alpha1",
    kind: "PaxosGroup",
    metadata: { name: GROUP, namespace: NS },
    spec: { replicas: 3, storage: { size: "64Mi", storageClassName: "standard" } },
  });
  await waitSettled(3, "3 ready voters");
  const secret = await kube().get(`/api/v1/namespaces/${NS}/secrets/${GROUP}-token`);
  token = Buffer.from(secret.data.token, "base64").toString("utf8");
});

test("3 -> 5 -> 3 while a writer runs: one member at a time, nothing lost, removed PVCs gone", async (t) => {
  const writer = new Writer("scale");
  try {
    let sampler = sampleProgress(t.signal);
    await setReplicas(5);
    await waitSettled(5, "5 ready voters");
    const up = await sampler.stop();
    assert.ok(up.reasons.has("AddingLearner"), `Progressing reasons seen: ${[...up.reasons]}`);
    assertFollows(up.configs, [
      voters(3),
      `${voters(3)},${GROUP}-3:learner`,
      voters(4),
      `${voters(4)},${GROUP}-4:learner`,
      voters(5),
    ]);
    const g = await kube().get(groupPath);
    assert.deepEqual(
      g.status.members.map((m: { name: string; role: string }) => `${m.name}:${m.role}`).join(","),
      voters(5),
    );

    sampler = sampleProgress(t.signal);
    await setReplicas(3);
    await waitSettled(3, "back to 3 ready voters");
    const down = await sampler.stop();
    assert.ok(down.reasons.has("RemovingMember"), `Progressing reasons seen: ${[...down.reasons]}`);
    assertFollows(down.configs, [voters(5), voters(4), voters(3)]);
    await assertPvcs(3);
  } finally {
    await writer.stop();
  }
  await writer.verify();
});

test("an operator killed after each step of a scale-up and a scale-down finishes the change", async () => {
  const crashAfter = async (step: string, change: () => Promise<void>, check: () => Promise<boolean>) => {
    const op = await startOperator({ PAXOS_OPERATOR_TEST_CRASH_AFTER: step });
    await change();
    const exit = await op.waitExit(SETTLE_MS);
    assert.equal(exit.signal, "SIGKILL", `the operator killed itself after ${step}`);
    assert.ok(await check(), `the cluster shows ${step} done`);
    log(`operator killed after ${step}`);
  };
  const config = async () => {
    const s = await waitFor("a master", masterStatus, 60_000);
    return configText(s);
  };
  const stsReplicas = async () => (await kube().get(stsPath)).spec.replicas as number;

  // Scale-up 3 -> 4: grow, add the learner, promote.
  await crashAfter(
    "GrowStatefulSet",
    () => setReplicas(4),
    async () => (await stsReplicas()) === 4,
  );
  await crashAfter(
    "AddLearner",
    async () => {},
    async () => (await config()) === `${voters(3)},${GROUP}-3:learner`,
  );
  await crashAfter(
    "PromoteMember",
    async () => {},
    async () => (await config()) === voters(4),
  );
  await startOperator();
  await waitSettled(4, "4 ready voters after the crashes");

  // Scale-down 4 -> 3 with kv-3 the master: hand over, remove, shrink, delete the PVC.
  await operator?.stop();
  const master = await waitFor("a master", masterStatus, 60_000);
  if (master.member !== `${GROUP}-3`) {
    const ip = (await pods()).find((p) => p.metadata.name === master.member)?.status?.podIP;
    const res = await memberFetch(ip ?? "", "/v1/admin/master/transfer", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ to: `${GROUP}-3` }),
    });
    assert.equal(res.status, 200, await res.text());
  }
  await waitFor("kv-3 to be master", async () => (await masterStatus())?.member === `${GROUP}-3`, 60_000);
  await crashAfter(
    "TransferMaster",
    () => setReplicas(3),
    async () => (await masterStatus())?.member !== `${GROUP}-3`,
  );
  await crashAfter(
    "RemoveMember",
    async () => {},
    async () => (await config()) === voters(3),
  );
  await crashAfter(
    "ShrinkStatefulSet",
    async () => {},
    async () => (await stsReplicas()) === 3,
  );
  await crashAfter(
    "DeletePVC",
    async () => {},
    async () => {
      const pvc = await kube().getOrNull(`/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${GROUP}-3`);
      return pvc === null || Boolean(pvc.metadata.deletionTimestamp);
    },
  );
  await startOperator();
  await waitSettled(3, "3 ready voters after the crashes");
  await assertPvcs(3);
});

test("a rolling update of the image: never two members down, the master moved before its pod restarts", async (t) => {
  const before = new Map((await pods()).map((p) => [p.metadata.name ?? "", p.metadata.uid]));
  const writer = new Writer("roll");
  // The master at the moment each old pod's deletion shows, asked as soon as the watch reports it:
  // sampling instead could miss the new master, which the operator waits for and then acts at once.
  const masterAtDeletion = new Map<string, Promise<string | undefined>>();
  const deletions = new Informer(kube(), `/api/v1/namespaces/${NS}/pods`, {
    onChange: (type, pod) => {
      const name = pod?.metadata.name ?? "";
      if (!pod || pod.metadata.uid !== before.get(name) || masterAtDeletion.has(name)) return;
      if (type === "DELETED" || pod.metadata.deletionTimestamp) masterAtDeletion.set(name, masterJustAfter());
    },
  });
  deletions.start();
  await deletions.waitForSync();
  let leastReady = Number.POSITIVE_INFINITY;
  let sampling = true;
  const sampler = (async () => {
    for (let i = 0; sampling && i < 10_000; i++) {
      const current = await pods().catch(() => undefined);
      if (current) leastReady = Math.min(leastReady, current.filter(isReady).length);
      await sleep(200);
    }
  })();
  const image = `${cluster?.images.node.split(":")[0]}:rolled`;
  const progress = sampleProgress(t.signal);
  let seen: { configs: string[]; reasons: Set<string> } = { configs: [], reasons: new Set() };
  try {
    // The first restart also kills the operator; the next one finishes the update.
    const op = await startOperator({ PAXOS_OPERATOR_TEST_CRASH_AFTER: "RestartPod" });
    await kube().patch(groupPath, { spec: { image } }, "merge");
    assert.equal((await op.waitExit(SETTLE_MS)).signal, "SIGKILL");
    await startOperator();
    await waitFor(
      "every member to run the new image",
      async () => {
        const current = await pods();
        return (
          current.length === 3 &&
          current.every(
            (p) =>
              p.spec.containers[0].image === image && before.get(p.metadata.name ?? "") !== p.metadata.uid,
          )
        );
      },
      SETTLE_MS,
      1000,
    );
    await waitSettled(3, "3 ready voters on the new image");
  } finally {
    sampling = false;
    await sampler;
    await deletions.stop();
    await writer.stop();
    seen = await progress.stop();
  }
  await writer.verify();
  const { reasons, configs } = seen;
  assert.ok(reasons.has("RollingUpdate"), `Progressing reasons seen: ${[...reasons]}`);
  assert.deepEqual(configs, [voters(3)], "a rolling update does not change the membership");

  assert.ok(leastReady >= 2, `never fewer than two ready members (least seen: ${leastReady})`);
  for (const name of before.keys()) {
    const master = masterAtDeletion.get(name);
    assert.ok(master, `the deletion of ${name}'s old pod was seen`);
    const named = await master;
    assert.ok(named !== undefined, `a master answered right after ${name}'s old pod was deleted`);
    assert.notEqual(named, name, `${name} was not the master when its pod was deleted`);
  }
});

/**
 * The master a query started within MASTER_QUERY_WINDOW_MS from now finds. Shorter than any
 * election, so a master killed without a handover cannot have been replaced by then: its followers
 * still name it and it no longer answers (undefined), or it still answers as master.
 */
async function masterJustAfter(): Promise<string | undefined> {
  const start = Date.now();
  for (;;) {
    const master = (await masterStatus(SAMPLE_TIMEOUT_MS).catch(() => undefined))?.member;
    if (master !== undefined || Date.now() - start >= MASTER_QUERY_WINDOW_MS) return master;
    await sleep(20);
  }
}

test("scale down to 1 and back to 3 keeps the data", async () => {
  const writer = new Writer("one");
  await sleep(2000);
  await writer.stop();
  await setReplicas(1);
  await waitSettled(1, "a single voter");
  await assertPvcs(1);
  await writer.verify();
  await setReplicas(3);
  await waitSettled(3, "3 ready voters again");
  await assertPvcs(3);
  await writer.verify();
  // The new members hold the data themselves.
  for (const p of await pods()) {
    const key = [...writer.acked.keys()][0] ?? "";
    const res = await memberFetch(p.status?.podIP ?? "", `/v1/kv/${key}?consistency=local`);
    assert.equal(res.status, 200, `${p.metadata.name} has ${key}`);
    await res.body?.cancel();
  }
});

test("a larger storage size goes to the PVCs; a class without expansion shows Degraded and reconciles go on", async () => {
  const degraded = async (want: "True" | "False") =>
    waitFor(
      `Degraded ${want}`,
      async () => {
        const g = await kube().get(groupPath);
        const c = condition(g, "Degraded");
        return g.status?.observedGeneration === g.metadata.generation && c?.status === want ? c : undefined;
      },
      120_000,
      1000,
    );
  await kube().patch(groupPath, { spec: { storage: { size: "128Mi" } } }, "merge");
  // The host-path StorageClass does not allow expansion: the API server refuses the PVC update.
  const c = await degraded("True");
  assert.match(c.message, /cannot grow data-kv-0 to 128Mi/);
  const sts = await kube().get(stsPath);
  assert.equal(
    sts.spec.volumeClaimTemplates[0].spec.resources.requests.storage,
    "64Mi",
    "the template stays",
  );
  await kube().patch(groupPath, { spec: { storage: { size: "64Mi" } } }, "merge");
  await degraded("False");
});

test("a voter whose PVC is lost comes back empty, rejoins without a membership change and holds the data again", async () => {
  const writer = new Writer("lost");
  await sleep(2000);
  const master = await waitFor("a master", masterStatus, 60_000, 500);
  const victim = (await pods()).map((p) => p.metadata.name).find((n) => n !== master.member)!;
  const pvcPath = `/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${victim}`;
  const oldPvc = (await kube().get(pvcPath)).metadata.uid;
  const stepsBefore = await membershipSteps();

  // Kept down while its claim goes away, as a volume lost with its node would be.
  const letBack = await holdPodDown(kube(), NS, victim, 3);
  await kube().delete(pvcPath);
  // The StatefulSet controller makes the claim anew from its template even while the quota keeps
  // the pod out: a new, empty volume.
  await waitFor("the victim's PVC to be replaced", async () => {
    const pvc = await kube().getOrNull(pvcPath);
    return pvc === null || pvc.metadata.uid !== oldPvc;
  });
  const chosenAtLoss = master.instances.chosen;
  await letBack();

  await waitFor(
    `${victim} on a new PVC, caught up and no longer abstaining`,
    async () => {
      const pvc = await kube().getOrNull(pvcPath);
      const pod = (await pods()).find((p) => p.metadata.name === victim);
      if (pvc === null || pvc.metadata.uid === oldPvc || !pod?.status?.podIP) return undefined;
      const res = await memberFetch(pod.status.podIP, "/v1/status").catch(() => undefined);
      const s = res?.ok ? ((await res.json()) as NodeStatus) : undefined;
      return s && s.instances.abstainUntil === null && s.instances.executed >= chosenAtLoss ? s : undefined;
    },
    SETTLE_MS,
    1000,
  );
  await writer.stop();
  // Nothing to undo: the same voters, no step of the operator's.
  await waitSettled(3, "3 ready voters with the victim among them");
  await writer.verify();
  const ip = (await pods()).find((p) => p.metadata.name === victim)?.status?.podIP ?? "";
  for (const [key, value] of [...writer.acked].slice(0, 50)) {
    const res = await memberFetch(ip, `/v1/kv/${key}?consistency=local`);
    assert.equal(res.status, 200, `${victim} holds ${key} itself`);
    assert.equal(await res.text(), value);
  }
  assert.equal(await membershipSteps(), stepsBefore, "no membership step of the operator's was needed");
  // It did start empty and rejoin by the rule: both other voters answered, and it abstained up to
  // at least what the master had chosen when the volume went.
  const line = (await cluster!.containerLog(NS, victim, "paxos-node"))
    .split("\n")
    .find((l) => l.includes("joining with the promised ballot of its other voters"));
  assert.ok(line, `${victim} logged its rejoin`);
  const rejoin = JSON.parse(line) as { abstainUntil: number; answeredBy: string[] };
  assert.ok(rejoin.abstainUntil >= chosenAtLoss, `abstainUntil ${rejoin.abstainUntil} < ${chosenAtLoss}`);
  assert.equal(rejoin.answeredBy.length, 2);
});

/** Events of the operator's membership steps for the group so far (one Event per step). */
async function membershipSteps(): Promise<number> {
  const kinds = new Set(["AddLearner", "PromoteMember", "RemoveMember", "TransferMaster"]);
  const events = await kube().list(`/api/v1/namespaces/${NS}/events`);
  return events.items.filter((e) => e.involvedObject?.name === GROUP && kinds.has(e.reason)).length;
}
