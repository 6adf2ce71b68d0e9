// The membership and rolling-update plan: a table of situations with the one step each calls for,
// then a model of the cluster (StatefulSet controller, Paxos configuration, pods becoming ready)
// driven by the plan alone through scale-ups, scale-downs and rolling updates, with the invariants
// users care about checked after every step.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  type ConfigMember,
  type Plan,
  type PlanInput,
  type PodView,
  planNextStep,
  STALL_AFTER_MS,
  type Step,
} from "../../src/reconcile/plan.js";

const NOW = new Date("2026-01-01T00:00:00Z");
const HASH = "new";

function voter(i: number, lag = 0): ConfigMember {
  return { name: `kv-${i}`, role: "voter", lag };
}
function learner(i: number, lag: number | null = 0): ConfigMember {
  return { name: `kv-${i}`, role: "learner", lag };
}
function pod(i: number, over: Partial<PodView> = {}): PodView {
  return {
    name: `kv-${i}`,
    uid: `uid-${i}`,
    ready: true,
    deleting: false,
    specHash: HASH,
    readySince: NOW,
    ...over,
  };
}
const pvc = (i: number, deleting = false) => ({ name: `data-kv-${i}`, deleting });
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

function input(over: Partial<PlanInput>): PlanInput {
  const size = over.statefulSetReplicas ?? 3;
  return {
    group: "kv",
    replicas: 3,
    statefulSetReplicas: size,
    configuration: range(size).map((i) => voter(i)),
    master: "kv-0",
    pods: range(size).map((i) => pod(i)),
    pvcs: range(size).map((i) => pvc(i)),
    specHash: HASH,
    now: NOW,
    ...over,
  };
}

describe("planNextStep: one step for each situation", () => {
  const cases: [string, Partial<PlanInput>, Step | undefined, string | undefined][] = [
    ["settled: nothing to do", {}, undefined, undefined],
    [
      "no master answers: nothing is known, nothing changes",
      { configuration: undefined, replicas: 5 },
      undefined,
      undefined,
    ],
    [
      "scale-up starts by growing the StatefulSet by one",
      { replicas: 5 },
      { kind: "GrowStatefulSet", replicas: 4, member: "kv-3" },
      "AddingLearner",
    ],
    [
      "the grown ordinal becomes a learner, even before its pod runs",
      {
        replicas: 5,
        statefulSetReplicas: 4,
        configuration: range(3).map((i) => voter(i)),
        pods: range(3).map((i) => pod(i)),
      },
      { kind: "AddLearner", member: "kv-3" },
      "AddingLearner",
    ],
    [
      "a ready, caught-up learner is promoted",
      {
        replicas: 5,
        statefulSetReplicas: 4,
        configuration: [...range(3).map((i) => voter(i)), learner(3, 12)],
      },
      { kind: "PromoteMember", member: "kv-3" },
      "PromotingMember",
    ],
    [
      "a learner far behind waits",
      {
        replicas: 5,
        statefulSetReplicas: 4,
        configuration: [...range(3).map((i) => voter(i)), learner(3, 50_000)],
      },
      undefined,
      "AddingLearner",
    ],
    [
      "a learner whose lag the master does not know waits",
      {
        replicas: 5,
        statefulSetReplicas: 4,
        configuration: [...range(3).map((i) => voter(i)), learner(3, null)],
      },
      undefined,
      "AddingLearner",
    ],
    [
      "no grow while a member is not ready",
      { replicas: 5, pods: [pod(0), pod(1, { ready: false }), pod(2)] },
      undefined,
      "AddingLearner",
    ],
    [
      "no grow onto an old PVC still being deleted",
      { replicas: 4, pvcs: [...range(3).map((i) => pvc(i)), pvc(3, true)] },
      undefined,
      "AddingLearner",
    ],
    [
      "scale-down removes the highest ordinal from the membership first",
      { replicas: 3, statefulSetReplicas: 5 },
      { kind: "RemoveMember", member: "kv-4" },
      "RemovingMember",
    ],
    [
      "no voter is removed while another voter is far behind (one back without its disk, say)",
      {
        replicas: 3,
        statefulSetReplicas: 5,
        configuration: [voter(0), voter(1, 50_000), voter(2), voter(3), voter(4)],
      },
      undefined,
      "RemovingMember",
    ],
    [
      "nor while another voter's pod is not ready",
      {
        replicas: 3,
        statefulSetReplicas: 5,
        pods: [pod(0), pod(1), pod(2, { ready: false }), pod(3), pod(4)],
      },
      undefined,
      "RemovingMember",
    ],
    [
      "a master to be removed hands over first, to the most caught-up ready voter",
      {
        replicas: 3,
        statefulSetReplicas: 5,
        master: "kv-4",
        configuration: [voter(0, 9), voter(1, 2), voter(2, 2), voter(3), voter(4)],
      },
      { kind: "TransferMaster", from: "kv-4", to: "kv-1" },
      "RemovingMember",
    ],
    [
      "then the StatefulSet shrinks past the removed member",
      { replicas: 3, statefulSetReplicas: 5, configuration: range(4).map((i) => voter(i)) },
      { kind: "ShrinkStatefulSet", replicas: 4, member: "kv-4" },
      "RemovingMember",
    ],
    [
      "then the removed member's PVC goes, even while its pod terminates",
      {
        replicas: 3,
        statefulSetReplicas: 4,
        configuration: range(4).map((i) => voter(i)),
        pods: [...range(4).map((i) => pod(i)), pod(4, { deleting: true })],
        pvcs: range(5).map((i) => pvc(i)),
      },
      { kind: "DeletePVC", pvc: "data-kv-4", member: "kv-4" },
      "RemovingMember",
    ],
    [
      "a learner being added when the spec shrinks again is removed",
      { replicas: 3, statefulSetReplicas: 4, configuration: [...range(3).map((i) => voter(i)), learner(3)] },
      { kind: "RemoveMember", member: "kv-3" },
      "RemovingMember",
    ],
    [
      "members of other names are left alone",
      { configuration: [...range(3).map((i) => voter(i)), { name: "manual", role: "voter", lag: 0 }] },
      undefined,
      undefined,
    ],
    [
      "rolling update: a follower first, the highest ordinal",
      { pods: range(3).map((i) => pod(i, { specHash: "old" })) },
      { kind: "RestartPod", pod: "kv-2", uid: "uid-2" },
      "RollingUpdate",
    ],
    [
      "rolling update: the master last, after a handover to an updated voter",
      { master: "kv-1", pods: [pod(0), pod(1, { specHash: "old" }), pod(2)] },
      { kind: "TransferMaster", from: "kv-1", to: "kv-0" },
      "RollingUpdate",
    ],
    [
      "rolling update: the master's pod restarts once it is no longer master",
      { master: "kv-0", pods: [pod(0), pod(1, { specHash: "old" }), pod(2)] },
      { kind: "RestartPod", pod: "kv-1", uid: "uid-1" },
      "RollingUpdate",
    ],
    [
      "rolling update: a single member is restarted (there is no one to hand over to)",
      {
        replicas: 1,
        statefulSetReplicas: 1,
        configuration: [voter(0)],
        pods: [pod(0, { specHash: "old" })],
        pvcs: [pvc(0)],
      },
      { kind: "RestartPod", pod: "kv-0", uid: "uid-0" },
      "RollingUpdate",
    ],
    [
      "rolling update: never a second member down",
      { pods: [pod(0, { specHash: "old" }), pod(1), pod(2, { ready: false })] },
      undefined,
      "RollingUpdate",
    ],
    [
      "rolling update: waits for a member to catch up",
      {
        configuration: [voter(0), voter(1, 5000), voter(2)],
        pods: [pod(0, { specHash: "old" }), pod(1), pod(2)],
      },
      undefined,
      "RollingUpdate",
    ],
    [
      "a pod of the old template being deleted is not restarted again",
      { pods: [pod(0), pod(1), pod(2, { specHash: "old", deleting: true, ready: false })] },
      undefined,
      undefined,
    ],
  ];
  for (const [name, over, step, reason] of cases) {
    test(name, () => {
      const plan = planNextStep(input(over));
      assert.deepEqual(plan.step, step);
      assert.equal(plan.progress?.reason, reason);
    });
  }

  test("growing and shrinking change the size to apply; other steps keep it", () => {
    assert.equal(planNextStep(input({ replicas: 5 })).statefulSetReplicas, 4);
    assert.equal(
      planNextStep(
        input({ replicas: 3, statefulSetReplicas: 5, configuration: range(4).map((i) => voter(i)) }),
      ).statefulSetReplicas,
      4,
    );
    assert.equal(planNextStep(input({ replicas: 3, statefulSetReplicas: 5 })).statefulSetReplicas, 5);
    assert.equal(
      planNextStep(input({ statefulSetReplicas: undefined, replicas: 5, configuration: undefined }))
        .statefulSetReplicas,
      5,
    );
  });

  test("a member not Ready for longer than the stall limit makes a waiting update stalled", () => {
    const old = new Date(NOW.getTime() - STALL_AFTER_MS - 1000);
    const recent = new Date(NOW.getTime() - 1000);
    const stalled = planNextStep(
      input({ pods: [pod(0, { specHash: "old" }), pod(1), pod(2, { ready: false, readySince: old })] }),
    );
    assert.match(stalled.stalled ?? "", /rolling update stopped.*kv-2 has not been Ready for 5 min/);
    const waiting = planNextStep(
      input({ pods: [pod(0, { specHash: "old" }), pod(1), pod(2, { ready: false, readySince: recent })] }),
    );
    assert.equal(waiting.stalled, undefined);
  });

  test("a scale-down waiting on a voter that stays not Ready is stalled", () => {
    const old = new Date(NOW.getTime() - STALL_AFTER_MS - 1000);
    const plan = planNextStep(
      input({
        replicas: 3,
        statefulSetReplicas: 5,
        pods: [pod(0), pod(1, { ready: false, readySince: old }), pod(2), pod(3), pod(4)],
      }),
    );
    assert.equal(plan.step, undefined);
    assert.match(plan.stalled ?? "", /scale-down stopped.*kv-1 has not been Ready for 5 min/);
  });
});

/** The cluster as the plan sees it, with the controllers' and the nodes' reactions to each step. */
class ClusterModel {
  size: number;
  config = new Map<number, ConfigMember["role"]>();
  master = 0;
  pods = new Map<number, { ready: boolean; hash: string; uid: number }>();
  pvcs = new Set<number>();
  nextUid = 1;
  hash = "v1";
  readonly steps: Step[] = [];

  constructor(voters: number) {
    this.size = voters;
    for (const i of range(voters)) {
      this.config.set(i, "voter");
      this.pods.set(i, { ready: true, hash: this.hash, uid: this.nextUid++ });
      this.pvcs.add(i);
    }
  }

  input(replicas: number): PlanInput {
    return {
      group: "kv",
      replicas,
      statefulSetReplicas: this.size,
      configuration: [...this.config].map(([i, role]) => ({ name: `kv-${i}`, role, lag: 0 })),
      master: `kv-${this.master}`,
      pods: [...this.pods].map(([i, p]) => ({
        name: `kv-${i}`,
        uid: `uid-${p.uid}`,
        ready: p.ready,
        deleting: false,
        specHash: p.hash,
        readySince: NOW,
      })),
      pvcs: [...this.pvcs].map((i) => ({ name: `data-kv-${i}`, deleting: false })),
      specHash: this.hash,
      now: NOW,
    };
  }

  readyVoters(): number {
    return [...this.config].filter(([i, role]) => role === "voter" && this.pods.get(i)?.ready).length;
  }

  voters(): number {
    return [...this.config].filter(([, role]) => role === "voter").length;
  }

  apply(plan: Plan): void {
    const step = plan.step;
    assert.ok(step, "a step");
    this.steps.push(step);
    const ord = (name: string) => Number(name.slice("kv-".length));
    // The StatefulSet controller: pods (and PVCs) follow the size.
    if (plan.statefulSetReplicas > this.size) {
      for (let i = this.size; i < plan.statefulSetReplicas; i++) {
        this.pods.set(i, { ready: false, hash: this.hash, uid: this.nextUid++ });
        this.pvcs.add(i);
      }
    }
    if (plan.statefulSetReplicas < this.size) {
      for (let i = plan.statefulSetReplicas; i < this.size; i++) this.pods.delete(i);
    }
    this.size = plan.statefulSetReplicas;
    switch (step.kind) {
      case "AddLearner":
        assert.ok(!this.config.has(ord(step.member)));
        this.config.set(ord(step.member), "learner");
        break;
      case "PromoteMember":
        assert.equal(this.config.get(ord(step.member)), "learner");
        this.config.set(ord(step.member), "voter");
        break;
      case "RemoveMember":
        assert.notEqual(ord(step.member), this.master, "the master is never removed");
        assert.ok(
          this.voters() > 1 || this.config.get(ord(step.member)) === "learner",
          "the last voter stays",
        );
        this.config.delete(ord(step.member));
        break;
      case "TransferMaster":
        assert.equal(this.config.get(ord(step.to)), "voter");
        this.master = ord(step.to);
        break;
      case "DeletePVC":
        assert.ok(!this.pods.has(ord(step.member)), "no PVC deleted under a live pod");
        this.pvcs.delete(ord(step.member));
        break;
      case "RestartPod": {
        const i = ord(step.pod);
        assert.ok(i !== this.master || this.size === 1, "the master's pod restarts only after a handover");
        this.pods.set(i, { ready: false, hash: this.hash, uid: this.nextUid++ });
        break;
      }
      case "GrowStatefulSet":
      case "ShrinkStatefulSet":
        break;
    }
  }

  /** Pods of members start and catch up: one becomes ready per tick. */
  tick(): void {
    for (const [i, p] of this.pods) {
      if (!p.ready && this.config.has(i)) {
        p.ready = true;
        return;
      }
    }
  }

  /** Steps until the plan has nothing left to do, checking the invariants after each one. */
  converge(replicas: number, during: () => void = () => {}): void {
    for (let n = 0; n < 500; n++) {
      const plan = planNextStep(this.input(replicas));
      if (!plan.step) {
        if (!plan.progress && [...this.pods.values()].every((p) => p.ready)) return;
        this.tick();
        continue;
      }
      this.apply(plan);
      during();
    }
    assert.fail(
      `no convergence to ${replicas} after 500 rounds; steps: ${JSON.stringify(this.steps.slice(-10))}`,
    );
  }

  assertSettled(replicas: number): void {
    assert.deepEqual(
      [...this.config].sort(([a], [b]) => a - b),
      range(replicas).map((i) => [i, "voter"]),
    );
    assert.equal(this.size, replicas);
    assert.deepEqual(
      [...this.pvcs].sort((a, b) => a - b),
      range(replicas),
      "PVCs of removed members are gone",
    );
    assert.ok([...this.pods.values()].every((p) => p.ready && p.hash === this.hash));
  }
}

describe("planNextStep drives a model cluster to the spec", () => {
  test("3 -> 5 -> 3 -> 1 -> 3, one member at a time", () => {
    const c = new ClusterModel(3);
    for (const target of [5, 3, 1, 3]) {
      const before = c.steps.length;
      c.converge(target, () => {
        // One change at a time: never two learners, never two members added or removed at once.
        assert.ok([...c.config.values()].filter((r) => r === "learner").length <= 1);
      });
      c.assertSettled(target);
      assert.ok(c.steps.length > before);
    }
    const kinds = c.steps.map((s) => s.kind);
    // 3 -> 5: grow, add, promote twice; 5 -> 3 and 3 -> 1: remove, shrink, delete PVC per member.
    assert.deepEqual(kinds.slice(0, 6), [
      "GrowStatefulSet",
      "AddLearner",
      "PromoteMember",
      "GrowStatefulSet",
      "AddLearner",
      "PromoteMember",
    ]);
    assert.deepEqual(kinds.slice(6, 9), ["RemoveMember", "ShrinkStatefulSet", "DeletePVC"]);
  });

  test("scaling down a group whose master has the highest ordinal hands it over first", () => {
    const c = new ClusterModel(5);
    c.master = 4;
    c.converge(3);
    c.assertSettled(3);
    assert.equal(c.steps[0]?.kind, "TransferMaster");
    assert.ok(c.master < 3);
  });

  test("a rolling update keeps a quorum of ready voters and moves the master before its pod", () => {
    for (const voters of [1, 3, 5]) {
      const c = new ClusterModel(voters);
      c.master = Math.floor(voters / 2);
      c.hash = "v2";
      c.converge(voters, () => {
        const down = voters - c.readyVoters();
        assert.ok(down <= 1, `at most one member down (${down} with ${voters})`);
      });
      c.assertSettled(voters);
      const restarts = c.steps.filter((s) => s.kind === "RestartPod");
      assert.equal(restarts.length, voters, "each member restarted once");
      if (voters > 1) {
        assert.equal(c.steps.filter((s) => s.kind === "TransferMaster").length, 1);
        assert.deepEqual(
          restarts.at(-1),
          { kind: "RestartPod", pod: `kv-${Math.floor(voters / 2)}`, uid: restarts.at(-1)?.uid },
          "the old master last",
        );
      }
    }
  });

  test("scaling while an update is pending finishes the scaling, then updates everyone", () => {
    const c = new ClusterModel(3);
    c.hash = "v2";
    c.converge(5);
    c.assertSettled(5);
  });
});
