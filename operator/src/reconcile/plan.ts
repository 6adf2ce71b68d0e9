// The next membership or rolling-update step of one PaxosGroup, as a pure function of what the
// cluster shows right now: the chosen configuration (from the master's /v1/status), the
// StatefulSet's size, the pods and the PVCs. Nothing is remembered between reconciles, so an
// operator that crashed between two steps finds the half-done change in the cluster and resumes it.
//
// At most one step per reconcile, in this order of priority:
//   1. delete the PVC of a member that was removed and whose ordinal the StatefulSet gave up;
//   2. shrink the StatefulSet when its highest ordinal is no longer a member;
//   3. remove the highest surplus member (handing the master over first);
//   4. promote a wanted learner once it is ready and caught up;
//   5. add the pod of a wanted ordinal as a learner;
//   6. grow the StatefulSet by one when every member is a ready voter;
//   7. restart one outdated pod (rolling update), the master last after a handover, and only when
//      every member is ready and caught up.
// Scale-down therefore runs remove -> shrink -> delete PVC per member, highest ordinal first, and
// scale-up grow -> add learner -> promote per member, lowest ordinal first.

/** A learner is promoted, and a rolling update goes on, only within this many instances of the master. */
export const CAUGHT_UP_LAG = 1000;
/** A member that stays not Ready this long while a step waits on it makes the group Degraded. */
export const STALL_AFTER_MS = 5 * 60_000;

export type MemberRole = "voter" | "learner";

/** A member of the chosen configuration, as the master reports it. */
export interface ConfigMember {
  name: string;
  role: MemberRole;
  /** Instances behind the master; null when the master does not know. */
  lag: number | null;
}

export interface PodView {
  name: string;
  uid: string;
  ready: boolean;
  /** Being deleted (deletionTimestamp set). */
  deleting: boolean;
  /** The spec-hash annotation the pod was created with. */
  specHash: string | undefined;
  /** When the Ready condition last changed, or the pod's creation when it has none yet. */
  readySince: Date | undefined;
}

export interface PvcView {
  name: string;
  deleting: boolean;
}

export interface PlanInput {
  /** The group's name: member `<group>-<n>` is StatefulSet ordinal n, its PVC `data-<group>-<n>`. */
  group: string;
  /** spec.replicas: the voters wanted. */
  replicas: number;
  /** The StatefulSet's spec.replicas; undefined before it exists. */
  statefulSetReplicas: number | undefined;
  /** The chosen configuration; undefined while no master answers (founding, or no quorum). */
  configuration: readonly ConfigMember[] | undefined;
  master: string | undefined;
  pods: readonly PodView[];
  pvcs: readonly PvcView[];
  /** The spec hash of the current pod template. */
  specHash: string;
  now: Date;
}

export type Step =
  | { kind: "DeletePVC"; pvc: string; member: string }
  | { kind: "ShrinkStatefulSet"; replicas: number; member: string }
  | { kind: "TransferMaster"; from: string; to: string }
  | { kind: "RemoveMember"; member: string }
  | { kind: "PromoteMember"; member: string }
  | { kind: "AddLearner"; member: string }
  | { kind: "GrowStatefulSet"; replicas: number; member: string }
  | { kind: "RestartPod"; pod: string; uid: string };

export type StepKind = Step["kind"];
export const STEP_KINDS: readonly StepKind[] = [
  "DeletePVC",
  "ShrinkStatefulSet",
  "TransferMaster",
  "RemoveMember",
  "PromoteMember",
  "AddLearner",
  "GrowStatefulSet",
  "RestartPod",
];

/** The Progressing condition's reason while a change is under way. */
export type ProgressReason = "AddingLearner" | "PromotingMember" | "RemovingMember" | "RollingUpdate";

export interface Plan {
  /** The StatefulSet size to apply in this reconcile (the step's new size when it grows or shrinks). */
  statefulSetReplicas: number;
  step?: Step;
  /** Set while the group is not yet what the spec asks for. */
  progress?: { reason: ProgressReason; message: string };
  /** Set when the change waits on a member that has not been Ready for too long: Degraded. */
  stalled?: string;
}

/** The ordinal of member `<group>-<n>`; undefined for any other name. */
export function ordinalOf(group: string, name: string): number | undefined {
  const prefix = `${group}-`;
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  return /^(0|[1-9]\d*)$/.test(rest) ? Number(rest) : undefined;
}

export function pvcName(group: string, ordinal: number): string {
  return `data-${group}-${ordinal}`;
}

export function planNextStep(input: PlanInput): Plan {
  const { group, replicas: wanted, now } = input;
  const size = input.statefulSetReplicas ?? wanted;
  const config = input.configuration;
  // Founding, or no master: nothing about the membership is known, so nothing changes.
  if (config === undefined) return { statefulSetReplicas: size };

  const member = (i: number) => `${group}-${i}`;
  const inConfig = new Map<number, ConfigMember>();
  for (const m of config) {
    const i = ordinalOf(group, m.name);
    // Members of other names were added by hand; the operator neither counts nor touches them.
    if (i !== undefined) inConfig.set(i, m);
  }
  const podAt = new Map<number, PodView>();
  for (const p of input.pods) {
    const i = ordinalOf(group, p.name);
    if (i !== undefined) podAt.set(i, p);
  }
  const readyPod = (i: number): boolean => {
    const p = podAt.get(i);
    return p?.ready === true && !p.deleting;
  };
  const caughtUp = (m: ConfigMember) => m.name === input.master || (m.lag !== null && m.lag <= CAUGHT_UP_LAG);
  const stall = (i: number, what: string): string | undefined => {
    const since = podAt.get(i)?.readySince;
    if (readyPod(i) || since === undefined || now.getTime() - since.getTime() < STALL_AFTER_MS)
      return undefined;
    return `${what}: ${member(i)} has not been Ready for ${Math.round((now.getTime() - since.getTime()) / 60_000)} min`;
  };
  const wait = (reason: ProgressReason, message: string, stalled?: string): Plan => ({
    statefulSetReplicas: size,
    progress: { reason, message },
    ...(stalled ? { stalled } : {}),
  });

  // 1. A removed member's PVC, once its ordinal is outside the StatefulSet: a later scale-up must
  // start that ordinal empty, never on stale data.
  for (const pvc of input.pvcs) {
    const i = pvc.name.startsWith("data-") ? ordinalOf(group, pvc.name.slice("data-".length)) : undefined;
    if (i === undefined || i < size || pvc.deleting || inConfig.has(i)) continue;
    const pod = podAt.get(i);
    if (pod !== undefined && !pod.deleting) continue;
    return {
      statefulSetReplicas: size,
      step: { kind: "DeletePVC", pvc: pvc.name, member: member(i) },
      progress: { reason: "RemovingMember", message: `deleting ${pvc.name} of removed member ${member(i)}` },
    };
  }

  // 2. The highest ordinal left the configuration: its pod goes.
  if (size > wanted && !inConfig.has(size - 1)) {
    return {
      statefulSetReplicas: size - 1,
      step: { kind: "ShrinkStatefulSet", replicas: size - 1, member: member(size - 1) },
      progress: {
        reason: "RemovingMember",
        message: `shrinking the StatefulSet to ${size - 1}: ${member(size - 1)} is no longer a member`,
      },
    };
  }

  // 3. Surplus members, highest ordinal first; a master hands over before it is removed.
  const surplus = [...inConfig].filter(([i]) => i >= wanted).sort(([a], [b]) => b - a);
  const first = surplus[0];
  if (first) {
    const [, m] = first;
    if (m.name === input.master) {
      const heir = [...inConfig]
        .filter(([i, c]) => i < wanted && c.role === "voter" && readyPod(i) && caughtUp(c))
        .sort(([a, x], [b, y]) => (x.lag ?? 0) - (y.lag ?? 0) || a - b)[0];
      if (!heir) {
        return wait(
          "RemovingMember",
          `${m.name} is the master; waiting for a ready, caught-up voter to take over`,
        );
      }
      return {
        statefulSetReplicas: size,
        step: { kind: "TransferMaster", from: m.name, to: heir[1].name },
        progress: {
          reason: "RemovingMember",
          message: `handing the master over from ${m.name} to ${heir[1].name}`,
        },
      };
    }
    // Fewer voters leave less room for one that is down or still catching up (one that came back
    // without its disk promises nothing until it has): it must be back first.
    const behind =
      m.role === "voter"
        ? [...inConfig].find(
            ([i, c]) => c.role === "voter" && c.name !== m.name && (!readyPod(i) || !caughtUp(c)),
          )
        : undefined;
    if (behind) {
      const [i, c] = behind;
      return wait(
        "RemovingMember",
        `waiting for ${c.name} to be ready and caught up (lag ${c.lag ?? "unknown"}) before removing ${m.name}`,
        stall(i, "scale-down stopped rather than shrink the group around a voter that is not back"),
      );
    }
    return {
      statefulSetReplicas: size,
      step: { kind: "RemoveMember", member: m.name },
      progress: { reason: "RemovingMember", message: `removing ${m.name} (${wanted} voters wanted)` },
    };
  }

  // 4. A wanted learner: promoted once ready and caught up. One at a time.
  const learner = [...inConfig].filter(([, c]) => c.role === "learner").sort(([a], [b]) => a - b)[0];
  if (learner) {
    const [i, m] = learner;
    if (readyPod(i) && caughtUp(m)) {
      return {
        statefulSetReplicas: size,
        step: { kind: "PromoteMember", member: m.name },
        progress: { reason: "PromotingMember", message: `promoting ${m.name} to voter` },
      };
    }
    return wait(
      "AddingLearner",
      `waiting for learner ${m.name} to be ready and caught up (lag ${m.lag ?? "unknown"})`,
      stall(i, "adding a member"),
    );
  }

  // 5. A wanted ordinal inside the StatefulSet that is not a member yet (the pod a grow created).
  for (let i = 0; i < Math.min(size, wanted); i++) {
    if (inConfig.has(i)) continue;
    return {
      statefulSetReplicas: size,
      step: { kind: "AddLearner", member: member(i) },
      progress: { reason: "AddingLearner", message: `adding ${member(i)} as a learner` },
    };
  }

  // 6. Grow by one once every member is a ready voter and the new ordinal has no old PVC left.
  if (size < wanted) {
    const notReady = [...inConfig.keys()].filter((i) => !readyPod(i)).sort((a, b) => a - b);
    const next = notReady[0];
    if (next !== undefined) {
      return wait(
        "AddingLearner",
        `waiting for ${member(next)} to be ready before adding ${member(size)}`,
        stall(next, "adding a member"),
      );
    }
    if (input.pvcs.some((p) => p.name === pvcName(group, size))) {
      return wait(
        "AddingLearner",
        `waiting for the old ${pvcName(group, size)} to be deleted before adding ${member(size)}`,
      );
    }
    return {
      statefulSetReplicas: size + 1,
      step: { kind: "GrowStatefulSet", replicas: size + 1, member: member(size) },
      progress: {
        reason: "AddingLearner",
        message: `growing the StatefulSet to ${size + 1} for ${member(size)}`,
      },
    };
  }

  // 7. Rolling update: one outdated pod at a time, only while every member is ready and caught up.
  const outdated = [...podAt]
    .filter(([i, p]) => i < size && !p.deleting && p.specHash !== input.specHash)
    .sort(([a], [b]) => b - a);
  if (outdated.length === 0) return { statefulSetReplicas: size };
  for (let i = 0; i < size; i++) {
    if (!readyPod(i)) {
      return wait(
        "RollingUpdate",
        `${outdated.length} member(s) to update; waiting for ${member(i)} to be ready`,
        stall(i, "rolling update stopped rather than take a second member down"),
      );
    }
  }
  const lagging = config.find((c) => ordinalOf(group, c.name) !== undefined && !caughtUp(c));
  if (lagging) {
    return wait(
      "RollingUpdate",
      `${outdated.length} member(s) to update; waiting for ${lagging.name} to catch up`,
    );
  }
  const [i, pod] = outdated.find(([, p]) => p.name !== input.master) ?? outdated[0]!;
  if (pod.name === input.master && size > 1) {
    const heir = [...inConfig]
      .filter(([j, c]) => j !== i && c.role === "voter" && podAt.get(j)?.specHash === input.specHash)
      .sort(([a, x], [b, y]) => (x.lag ?? 0) - (y.lag ?? 0) || a - b)[0];
    if (heir) {
      return {
        statefulSetReplicas: size,
        step: { kind: "TransferMaster", from: pod.name, to: heir[1].name },
        progress: {
          reason: "RollingUpdate",
          message: `handing the master over from ${pod.name} to ${heir[1].name} before updating it`,
        },
      };
    }
  }
  return {
    statefulSetReplicas: size,
    step: { kind: "RestartPod", pod: pod.name, uid: pod.uid },
    progress: {
      reason: "RollingUpdate",
      message: `updating ${member(i)} (${outdated.length} member(s) to update)`,
    },
  };
}
