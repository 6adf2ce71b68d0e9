// One PaxosGroup's reconcile, level-triggered and idempotent: read the group, make sure the token
// Secret exists, server-side apply the desired objects, replace members that loaded a checkpoint
// (exit code 75), put every ready member's cleaner in the state the windows ask for, and write the
// status only when it changed. Every step reads the current state, so running it twice in a row
// changes nothing the second time.
import { randomBytes } from "node:crypto";
import { API_VERSION, KIND, type PaxosGroup, PLURAL } from "../api/paxos-group.js";
import type { Logger } from "../controller/logger.js";
import type { ReconcileResult } from "../controller/manager.js";
import {
  ApiError,
  isConflict,
  isNotFound,
  type KubeList,
  type KubeObject,
  type KubeRest,
} from "../controller/rest.js";
import { cleanerWindowState } from "./cleaner-windows.js";
import {
  CONTAINER_NAME,
  desiredClientService,
  desiredHeadlessService,
  desiredPdb,
  desiredSecret,
  desiredStatefulSet,
  HTTP_PORT,
  type PaxosGroupLike,
  selectorLabels,
  TOKEN_KEY,
  tokenSecretName,
} from "./desired.js";
import {
  type CleanerCommand,
  cleanerNeedsUpdate,
  computeStatus,
  desiredCleaner,
  keepTransitionTimes,
  mergePatch,
  type NodeStatusView,
  type ObservedMember,
  withDefaults,
} from "./status.js";

export const FIELD_MANAGER = "paxos-operator";
/** Exit code of a node that loaded a checkpoint from a peer and wants a fresh start. */
export const EXIT_CHECKPOINT_LOADED = 75;

/** How a reconcile reaches the members' HTTP API; tests may substitute it. */
export interface MemberApi {
  status(podIP: string): Promise<NodeStatusView>;
  setCleaner(podIP: string, token: string, command: CleanerCommand): Promise<void>;
}

export interface ReconcilerOptions {
  rest: KubeRest;
  defaultImage: string;
  logger: Logger;
  members?: MemberApi;
  now?: () => Date;
  /** Re-check a group at least this often while it is not Available (default 10 s). */
  unsettledResyncMs?: number;
  /** ... and while it is (default 5 min): member status changes do not show up as pod events. */
  settledResyncMs?: number;
}

const MEMBER_TIMEOUT_MS = 3000;

async function memberRequest(url: string, init: RequestInit): Promise<string> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(MEMBER_TIMEOUT_MS) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${init.method ?? "GET"} ${url}: ${res.status} ${text.slice(0, 300)}`);
  return text;
}

/** The members' HTTP API on their pod IPs (reachable from the operator's network). */
export const httpMemberApi: MemberApi = {
  async status(podIP) {
    return JSON.parse(await memberRequest(`http://${podIP}:${HTTP_PORT}/v1/status`, {})) as NodeStatusView;
  },
  async setCleaner(podIP, token, command) {
    await memberRequest(`http://${podIP}:${HTTP_PORT}/v1/admin/cleaner`, {
      method: "PUT",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(command),
    });
  },
};

interface ContainerState {
  waiting?: { reason?: string };
  running?: object;
  terminated?: { exitCode?: number };
}

interface Pod extends KubeObject {
  status?: {
    podIP?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: {
      name: string;
      restartCount?: number;
      state?: ContainerState;
      lastState?: ContainerState;
    }[];
  };
}

function isReady(pod: Pod): boolean {
  return pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;
}

/**
 * A pod whose node exited with 75 and is not running again: waiting (CrashLoopBackOff) after it,
 * or terminated with it right now. Pods being deleted are left to finish.
 */
export function loadedCheckpoint(pod: Pod): boolean {
  if (pod.metadata.deletionTimestamp) return false;
  const c = pod.status?.containerStatuses?.find((s) => s.name === CONTAINER_NAME);
  if (!c) return false;
  if (c.state?.terminated?.exitCode === EXIT_CHECKPOINT_LOADED) return true;
  return c.lastState?.terminated?.exitCode === EXIT_CHECKPOINT_LOADED && c.state?.waiting !== undefined;
}

function ordinalOf(name: string): number {
  const m = /-(\d+)$/.exec(name);
  return m ? Number(m[1]) : Number.POSITIVE_INFINITY;
}

export class PaxosGroupReconciler {
  private readonly rest: KubeRest;
  private readonly log: Logger;
  private readonly members: MemberApi;
  private readonly now: () => Date;

  constructor(private readonly opts: ReconcilerOptions) {
    this.rest = opts.rest;
    this.log = opts.logger;
    this.members = opts.members ?? httpMemberApi;
    this.now = opts.now ?? (() => new Date());
  }

  /** The Manager's reconcile function for keys "namespace/name". */
  readonly reconcile = async (key: string): Promise<ReconcileResult | undefined> => {
    const slash = key.indexOf("/");
    if (slash <= 0) throw new Error(`reconcile: key "${key}" is not namespace/name`);
    const namespace = key.slice(0, slash);
    const name = key.slice(slash + 1);
    let group: PaxosGroup;
    try {
      group = await this.rest.get<PaxosGroup>(this.groupPath(namespace, name));
    } catch (e) {
      // Deleted: owner references let the garbage collector remove what we created.
      if (isNotFound(e)) return undefined;
      throw e;
    }
    if (group.metadata.deletionTimestamp) return undefined;
    return this.reconcileGroup(group);
  };

  private groupPath(namespace: string, name: string): string {
    return `/apis/${API_VERSION}/namespaces/${encodeURIComponent(namespace)}/${PLURAL}/${encodeURIComponent(name)}`;
  }

  private async reconcileGroup(group: PaxosGroup): Promise<ReconcileResult> {
    const g = withDefaults(group);
    const ns = encodeURIComponent(g.metadata.namespace);
    const token = await this.ensureToken(g);

    await this.apply(
      `/api/v1/namespaces/${ns}/services/${desiredHeadlessService(g).metadata?.name}`,
      desiredHeadlessService(g),
    );
    await this.apply(
      `/api/v1/namespaces/${ns}/services/${desiredClientService(g).metadata?.name}`,
      desiredClientService(g),
    );
    const sts = desiredStatefulSet(g, { defaultImage: this.opts.defaultImage });
    const appliedSts = await this.apply(
      `/apis/apps/v1/namespaces/${ns}/statefulsets/${sts.metadata?.name}`,
      sts,
    );
    const pdb = desiredPdb(g);
    await this.apply(`/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${pdb.metadata?.name}`, pdb);

    const selector = Object.entries(selectorLabels(g))
      .map(([k, v]) => `${k}=${v}`)
      .join(",");
    const pods = (
      await this.rest.get<KubeList<Pod>>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: selector })
    ).items;

    let checkpointLoads = group.status?.checkpointLoads ?? 0;
    for (const pod of pods.filter(loadedCheckpoint)) {
      checkpointLoads = await this.replaceMember(group, pod, checkpointLoads);
    }

    const now = this.now();
    const window = cleanerWindowState(group.spec?.logCleaner?.windows, now);
    const problems = window.errors.map((e) => `cleaner window: ${e}`);
    const want = desiredCleaner(window);

    const observed: ObservedMember[] = [];
    const live = pods
      .filter((p) => !p.metadata.deletionTimestamp && !loadedCheckpoint(p))
      .sort((a, b) => ordinalOf(a.metadata.name ?? "") - ordinalOf(b.metadata.name ?? ""));
    for (const pod of live) {
      const name = pod.metadata.name ?? "";
      const ready = isReady(pod);
      const ip = pod.status?.podIP;
      if (!ready || !ip) {
        observed.push({ name, ready });
        continue;
      }
      let node: NodeStatusView;
      try {
        node = await this.members.status(ip);
      } catch (e) {
        this.log.warn({ pod: name, err: errorText(e) }, "member status unavailable");
        observed.push({ name, ready });
        continue;
      }
      observed.push({ name, ready, node });
      if (!cleanerNeedsUpdate(node.cleaner, want)) continue;
      try {
        await this.members.setCleaner(ip, token, want);
        this.log.info({ pod: name, ...want }, "member cleaner updated");
        await this.event(group, "Normal", "CleanerUpdated", `${name}: cleaner ${describeCleaner(want)}`);
      } catch (e) {
        problems.push(`cleaner update of ${name} failed: ${errorText(e)}`);
      }
    }

    const readyReplicas = Number(appliedSts.status?.readyReplicas ?? 0);
    const next = computeStatus({
      group,
      readyReplicas,
      members: observed,
      window,
      problems,
      checkpointLoads,
      now,
    });
    next.conditions = keepTransitionTimes(group.status?.conditions, next.conditions ?? []);
    const patch = mergePatch(group.status ?? {}, next);
    if (patch !== undefined) {
      await this.rest.patch(
        `${this.groupPath(g.metadata.namespace, g.metadata.name)}/status`,
        { status: patch },
        "merge",
      );
      this.log.debug({ group: g.metadata.name }, "status updated");
    }

    const available = next.conditions.some((c) => c.type === "Available" && c.status === "True");
    let requeue = available
      ? (this.opts.settledResyncMs ?? 300_000)
      : (this.opts.unsettledResyncMs ?? 10_000);
    if (window.nextBoundary) {
      // A little past the boundary, so that the evaluation there sees the new state.
      requeue = Math.min(requeue, Math.max(0, window.nextBoundary.getTime() - now.getTime()) + 500);
    }
    return { requeueAfterMs: requeue };
  }

  /** The peer/admin token: read from its Secret, or generated once when the Secret does not exist. */
  private async ensureToken(g: PaxosGroupLike): Promise<string> {
    const path = `/api/v1/namespaces/${encodeURIComponent(g.metadata.namespace)}/secrets`;
    const name = tokenSecretName(g);
    const read = async (): Promise<string | undefined> => {
      try {
        const secret = await this.rest.get(`${path}/${name}`);
        const data = secret.data?.[TOKEN_KEY] as string | undefined;
        if (!data) throw new Error(`Secret ${g.metadata.namespace}/${name} has no key "${TOKEN_KEY}"`);
        return Buffer.from(data, "base64").toString("utf8");
      } catch (e) {
        if (isNotFound(e)) return undefined;
        throw e;
      }
    };
    const existing = await read();
    if (existing !== undefined) return existing;
    const token = randomBytes(32).toString("hex");
    try {
      // Create, not apply: of two racing writers only one may pick the token.
      await this.rest.create(path, desiredSecret(g, token));
      await this.event(g, "Normal", "TokenCreated", `created Secret ${name} with a new peer token`);
      return token;
    } catch (e) {
      if (!isConflict(e) && !(e instanceof ApiError && e.reason === "AlreadyExists")) throw e;
      const raced = await read();
      if (raced === undefined) throw new Error(`Secret ${g.metadata.namespace}/${name} exists and does not`);
      return raced;
    }
  }

  private apply(path: string, body: unknown): Promise<KubeObject> {
    return this.rest.patch(path, body, "apply", { fieldManager: FIELD_MANAGER, force: true });
  }

  /**
   * Records the checkpoint load once per pod incarnation (the Event's name says which), counts it
   * in the status, then deletes the pod; the StatefulSet recreates it on the same PVC. Returns the
   * new count.
   */
  private async replaceMember(group: PaxosGroup, pod: Pod, count: number): Promise<number> {
    const podName = pod.metadata.name ?? "";
    const restarts = pod.status?.containerStatuses?.find((s) => s.name === CONTAINER_NAME)?.restartCount ?? 0;
    const eventName = `${group.metadata.name}.checkpoint-loaded.${pod.metadata.uid}.${restarts}`;
    let next = count;
    const recorded = await this.event(
      group,
      "Normal",
      "CheckpointLoaded",
      `${podName} loaded a checkpoint from a peer (exit code ${EXIT_CHECKPOINT_LOADED}); replacing its pod, its PVC stays`,
      eventName,
    );
    if (recorded) {
      next = count + 1;
      const ns = group.metadata.namespace ?? "";
      await this.rest.patch(
        `${this.groupPath(ns, group.metadata.name ?? "")}/status`,
        { status: { checkpointLoads: next } },
        "merge",
      );
    }
    try {
      await this.rest.request(
        "DELETE",
        `/api/v1/namespaces/${encodeURIComponent(pod.metadata.namespace ?? "")}/pods/${encodeURIComponent(podName)}`,
        {
          body: { apiVersion: "v1", kind: "DeleteOptions", preconditions: { uid: pod.metadata.uid } },
        },
      );
      this.log.info({ pod: podName, checkpointLoads: next }, "member loaded a checkpoint: pod deleted");
    } catch (e) {
      if (!isNotFound(e) && !isConflict(e)) throw e;
    }
    return next;
  }

  /**
   * Creates a core/v1 Event about the group. With `name`, an Event of that name already present
   * means it was recorded before: returns false then.
   */
  private async event(
    group: PaxosGroup | PaxosGroupLike,
    type: "Normal" | "Warning",
    reason: string,
    message: string,
    name?: string,
  ): Promise<boolean> {
    const ns = group.metadata.namespace ?? "";
    const now = this.now();
    const time = now.toISOString().replace(/\.\d{3}Z$/, "Z");
    const body = {
      apiVersion: "v1",
      kind: "Event",
      metadata: name ? { name, namespace: ns } : { generateName: `${group.metadata.name}.`, namespace: ns },
      involvedObject: {
        apiVersion: API_VERSION,
        kind: KIND,
        name: group.metadata.name,
        namespace: ns,
        uid: group.metadata.uid,
      },
      type,
      reason,
      message,
      count: 1,
      firstTimestamp: time,
      lastTimestamp: time,
      source: { component: FIELD_MANAGER },
      reportingComponent: FIELD_MANAGER,
    };
    try {
      await this.rest.create(`/api/v1/namespaces/${encodeURIComponent(ns)}/events`, body);
      return true;
    } catch (e) {
      if (name && isConflict(e)) return false;
      // Without a name, Events are informative: a failure must not fail the reconcile.
      if (name) throw e;
      this.log.warn({ reason, err: errorText(e) }, "could not record an Event");
      return true;
    }
  }
}

function describeCleaner(c: CleanerCommand): string {
  return c.state === "running" ? `running${c.until ? ` until ${c.until}` : ""}` : "paused";
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
