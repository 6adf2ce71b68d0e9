// The PaxosGroup's status as a pure function of what the reconciler observed, plus the helpers that
// keep a settled group from being written again: conditions keep their lastTransitionTime while
// their status stays, and the merge patch is computed only when the status really changed.
import {
  type CleanerStatus,
  CONDITION_AVAILABLE,
  CONDITION_CLEANER_WINDOW_OPEN,
  CONDITION_DEGRADED,
  CONDITION_PROGRESSING,
  type Condition,
  type ConditionStatus,
  DEFAULT_HOLD_COUNT,
  DEFAULT_REPLICAS,
  DEFAULT_STORAGE_SIZE,
  type MemberStatus,
  type PaxosGroup,
  type PaxosGroupStatus,
} from "../api/paxos-group.js";
import type { CleanerWindowState } from "./cleaner-windows.js";
import type { PaxosGroupLike } from "./desired.js";
import type { ConfigMember, MemberRole } from "./plan.js";

/** The part of a node's `GET /v1/status` answer the operator reads. */
export interface NodeStatusView {
  member: string;
  role: "master" | "follower" | "candidate" | "learner";
  master: string | null;
  /** The chosen configuration; `lag` is known on the master only. */
  members?: { name: string; role: MemberRole; lag: number | null }[];
  instances: { chosen: number; checkpoint: number; minKept: number };
  /** `lastForcedAt`: start of the latest episode in which maxLogSize made the paused cleaner clean. */
  cleaner: { state: "running" | "paused"; until: string | null; lastForcedAt?: string | null };
}

/** One member pod as observed in this reconcile. */
export interface ObservedMember {
  name: string;
  /** The pod's Ready condition. */
  ready: boolean;
  /** The node's own status; absent when the pod is not ready or did not answer. */
  node?: NodeStatusView;
}

export interface StatusInput {
  group: PaxosGroup;
  /** From the StatefulSet's status. */
  readyReplicas: number;
  members: readonly ObservedMember[];
  window: CleanerWindowState;
  /** Problems worth a Degraded condition (invalid windows, failed cleaner updates, ...). */
  problems: readonly string[];
  checkpointLoads: number;
  /** The membership change or rolling update under way, from the plan. */
  progress?: { reason: string; message: string };
  /** The chosen configuration, when a master answered: gives each member's role. */
  configuration?: readonly ConfigMember[];
  now: Date;
}

/** Fills the defaults the CRD applies on write, for objects stored before a default existed. */
export function withDefaults(g: PaxosGroup): PaxosGroupLike {
  const { name, namespace, uid, generation } = g.metadata;
  if (!name || !namespace || !uid) {
    throw new Error(`PaxosGroup ${namespace ?? "?"}/${name ?? "?"} lacks a name, namespace or uid`);
  }
  const spec = g.spec ?? {};
  const size = spec.storage?.size ?? DEFAULT_STORAGE_SIZE;
  return {
    metadata: { name, namespace, uid, ...(generation !== undefined ? { generation } : {}) },
    spec: {
      replicas: spec.replicas ?? DEFAULT_REPLICAS,
      ...(spec.image ? { image: spec.image } : {}),
      storage: {
        size: String(size),
        ...(spec.storage?.storageClassName ? { storageClassName: spec.storage.storageClassName } : {}),
      },
      logCleaner: {
        holdCount: spec.logCleaner?.holdCount ?? DEFAULT_HOLD_COUNT,
        ...(spec.logCleaner?.maxLogSize !== undefined ? { maxLogSize: spec.logCleaner.maxLogSize } : {}),
      },
      ...(spec.resources ? { resources: spec.resources as PaxosGroupLike["spec"]["resources"] } : {}),
      ...(spec.podTemplate ? { podTemplate: spec.podTemplate as PaxosGroupLike["spec"]["podTemplate"] } : {}),
    },
  };
}

/** A majority of `replicas` voters. */
export function quorum(replicas: number): number {
  return Math.floor(replicas / 2) + 1;
}

/** The master most ready members agree on (ties: the smaller name); undefined when none reports one. */
export function agreedMaster(members: readonly ObservedMember[]): string | undefined {
  const votes = new Map<string, number>();
  for (const m of members) {
    const master = m.node?.master;
    if (m.ready && master) votes.set(master, (votes.get(master) ?? 0) + 1);
  }
  let best: string | undefined;
  let bestVotes = 0;
  for (const [name, n] of [...votes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (n > bestVotes) {
      best = name;
      bestVotes = n;
    }
  }
  return best;
}

function condition(
  type: string,
  status: ConditionStatus,
  reason: string,
  message: string,
  generation: number | undefined,
  now: Date,
): Condition {
  return {
    type,
    status,
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
    lastTransitionTime: now.toISOString().replace(/\.\d{3}Z$/, "Z"),
    reason,
    message,
  };
}

/**
 * The status to write. Conditions carry `now` as lastTransitionTime; `keepTransitionTimes` then
 * puts back the previous time of every condition whose status did not change.
 */
export function computeStatus(input: StatusInput): PaxosGroupStatus {
  const { group, members, window, problems, now } = input;
  const generation = group.metadata.generation;
  const replicas = group.spec?.replicas ?? DEFAULT_REPLICAS;
  const master = agreedMaster(members);
  const ready = input.readyReplicas;
  const need = quorum(replicas);

  const conditions: Condition[] = [];
  if (master && ready >= need) {
    conditions.push(
      condition(
        CONDITION_AVAILABLE,
        "True",
        "QuorumReady",
        `${ready} of ${replicas} members ready, master ${master}`,
        generation,
        now,
      ),
    );
  } else {
    const why = master
      ? `${ready} of ${replicas} members ready, ${need} needed`
      : `no master known; ${ready} of ${replicas} members ready`;
    conditions.push(
      condition(CONDITION_AVAILABLE, "False", master ? "NoQuorum" : "NoMaster", why, generation, now),
    );
  }
  conditions.push(
    input.progress
      ? condition(
          CONDITION_PROGRESSING,
          "True",
          input.progress.reason,
          input.progress.message,
          generation,
          now,
        )
      : ready < replicas
        ? condition(
            CONDITION_PROGRESSING,
            "True",
            "MembersStarting",
            `${replicas - ready} of ${replicas} members not ready yet`,
            generation,
            now,
          )
        : condition(CONDITION_PROGRESSING, "False", "Settled", "all members ready", generation, now),
  );
  conditions.push(
    problems.length > 0
      ? condition(CONDITION_DEGRADED, "True", "ReconcileProblems", problems.join("; "), generation, now)
      : condition(CONDITION_DEGRADED, "False", "NoProblems", "no problems found", generation, now),
  );
  const windows = group.spec?.logCleaner?.windows ?? [];
  conditions.push(
    windows.length === 0
      ? condition(
          CONDITION_CLEANER_WINDOW_OPEN,
          "True",
          "NoWindows",
          "no cleaner windows configured: the cleaner may always run",
          generation,
          now,
        )
      : window.open
        ? condition(
            CONDITION_CLEANER_WINDOW_OPEN,
            "True",
            "InsideWindow",
            `cleaner window open until ${window.until?.toISOString() ?? "unknown"}`,
            generation,
            now,
          )
        : condition(
            CONDITION_CLEANER_WINDOW_OPEN,
            "False",
            "OutsideWindow",
            window.nextWindowStart
              ? `next cleaner window opens at ${window.nextWindowStart.toISOString()}`
              : "no cleaner window is coming",
            generation,
            now,
          ),
  );

  const memberStatuses: MemberStatus[] = members.map((m) => ({
    name: m.name,
    ...roleOf(m, input.configuration),
    ready: m.ready,
    ...(m.node
      ? {
          chosen: m.node.instances.chosen,
          checkpoint: m.node.instances.checkpoint,
          minKept: m.node.instances.minKept,
        }
      : {}),
  }));

  const cleaner: CleanerStatus = {
    open: window.open,
    ...(window.nextWindowStart ? { nextWindowStart: window.nextWindowStart.toISOString() } : {}),
    ...(window.nextWindowEnd ? { nextWindowEnd: window.nextWindowEnd.toISOString() } : {}),
  };

  return {
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
    conditions,
    readyReplicas: ready,
    ...(master ? { master } : {}),
    members: memberStatuses,
    cleaner,
    checkpointLoads: input.checkpointLoads,
  };
}

/** A member's role: from the chosen configuration when known, else from the node's own status. */
function roleOf(
  m: ObservedMember,
  configuration: readonly ConfigMember[] | undefined,
): { role?: MemberRole } {
  const chosen = configuration?.find((c) => c.name === m.name);
  if (chosen) return { role: chosen.role };
  if (configuration) return {};
  return m.node ? { role: m.node.role === "learner" ? "learner" : "voter" } : {};
}

/** Keeps the previous lastTransitionTime of each condition whose status is unchanged. */
export function keepTransitionTimes(
  previous: readonly Condition[] | undefined,
  next: Condition[],
): Condition[] {
  return next.map((c) => {
    const old = previous?.find((p) => p.type === c.type);
    return old && old.status === c.status ? { ...c, lastTransitionTime: old.lastTransitionTime } : c;
  });
}

/** JSON with object keys sorted: equal values give equal text whatever the key order. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)))
      : v,
  );
}

/**
 * A JSON merge patch (RFC 7386) that turns `from` into `to`: members gone from `to` become null,
 * arrays and scalars are replaced whole. Undefined when nothing differs.
 */
export function mergePatch(from: unknown, to: unknown): unknown {
  const isObject = (v: unknown): v is Record<string, unknown> =>
    v !== null && typeof v === "object" && !Array.isArray(v);
  if (!isObject(from) || !isObject(to)) return stableJson(from) === stableJson(to) ? undefined : to;
  const patch: Record<string, unknown> = {};
  for (const key of Object.keys(from)) {
    if (!(key in to) || to[key] === undefined) patch[key] = null;
  }
  for (const [key, value] of Object.entries(to)) {
    if (value === undefined) continue;
    const sub = key in from ? mergePatch(from[key], value) : value;
    if (sub !== undefined) patch[key] = sub;
  }
  return Object.keys(patch).length > 0 ? patch : undefined;
}

/** The cleaner setting a member should have: the body of `PUT /v1/admin/cleaner`. */
export interface CleanerCommand {
  state: "running" | "paused";
  until?: string;
}

export function desiredCleaner(window: CleanerWindowState): CleanerCommand {
  if (!window.open) return { state: "paused" };
  return window.until ? { state: "running", until: window.until.toISOString() } : { state: "running" };
}

/** True when a member's reported cleaner differs from the command (instants compared, not text). */
export function cleanerNeedsUpdate(
  current: NodeStatusView["cleaner"] | undefined,
  want: CleanerCommand,
): boolean {
  if (!current) return true;
  if (current.state !== want.state) return true;
  if (want.state === "paused") return false;
  const have = current.until ? Date.parse(current.until) : null;
  const need = want.until ? Date.parse(want.until) : null;
  return have !== need;
}
