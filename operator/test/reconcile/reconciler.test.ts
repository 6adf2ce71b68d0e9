// The pure parts of the reconcile: status and conditions, transition times, the status merge
// patch, the cleaner command per member, and which pods count as having loaded a checkpoint.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { PaxosGroup } from "../../src/api/paxos-group.js";
import type { CleanerWindowState } from "../../src/reconcile/cleaner-windows.js";
import { loadedCheckpoint } from "../../src/reconcile/reconciler.js";
import {
  agreedMaster,
  cleanerNeedsUpdate,
  computeStatus,
  desiredCleaner,
  keepTransitionTimes,
  mergePatch,
  type NodeStatusView,
  type ObservedMember,
  withDefaults,
} from "../../src/reconcile/status.js";

const NOW = new Date("2025-03-01T10:00:00.000Z");

function group(spec: PaxosGroup["spec"] = { replicas: 3 }): PaxosGroup {
  return {
    apiVersion: "paxos.dev/v1alpha1",
    kind: "PaxosGroup",
    metadata: { name: "kv", namespace: "default", uid: "u-1", generation: 4 },
    spec,
  };
}

const alwaysOpen: CleanerWindowState = {
  open: true,
  until: null,
  nextWindowStart: null,
  nextWindowEnd: null,
  nextBoundary: null,
  errors: [],
};

function node(
  member: string,
  master: string | null,
  role: NodeStatusView["role"] = "follower",
): NodeStatusView {
  return {
    member,
    role,
    master,
    instances: { chosen: 10, checkpoint: 5, minKept: 1 },
    cleaner: { state: "running", until: null },
  };
}

const readyMember = (name: string, master: string | null): ObservedMember => ({
  name,
  ready: true,
  node: node(name, master, name === master ? "master" : "follower"),
});

function cond(status: ReturnType<typeof computeStatus>, type: string) {
  const c = status.conditions?.find((x) => x.type === type);
  assert.ok(c, `condition ${type} present`);
  return c;
}

test("three ready members with a master: Available, not Progressing, not Degraded", () => {
  const s = computeStatus({
    group: group(),
    readyReplicas: 3,
    members: ["kv-0", "kv-1", "kv-2"].map((n) => readyMember(n, "kv-1")),
    window: alwaysOpen,
    problems: [],
    checkpointLoads: 2,
    now: NOW,
  });
  assert.equal(s.observedGeneration, 4);
  assert.equal(s.readyReplicas, 3);
  assert.equal(s.master, "kv-1");
  assert.equal(s.checkpointLoads, 2);
  assert.deepEqual(s.cleaner, { open: true });
  assert.equal(cond(s, "Available").status, "True");
  assert.equal(cond(s, "Available").observedGeneration, 4);
  assert.equal(cond(s, "Available").lastTransitionTime, "2025-03-01T10:00:00Z");
  assert.equal(cond(s, "Progressing").status, "False");
  assert.equal(cond(s, "Degraded").status, "False");
  assert.equal(cond(s, "CleanerWindowOpen").status, "True");
  assert.equal(cond(s, "CleanerWindowOpen").reason, "NoWindows");
  assert.deepEqual(s.members?.[1], {
    name: "kv-1",
    role: "voter",
    ready: true,
    chosen: 10,
    checkpoint: 5,
    minKept: 1,
  });
});

test("a majority without a master, or a master without a majority, is not Available", () => {
  const noMaster = computeStatus({
    group: group(),
    readyReplicas: 2,
    members: [readyMember("kv-0", null), readyMember("kv-1", null), { name: "kv-2", ready: false }],
    window: alwaysOpen,
    problems: [],
    checkpointLoads: 0,
    now: NOW,
  });
  assert.equal(cond(noMaster, "Available").status, "False");
  assert.equal(cond(noMaster, "Available").reason, "NoMaster");
  assert.equal(cond(noMaster, "Progressing").status, "True");
  assert.equal(noMaster.master, undefined);
  assert.deepEqual(noMaster.members?.[2], { name: "kv-2", ready: false });

  const minority = computeStatus({
    group: group({ replicas: 5 }),
    readyReplicas: 2,
    members: [readyMember("kv-0", "kv-0"), readyMember("kv-1", "kv-0")],
    window: alwaysOpen,
    problems: [],
    checkpointLoads: 0,
    now: NOW,
  });
  assert.equal(cond(minority, "Available").status, "False");
  assert.equal(cond(minority, "Available").reason, "NoQuorum");
  assert.match(cond(minority, "Available").message, /2 of 5 members ready, 3 needed/);
});

test("problems make the group Degraded; a closed window shows in the condition and status.cleaner", () => {
  const closed: CleanerWindowState = {
    open: false,
    until: null,
    nextWindowStart: new Date("2025-03-02T01:00:00Z"),
    nextWindowEnd: new Date("2025-03-02T03:00:00Z"),
    nextBoundary: new Date("2025-03-02T01:00:00Z"),
    errors: [],
  };
  const s = computeStatus({
    group: group({ replicas: 1, logCleaner: { windows: [{ schedule: "0 2 * * *", duration: "2h" }] } }),
    readyReplicas: 1,
    members: [readyMember("kv-0", "kv-0")],
    window: closed,
    problems: ['cleaner window: unknown time zone "Mars/Olympus"'],
    checkpointLoads: 0,
    now: NOW,
  });
  assert.equal(cond(s, "Degraded").status, "True");
  assert.match(cond(s, "Degraded").message, /Mars\/Olympus/);
  assert.equal(cond(s, "CleanerWindowOpen").status, "False");
  assert.match(cond(s, "CleanerWindowOpen").message, /2025-03-02T01:00:00.000Z/);
  assert.deepEqual(s.cleaner, {
    open: false,
    nextWindowStart: "2025-03-02T01:00:00.000Z",
    nextWindowEnd: "2025-03-02T03:00:00.000Z",
  });
  assert.equal(cond(s, "Available").status, "True");
});

test("the master is the one most ready members name", () => {
  assert.equal(agreedMaster([readyMember("a", "b"), readyMember("b", "b"), readyMember("c", "c")]), "b");
  assert.equal(agreedMaster([{ name: "a", ready: false, node: node("a", "a") }]), undefined);
  assert.equal(agreedMaster([]), undefined);
});

test("an unchanged condition keeps its transition time, so a settled status patches nothing", () => {
  const input = {
    group: group(),
    readyReplicas: 3,
    members: ["kv-0", "kv-1", "kv-2"].map((n) => readyMember(n, "kv-0")),
    window: alwaysOpen,
    problems: [],
    checkpointLoads: 0,
  };
  const first = computeStatus({ ...input, now: NOW });
  const later = computeStatus({ ...input, now: new Date(NOW.getTime() + 3_600_000) });
  later.conditions = keepTransitionTimes(first.conditions, later.conditions ?? []);
  assert.equal(mergePatch(first, later), undefined);

  const degraded = computeStatus({ ...input, problems: ["boom"], now: new Date(NOW.getTime() + 60_000) });
  degraded.conditions = keepTransitionTimes(first.conditions, degraded.conditions ?? []);
  assert.equal(cond(degraded, "Degraded").lastTransitionTime, "2025-03-01T10:01:00Z");
  assert.equal(cond(degraded, "Available").lastTransitionTime, "2025-03-01T10:00:00Z");
  const patch = mergePatch(first, degraded) as { conditions?: unknown };
  assert.ok(patch?.conditions, "conditions change as a whole");
});

test("mergePatch: removed members become null, arrays are replaced, equal values give nothing", () => {
  assert.deepEqual(mergePatch({ master: "kv-0", readyReplicas: 3 }, { readyReplicas: 2 }), {
    master: null,
    readyReplicas: 2,
  });
  assert.deepEqual(
    mergePatch({ cleaner: { open: false, nextWindowStart: "x" } }, { cleaner: { open: true } }),
    { cleaner: { open: true, nextWindowStart: null } },
  );
  assert.deepEqual(mergePatch({ members: [{ name: "a" }] }, { members: [{ name: "a" }, { name: "b" }] }), {
    members: [{ name: "a" }, { name: "b" }],
  });
  assert.equal(mergePatch({ a: { b: 1, c: [1] } }, { a: { c: [1], b: 1 } }), undefined);
});

test("cleaner commands: running until the window end, running without end, paused", () => {
  const until = new Date("2025-03-01T12:00:00Z");
  assert.deepEqual(desiredCleaner({ ...alwaysOpen, until }), {
    state: "running",
    until: "2025-03-01T12:00:00.000Z",
  });
  assert.deepEqual(desiredCleaner(alwaysOpen), { state: "running" });
  assert.deepEqual(desiredCleaner({ ...alwaysOpen, open: false }), { state: "paused" });

  const want = { state: "running" as const, until: "2025-03-01T12:00:00.000Z" };
  assert.equal(cleanerNeedsUpdate({ state: "running", until: "2025-03-01T12:00:00Z" }, want), false);
  assert.equal(cleanerNeedsUpdate({ state: "running", until: null }, want), true);
  assert.equal(cleanerNeedsUpdate({ state: "paused", until: null }, want), true);
  assert.equal(cleanerNeedsUpdate({ state: "paused", until: null }, { state: "paused" }), false);
  assert.equal(cleanerNeedsUpdate({ state: "running", until: null }, { state: "running" }), false);
  assert.equal(cleanerNeedsUpdate(undefined, { state: "paused" }), true);
});

test("withDefaults fills what the CRD defaults", () => {
  const g = withDefaults(group({}));
  assert.equal(g.spec.replicas, 3);
  assert.equal(g.spec.storage.size, "1Gi");
  assert.equal(g.spec.logCleaner.holdCount, 100000);
  assert.throws(
    () => withDefaults({ ...group(), metadata: { name: "kv" } }),
    /lacks a name, namespace or uid/,
  );
});

test("a pod counts as having loaded a checkpoint when its node last terminated with exit code 75", () => {
  const pod = (state: object, lastState: object, deleting = false) => ({
    metadata: { name: "kv-1", ...(deleting ? { deletionTimestamp: "2025-01-01T00:00:00Z" } : {}) },
    status: { containerStatuses: [{ name: "paxos-node", state, lastState }] },
  });
  const exited75 = { terminated: { exitCode: 75 } };
  assert.equal(loadedCheckpoint(pod({ waiting: { reason: "CrashLoopBackOff" } }, exited75)), true);
  assert.equal(loadedCheckpoint(pod(exited75, {})), true);
  assert.equal(
    loadedCheckpoint(pod({ running: {} }, exited75)),
    true,
    "restarted at once, as a kubelet does first",
  );
  assert.equal(loadedCheckpoint(pod({ running: {} }, {})), false);
  assert.equal(loadedCheckpoint(pod({ waiting: {} }, { terminated: { exitCode: 1 } })), false);
  assert.equal(loadedCheckpoint(pod(exited75, {}, true)), false, "already being deleted");
});
