// The log cleaner on Kubernetes, with the operator installed by its chart and running in a pod:
// the seed's scenario (a member kept down while the others' cleaners delete the log past it comes
// back, loads a checkpoint from a peer, exits 75, is replaced by the operator and rejoins with the
// same data), cleaner windows (open now: every member `running` until the window's end; later:
// `paused`; status.cleaner and the CleanerWindowOpen condition), an unknown IANA time zone
// (Degraded, the cleaner stays closed), and maxLogSize (paused cleaners clean anyway; one Warning
// Event per member and episode).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { Informer, KubeClient, type KubeObject, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log, startCluster, stopCluster } from "./helpers.js";
import {
  condition,
  GroupDriver,
  holdPodDown,
  type InstalledOperator,
  installCrd,
  installOperator,
  type NodeStatus,
  restrictedNamespace,
  tail,
} from "./paxos-group.js";

const OPERATOR_NS = "paxos-system";
const NS = "cleaner";
const STORAGE = { size: "64Mi", storageClassName: "standard" };
/** The CRD's minimum. */
const HOLD_COUNT = 300;

let cluster: LocalCluster | undefined;
let client: KubeClient | undefined;
let operator: InstalledOperator | undefined;
let tmp = "";

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "log-cleaner-e2e-"));
  cluster = await startCluster();
  client = await KubeClient.fromKubeconfig(cluster.kubeconfig);
  await installCrd(cluster);
  operator = await installOperator(cluster, client, { namespace: OPERATOR_NS, tmpDir: tmp });
  await restrictedNamespace(client, NS);
});

after(async () => {
  client?.close();
  await stopCluster(cluster);
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function driver(name: string): GroupDriver {
  const c = client;
  const op = operator;
  if (!c || !op) throw new Error("no cluster");
  return new GroupDriver(c, NS, name, async () => `operator log:\n${tail(await op.logs())}`);
}

interface Exit75 {
  uid: string;
  message: string;
}

/** A terminated state with exit code 75 in a pod's status, current or last. */
function exit75(pod: KubeObject): Exit75 | undefined {
  for (const s of pod.status?.containerStatuses ?? []) {
    for (const t of [s.state?.terminated, s.lastState?.terminated]) {
      if (t?.exitCode === 75) return { uid: pod.metadata.uid ?? "", message: String(t.message ?? "") };
    }
  }
  return undefined;
}

test("the seed's scenario: a member kept down while the others clean their logs past it loads a checkpoint, exits 75, is replaced and rejoins with the same data", async () => {
  const c = client;
  if (!c || !cluster) throw new Error("no cluster");
  const g = driver("seed");
  await g.apply({ replicas: 3, storage: STORAGE, logCleaner: { holdCount: HOLD_COUNT } });
  const available = await g.waitAvailable("the group to become Available");
  assert.equal(condition(available, "CleanerWindowOpen")?.reason, "NoWindows");

  const members = [0, 1, 2].map((i) => g.member(i));
  for (const m of members) {
    const s = await g.nodeStatus(m);
    assert.deepEqual(
      s.cleaner,
      { state: "running", until: null, holdCount: HOLD_COUNT, lastForcedAt: null },
      `${m} cleaner`,
    );
  }
  const early: [string, string][] = Array.from({ length: 20 }, (_, i) => [`early-${i}`, `value-${i}`]);
  await g.putAll([members[0] as string], early, 4);

  // The victim is not the master, so the group keeps its master while the victim is away.
  const master = available.status.master as string;
  const victim = members.find((m) => m !== master) as string;
  const live = members.filter((m) => m !== victim);
  const victimPod = await c.get(g.podPath(victim));
  const pvcPath = `/api/v1/namespaces/${NS}/persistentvolumeclaims/data-${victim}`;
  const pvcUid = (await c.get(pvcPath)).metadata.uid;
  log(`master ${master}, victim ${victim}`);

  const letBack = await holdPodDown(c, NS, victim, 3);
  // At least what the victim had executed when it went away: the live members have chosen it all.
  const downAt = Math.max(
    ...(await Promise.all(live.map(async (m) => (await g.nodeStatus(m)).instances.chosen))),
  );

  // Commands are batched, several per instance: write in rounds until the log has moved well
  // past the victim plus holdCount (bounded: 4000 keys at most).
  const entries: [string, string][] = [];
  const started = Date.now();
  let chosen = downAt;
  for (let round = 0; round < 8 && chosen < downAt + HOLD_COUNT + 300; round++) {
    const batch = Array.from({ length: 500 }, (_, i): [string, string] => {
      const n = round * 500 + i;
      return [`k-${n}`, `v-${n}-${"x".repeat(64)}`];
    });
    await g.putAll(live, batch, 8);
    entries.push(...batch);
    chosen = Math.min(
      ...(await Promise.all(live.map(async (m) => (await g.nodeStatus(m)).instances.chosen))),
    );
  }
  log(
    `${entries.length} writes in ${Date.now() - started} ms while ${victim} is down: instances ${downAt} -> ${chosen}`,
  );
  assert.ok(chosen >= downAt + HOLD_COUNT + 300, `the log moved past the victim plus holdCount (${chosen})`);
  // Not through the pod proxy: the API server drops the Authorization header of every request it
  // authenticated, so the member answers 401 whatever token the caller sends.
  const viaProxy = await c
    .requestText("POST", g.proxyPath(live[0] as string, "/v1/admin/checkpoint"), {
      headers: { authorization: `Bearer ${await g.token()}` },
    })
    .then(
      () => "accepted",
      (e: unknown) => String(e),
    );
  assert.match(viaProxy, /401 .*admin calls need the header Authorization/);
  const answers = await g.admin(
    cluster.images.node,
    live.map((m) => ({ member: m, method: "POST", path: "/v1/admin/checkpoint" })),
  );
  for (const [i, a] of answers.entries()) {
    assert.equal(a.status, 200, `checkpoint on ${live[i]}: ${a.body}`);
    const checkpoint = (JSON.parse(a.body) as { checkpoint: number }).checkpoint;
    assert.ok(
      checkpoint > downAt + HOLD_COUNT + 1,
      `the checkpoint of ${live[i]} (${checkpoint}) lets its cleaner delete past the victim (${downAt})`,
    );
  }
  // The cleaners (running, no windows) delete below checkpoint - holdCount: the log the victim
  // would learn from (its executed + 1 onwards) is gone on both live members.
  const cleaned = await waitFor(
    "the live members' cleaners to delete the log past the victim",
    async () => {
      const statuses = await Promise.all(live.map((m) => g.nodeStatus(m)));
      return statuses.every((s) => s.instances.minKept > downAt + 1) ? statuses : undefined;
    },
    120_000,
    1000,
  );
  log(`minKept ${cleaned.map((s) => s.instances.minKept).join(", ")}; victim down at <= ${downAt}`);
  assert.equal(
    await c.getOrNull(g.podPath(victim)),
    null,
    "the quota kept the victim's pod from coming back",
  );

  // Every status the victim's pods go through, so the exit 75 is seen however briefly it shows.
  const exits = new Map<string, Exit75>();
  let instance = -1;
  const watch = new Informer(c, `/api/v1/namespaces/${NS}/pods`, {
    query: { fieldSelector: `metadata.name=${victim}` },
    onChange: (_type, pod) => {
      const e = pod && exit75(pod);
      if (e && !exits.has(e.uid)) exits.set(e.uid, e);
    },
  });
  watch.start();
  try {
    await watch.waitForSync();
    await letBack();

    const loaded = await waitFor(
      `${victim} to load a checkpoint and exit 75`,
      () => [...exits.values()][0],
      300_000,
      1000,
    ).catch(async (e: unknown) => {
      const logText = await cluster?.containerLog(NS, victim, "paxos-node").catch(() => "");
      throw new Error(`${(e as Error).message}\n${victim} log:\n${logText?.slice(-6000)}`);
    });
    log(`${victim} (pod ${loaded.uid}) exited 75: ${loaded.message}`);
    assert.notEqual(loaded.uid, victimPod.metadata.uid, "a new pod of the victim loaded the checkpoint");
    assert.match(loaded.message, new RegExp(`^checkpoint-loaded instance=\\d+ from=(${live.join("|")})\\b`));
    instance = Number(/instance=(\d+)/.exec(loaded.message)?.[1]);
    assert.ok(instance > downAt + 1, `the loaded checkpoint (${instance}) is past where the victim stopped`);

    const events = await g.waitFor("the CheckpointLoaded Event", async () => {
      const list = await g.events("CheckpointLoaded");
      return list.length > 0 ? list : undefined;
    });
    assert.match(events[0]?.message ?? "", new RegExp(`^${victim} loaded a checkpoint`));
    await g.waitFor("status.checkpointLoads to count it", (grp) => grp.status?.checkpointLoads >= 1);

    // The operator deleted the pod that exited 75; the StatefulSet made a new one on the same PVC.
    const replaced = await waitFor(
      `${victim}'s pod to be replaced`,
      async () => {
        const p = await c.getOrNull(g.podPath(victim));
        return p && p.metadata.uid !== loaded.uid && !p.metadata.deletionTimestamp ? p : undefined;
      },
      180_000,
      1000,
    );
    assert.notEqual(replaced.metadata.uid, victimPod.metadata.uid);
    assert.equal((await c.get(pvcPath)).metadata.uid, pvcUid, "the same PVC");
  } finally {
    await watch.stop();
  }

  await g.waitAvailable("the group to be Available with the victim back");
  // The victim's own state (consistency=local) has the data written before and while it was away.
  const last = entries[entries.length - 1] as [string, string];
  assert.equal(await g.get(victim, last[0], { local: true, timeoutMs: 180_000 }), last[1]);
  const sample = [...early, ...entries.filter((_, i) => i % 50 === 0)];
  for (const [key, value] of sample) assert.equal(await g.get(victim, key, { local: true }), value, key);
  const status: NodeStatus = await g.nodeStatus(victim);
  assert.ok(
    status.instances.checkpoint >= instance,
    "the victim runs from the loaded checkpoint or a later one",
  );
  assert.equal(status.cleaner.holdCount, HOLD_COUNT);
  // One checkpoint load, recorded and counted once.
  assert.equal((await g.events("CheckpointLoaded")).length, 1);
  assert.equal((await g.read()).status.checkpointLoads, 1);

  await g.delete();
});

/** A daily cron expression that fires at the wall-clock minute of `t` in `timeZone`. */
function dailyAt(t: number, timeZone: string): string {
  const parts = new Intl.DateTimeFormat("en-GB", {
    timeZone,
    hour: "numeric",
    minute: "numeric",
    hourCycle: "h23",
  }).formatToParts(new Date(t));
  const field = (type: string) => Number(parts.find((p) => p.type === type)?.value);
  return `${field("minute")} ${field("hour")} * * *`;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const floorMinute = (t: number) => Math.floor(t / MINUTE) * MINUTE;
const iso = (t: number) => new Date(t).toISOString();
/** +05:30 all year (no daylight saving time): fire times a day apart are 24 h apart. */
const OPEN_ZONE = "Asia/Kolkata";

/** A window that opened two minutes ago (in OPEN_ZONE) and stays open for an hour: [fire, end). */
function openWindow(): { window: Record<string, string>; fire: number; end: number } {
  const fire = floorMinute(Date.now() - 2 * MINUTE);
  return {
    window: { schedule: dailyAt(fire, OPEN_ZONE), duration: "1h", timeZone: OPEN_ZONE },
    fire,
    end: fire + HOUR,
  };
}

async function waitMembersCleaner(
  g: GroupDriver,
  what: string,
  ok: (cleaner: NodeStatus["cleaner"]) => boolean,
): Promise<void> {
  await waitFor(
    what,
    async () => {
      const statuses = await Promise.all([0, 1, 2].map((i) => g.nodeStatus(g.member(i))));
      return statuses.every((s) => ok(s.cleaner));
    },
    120_000,
    1000,
  );
}

test("cleaner windows: one open now makes every member run its cleaner until the window's end; one later pauses them; status.cleaner follows", async () => {
  const g = driver("windows");
  const open = openWindow();
  await g.apply({ replicas: 3, storage: STORAGE, logCleaner: { windows: [open.window] } });
  await g.waitAvailable("the group to become Available");
  const opened = await g.waitFor(
    "status.cleaner to show the open window",
    (grp) =>
      grp.status?.observedGeneration === grp.metadata.generation && grp.status?.cleaner?.open === true && grp,
  );
  // The next window is tomorrow's, at the same time.
  assert.deepEqual(opened.status.cleaner, {
    open: true,
    nextWindowStart: iso(open.fire + 24 * HOUR),
    nextWindowEnd: iso(open.end + 24 * HOUR),
  });
  const openCondition = condition(opened, "CleanerWindowOpen");
  assert.equal(openCondition?.status, "True");
  assert.equal(openCondition?.reason, "InsideWindow");
  assert.ok(openCondition?.message.includes(iso(open.end)), openCondition?.message);
  assert.equal(condition(opened, "Degraded")?.status, "False");
  await waitMembersCleaner(
    g,
    `every member's cleaner to run until ${iso(open.end)}`,
    (c) => c.state === "running" && c.until !== null && Date.parse(c.until) === open.end,
  );

  // Twelve hours from now, in UTC (the default zone): closed until then.
  const later = floorMinute(Date.now() + 12 * HOUR);
  const applied = await g.apply({
    replicas: 3,
    storage: STORAGE,
    logCleaner: { windows: [{ schedule: dailyAt(later, "UTC"), duration: "30m" }] },
  });
  const closed = await g.waitFor(
    "status.cleaner to show the window closed",
    (grp) =>
      grp.status?.observedGeneration === applied.metadata.generation &&
      grp.status?.cleaner?.open === false &&
      grp,
  );
  assert.deepEqual(closed.status.cleaner, {
    open: false,
    nextWindowStart: iso(later),
    nextWindowEnd: iso(later + 30 * MINUTE),
  });
  const closedCondition = condition(closed, "CleanerWindowOpen");
  assert.equal(closedCondition?.status, "False");
  assert.equal(closedCondition?.reason, "OutsideWindow");
  assert.ok(closedCondition?.message.includes(iso(later)), closedCondition?.message);
  assert.equal(condition(closed, "Degraded")?.status, "False");
  await waitMembersCleaner(
    g,
    "every member's cleaner to be paused",
    (c) => c.state === "paused" && c.until === null,
  );
  assert.equal(condition(await g.read(), "Available")?.status, "True");
});

test("an unknown IANA time zone makes the group Degraded with a message naming it, and the cleaner stays closed", async () => {
  const g = driver("windows");
  // Open first, so that the members' switch to paused shows the bad zone closes the cleaner.
  const open = openWindow();
  await g.apply({ replicas: 3, storage: STORAGE, logCleaner: { windows: [open.window] } });
  await g.waitAvailable("the group to be Available");
  await waitMembersCleaner(g, "every member's cleaner to run", (c) => c.state === "running");

  const applied = await g.apply({
    replicas: 3,
    storage: STORAGE,
    logCleaner: { windows: [{ ...open.window, timeZone: "Mars/Olympus" }] },
  });
  const degraded = await g.waitFor(
    "the group to be Degraded",
    (grp) =>
      grp.status?.observedGeneration === applied.metadata.generation &&
      condition(grp, "Degraded")?.status === "True" &&
      grp,
  );
  const message = condition(degraded, "Degraded")?.message ?? "";
  assert.match(message, /spec\.logCleaner\.windows\[0\]\.timeZone/);
  assert.match(message, /"Mars\/Olympus"/);
  assert.equal(condition(degraded, "CleanerWindowOpen")?.status, "False");
  assert.equal(degraded.status.cleaner.open, false);
  await waitMembersCleaner(g, "every member's cleaner to be paused", (c) => c.state === "paused");
  // The group itself still serves.
  assert.equal(condition(await g.read(), "Available")?.status, "True");
  await g.put(g.member(0), "still", "serving");
  assert.equal(await g.get(g.member(1), "still"), "serving");
});

test("maxLogSize: paused cleaners whose log passed it clean anyway, and the operator records one LogOverMaxSize Warning per member and episode", async () => {
  const c = client;
  if (!c) throw new Error("no cluster");
  const g = driver("valve");
  const later = floorMinute(Date.now() + 12 * HOUR);
  await g.apply({
    replicas: 3,
    storage: { ...STORAGE, size: "256Mi" },
    logCleaner: {
      holdCount: HOLD_COUNT,
      windows: [{ schedule: dailyAt(later, "UTC"), duration: "30m" }],
      maxLogSize: "1Mi",
    },
  });
  await g.waitAvailable("the group to become Available");
  await waitMembersCleaner(
    g,
    "every member's cleaner to be paused",
    (s) => s.state === "paused" && !s.lastForcedAt,
  );

  // RocksDB counts only flushed tables in a size, and compresses them: random values, well past its
  // 4 MiB write buffer, so that the log is over the limit on disk. Bounded: 200 writes of 32 KiB.
  const entries = Array.from({ length: 200 }, (_, i): [string, string] => [
    `big-${i}`,
    randomBytes(24 * 1024).toString("base64"),
  ]);
  const members = [0, 1, 2].map((i) => g.member(i));
  await g.putAll(members, entries, 8);
  const forced = await waitFor(
    "every member to report cleaning forced by maxLogSize",
    async () => {
      const statuses = await Promise.all(members.map((m) => g.nodeStatus(m)));
      return statuses.every((s) => s.cleaner.lastForcedAt) ? statuses : undefined;
    },
    120_000,
    1000,
  );
  for (const s of forced) assert.equal(s.cleaner.state, "paused", `${s.member} stays paused`);

  // The operator polls paused groups with a maxLogSize every 30 s.
  const events = await waitFor(
    "a LogOverMaxSize Warning for every member",
    async () => {
      const list = await g.events("LogOverMaxSize");
      return members.every((m) => list.some((e) => e.message?.startsWith(`${m}:`))) ? list : undefined;
    },
    120_000,
    2000,
  );
  assert.equal(events.length, members.length, events.map((e) => e.message).join("\n"));
  for (const e of events) {
    assert.equal(e.type, "Warning");
    assert.match(e.message ?? "", /spec\.logCleaner\.maxLogSize/);
  }

  // Looking again finds the Events recorded: no further POST, not even one the API server refuses.
  const refusedBefore = await refusedEventPosts(c);
  const settledAt = Date.now();
  await waitFor(
    "two more polls of the group by the operator",
    async () => Date.now() - settledAt > 65_000,
    90_000,
    5000,
  );
  assert.equal(await refusedEventPosts(c), refusedBefore, "Event POSTs refused with 409 meanwhile");
  assert.equal((await g.events("LogOverMaxSize")).length, members.length);
});

/** Event creations the API server refused as already existing, from its own metrics. */
async function refusedEventPosts(c: KubeClient): Promise<number> {
  const text = await c.requestText("GET", "/metrics");
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith("apiserver_request_total{")) continue;
    if (line.includes('resource="events"') && line.includes('verb="POST"') && line.includes('code="409"'))
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}
