// One PaxosGroup's reconcile, level-triggered and idempotent: read the group, make sure the token
// Secret exists, replace members that loaded a checkpoint (exit code 75), ask every ready member
// for its status, let the plan (plan.ts) pick the next membership or rolling-update step from what
// the cluster shows, server-side apply the desired objects with the StatefulSet at the plan's size,
// take that one step, put every member's cleaner in the state the windows ask for, and write the
// status only when it changed. Every step reads the current state, so running it twice in a row
// changes nothing the second time, and a restarted operator picks up where the last one stopped.
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
  peerAddress,
  SPEC_HASH_ANNOTATION,
  selectorLabels,
  statefulSetName,
  TOKEN_KEY,
  tokenSecretName,
} from "./desired.js";
import { ordinalOf, type PodView, planNextStep, type Step } from "./plan.js";
import {
  agreedMaster,
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
import { type ClaimView, planStorage, type StorageSpec } from "./storage.js";

export const FIELD_MANAGER = "paxos-operator";
/** Exit code of a node that loaded a checkpoint from a peer and wants a fresh start. */
export const EXIT_CHECKPOINT_LOADED = 75;

/** How a reconcile reaches the members' HTTP API; tests may substitute it. */
export interface MemberApi {
  status(podIP: string): Promise<NodeStatusView>;
  setCleaner(podIP: string, token: string, command: CleanerCommand): Promise<void>;
  /** A membership admin call on the master (DESIGN.md admin API); rejects with MemberApiError. */
  admin(podIP: string, token: string, method: "POST" | "DELETE", path: string, body?: unknown): Promise<void>;
}

/** A member answered an HTTP error: `code` is the `error` of its JSON body when it has one. */
export class MemberApiError extends Error {
  override readonly name = "MemberApiError";
  constructor(
    readonly status: number,
    readonly code: string | undefined,
    message: string,
  ) {
    super(message);
  }
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
  /** Called after each plan step succeeded: the test-only crash hook of main.ts. */
  afterStep?: (step: Step) => void;
}

/** The next step follows soon after one succeeded... */
const STEP_REQUEUE_MS = 1000;
/** ... and a waiting change is looked at again often (a learner catching up, a pod starting). */
const WAIT_REQUEUE_MS = 3000;

/** How soon a member's cleaning forced by maxLogSize outside the windows is reported, at worst. */
const FORCED_CLEANING_POLL_MS = 30_000;
/** Named Events remembered as recorded (see PaxosGroupReconciler.recordedEvents). */
const RECORDED_EVENTS_KEPT = 4096;

const MEMBER_TIMEOUT_MS = 3000;
const ADMIN_TIMEOUT_MS = 30_000;

async function memberRequest(url: string, init: RequestInit, timeoutMs = MEMBER_TIMEOUT_MS): Promise<string> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  if (!res.ok) {
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { error?: string }).error;
    } catch {
      code = undefined;
    }
    throw new MemberApiError(
      res.status,
      code,
      `${init.method ?? "GET"} ${url}: ${res.status} ${text.slice(0, 300)}`,
    );
  }
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
  async admin(podIP, token, method, path, body) {
    // A change is answered once it is in force, which takes a few rounds of the log.
    await memberRequest(
      `http://${podIP}:${HTTP_PORT}${path}`,
      {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      },
      ADMIN_TIMEOUT_MS,
    );
  },
};

interface ContainerTermination {
  exitCode?: number;
  finishedAt?: string;
  containerID?: string;
}

interface ContainerState {
  waiting?: { reason?: string };
  running?: object;
  terminated?: ContainerTermination;
}

interface Pod extends KubeObject {
  status?: {
    podIP?: string;
    conditions?: { type: string; status: string; lastTransitionTime?: string }[];
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
 * The exit-75 termination of a pod's node: its current state, or the last one when the container
 * was restarted already (a kubelet restarts at once after a first exit, so the pod may be running
 * again). Pods being deleted are left to finish.
 */
function checkpointExit(pod: Pod): ContainerTermination | undefined {
  if (pod.metadata.deletionTimestamp) return undefined;
  const c = pod.status?.containerStatuses?.find((s) => s.name === CONTAINER_NAME);
  for (const t of [c?.state?.terminated, c?.lastState?.terminated]) {
    if (t?.exitCode === EXIT_CHECKPOINT_LOADED) return t;
  }
  return undefined;
}

/** A pod whose node last terminated with exit code 75: the operator replaces it (DESIGN.md). */
export function loadedCheckpoint(pod: Pod): boolean {
  return checkpointExit(pod) !== undefined;
}

/** The size and class the StatefulSet's claim template was made with; undefined before it exists. */
function claimTemplateStorage(sts: KubeObject | undefined): StorageSpec | undefined {
  const claim = sts?.spec?.volumeClaimTemplates?.[0]?.spec;
  const size = claim?.resources?.requests?.storage;
  if (size === undefined) return undefined;
  return {
    size: String(size),
    ...(claim.storageClassName ? { storageClassName: claim.storageClassName } : {}),
  };
}

function claimView(pvc: KubeObject): ClaimView {
  return { name: pvc.metadata.name ?? "", requested: pvc.spec?.resources?.requests?.storage };
}

/** A pod's StatefulSet ordinal; pods of other names sort last. */
function memberOrdinal(g: PaxosGroupLike, pod: Pod): number {
  return ordinalOf(g.metadata.name, pod.metadata.name ?? "") ?? Number.POSITIVE_INFINITY;
}

/** What the plan needs to know of a pod. */
function podView(pod: Pod): PodView {
  const ready = pod.status?.conditions?.find((c) => c.type === "Ready");
  const since = ready?.lastTransitionTime ?? pod.metadata.creationTimestamp;
  return {
    name: pod.metadata.name ?? "",
    uid: pod.metadata.uid ?? "",
    ready: isReady(pod),
    deleting: Boolean(pod.metadata.deletionTimestamp),
    specHash: pod.metadata.annotations?.[SPEC_HASH_ANNOTATION],
    readySince: since ? new Date(since) : undefined,
  };
}

export class PaxosGroupReconciler {
  private readonly rest: KubeRest;
  private readonly log: Logger;
  private readonly members: MemberApi;
  private readonly now: () => Date;
  /**
   * Names of Events known to exist, so that a condition seen on every reconcile (a member's forced
   * cleaning) is posted once, not refused with 409 each time. Bounded: the oldest are forgotten,
   * and a forgotten one costs only one more refused POST.
   */
  private readonly recordedEvents = new Set<string>();

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
    const stsPath = `/apis/apps/v1/namespaces/${ns}/statefulsets/${encodeURIComponent(statefulSetName(g))}`;
    const current = await this.getIfExists(stsPath);
    const selector = Object.entries(selectorLabels(g))
      .map(([k, v]) => `${k}=${v}`)
      .join(",");
    const [pods, pvcs] = await Promise.all([
      this.rest.get<KubeList<Pod>>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: selector }),
      this.rest.get<KubeList>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`, { labelSelector: selector }),
    ]).then(([p, c]) => [p.items, c.items] as const);

    let checkpointLoads = group.status?.checkpointLoads ?? 0;
    for (const pod of pods.filter(loadedCheckpoint)) {
      checkpointLoads = await this.replaceMember(group, pod, checkpointLoads);
    }

    const now = this.now();
    const window = cleanerWindowState(group.spec?.logCleaner?.windows, now);
    const problems = window.errors.map((e) => `cleaner window: ${e}`);

    const live = pods
      .filter((p) => !p.metadata.deletionTimestamp && !loadedCheckpoint(p))
      .sort((a, b) => memberOrdinal(g, a) - memberOrdinal(g, b));
    const observed = await Promise.all(live.map((pod) => this.observe(pod)));
    const master = agreedMaster(observed);
    const masterNode = observed.find((m) => m.name === master)?.node;
    const masterIP = live.find((p) => p.metadata.name === master)?.status?.podIP;
    const configuration =
      masterNode?.role === "master" && masterNode.members && masterIP
        ? masterNode.members.map(({ name, role, lag }) => ({ name, role, lag }))
        : undefined;

    const storage = planStorage(
      g.spec.storage,
      claimTemplateStorage(current),
      pvcs.filter((c) => !c.metadata.deletionTimestamp).map(claimView),
    );
    problems.push(...storage.problems);
    // Its size comes from the plan below; the spec hash the plan needs does not depend on it.
    const desired = desiredStatefulSet(
      { ...g, spec: { ...g.spec, storage: storage.template } },
      { defaultImage: this.opts.defaultImage },
    );
    const specHash = desired.spec?.template.metadata?.annotations?.[SPEC_HASH_ANNOTATION];
    if (!desired.spec || !specHash) throw new Error("the desired StatefulSet has no spec hash");
    const plan = planNextStep({
      group: g.metadata.name,
      replicas: g.spec.replicas,
      statefulSetReplicas: current?.spec?.replicas,
      configuration,
      master,
      pods: pods.map(podView),
      pvcs: pvcs.map((c) => ({
        name: c.metadata.name ?? "",
        deleting: Boolean(c.metadata.deletionTimestamp),
      })),
      specHash,
      now,
    });
    if (plan.stalled) problems.push(plan.stalled);

    await this.apply(
      `/api/v1/namespaces/${ns}/services/${desiredHeadlessService(g).metadata?.name}`,
      desiredHeadlessService(g),
    );
    await this.apply(
      `/api/v1/namespaces/${ns}/services/${desiredClientService(g).metadata?.name}`,
      desiredClientService(g),
    );
    await this.apply(stsPath, { ...desired, spec: { ...desired.spec, replicas: plan.statefulSetReplicas } });
    for (const { pvc, size } of storage.grow) {
      try {
        await this.rest.patch(
          `/api/v1/namespaces/${ns}/persistentvolumeclaims/${encodeURIComponent(pvc)}`,
          { spec: { resources: { requests: { storage: size } } } },
          "merge",
        );
        await this.event(group, "Normal", "VolumeExpanded", `asked for ${pvc} to grow to ${size}`);
      } catch (e) {
        problems.push(`cannot grow ${pvc} to ${size}: ${errorText(e)}`);
      }
    }
    const pdb = desiredPdb(g);
    await this.apply(`/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${pdb.metadata?.name}`, pdb);

    let stepDone = false;
    if (plan.step) {
      const failure = await this.runStep(group, g, plan.step, token, masterIP);
      if (failure === undefined) {
        stepDone = true;
        this.opts.afterStep?.(plan.step);
      } else if (failure.degraded) {
        problems.push(failure.message);
      }
    }

    const want = desiredCleaner(window);
    for (const m of observed) {
      const ip = live.find((p) => p.metadata.name === m.name)?.status?.podIP;
      if (!m.node || !ip) continue;
      await this.reportForcedCleaning(group, m, live);
      if (!cleanerNeedsUpdate(m.node.cleaner, want)) continue;
      try {
        await this.members.setCleaner(ip, token, want);
        this.log.info({ pod: m.name, ...want }, "member cleaner updated");
        await this.event(group, "Normal", "CleanerUpdated", `${m.name}: cleaner ${describeCleaner(want)}`);
      } catch (e) {
        problems.push(`cleaner update of ${m.name} failed: ${errorText(e)}`);
      }
    }

    // From the same pod list as `members`, so the two never disagree (the StatefulSet's own count
    // is written by another controller at another moment).
    const readyReplicas = observed.filter((m) => m.ready).length;
    const next = computeStatus({
      group,
      readyReplicas,
      members: observed,
      window,
      problems,
      checkpointLoads,
      ...(plan.progress ? { progress: plan.progress } : {}),
      ...(configuration ? { configuration } : {}),
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
    let requeue = stepDone
      ? STEP_REQUEUE_MS
      : plan.progress
        ? WAIT_REQUEUE_MS
        : available
          ? (this.opts.settledResyncMs ?? 300_000)
          : (this.opts.unsettledResyncMs ?? 10_000);
    if (g.spec.logCleaner.maxLogSize !== undefined && !window.open) {
      // Paused cleaners may start cleaning on their own (maxLogSize): the members' status is the
      // only place that shows it, and no pod event follows.
      requeue = Math.min(requeue, FORCED_CLEANING_POLL_MS);
    }
    if (window.nextBoundary) {
      // A little past the boundary, so that the evaluation there sees the new state.
      requeue = Math.min(requeue, Math.max(0, window.nextBoundary.getTime() - now.getTime()) + 500);
    }
    return { requeueAfterMs: requeue };
  }

  private async getIfExists(path: string): Promise<KubeObject | undefined> {
    try {
      return await this.rest.get(path);
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** A member pod and, when it is ready and answers, its node's own status. */
  private async observe(pod: Pod): Promise<ObservedMember> {
    const name = pod.metadata.name ?? "";
    const ready = isReady(pod);
    const ip = pod.status?.podIP;
    if (!ready || !ip) return { name, ready };
    try {
      return { name, ready, node: await this.members.status(ip) };
    } catch (e) {
      this.log.warn({ pod: name, err: errorText(e) }, "member status unavailable");
      return { name, ready };
    }
  }

  /**
   * Carries out one step of the plan. Returns undefined when done; otherwise why not, and whether
   * that is a problem (a refused change the plan did not expect) or only a moment to wait (the
   * master moved, another change is still pending, the member did not answer in time).
   */
  private async runStep(
    group: PaxosGroup,
    g: PaxosGroupLike,
    step: Step,
    token: string,
    masterIP: string | undefined,
  ): Promise<{ message: string; degraded: boolean } | undefined> {
    const ns = encodeURIComponent(g.metadata.namespace);
    const admin = async (method: "POST" | "DELETE", path: string, body?: unknown) => {
      if (!masterIP) throw new MemberApiError(503, "not_master", "the master has no pod IP");
      await this.members.admin(masterIP, token, method, path, body);
    };
    let message: string;
    try {
      switch (step.kind) {
        case "GrowStatefulSet":
        case "ShrinkStatefulSet":
          // Done by the apply above.
          message = `StatefulSet resized to ${step.replicas} (${step.kind === "GrowStatefulSet" ? "adding" : "removing"} ${step.member})`;
          break;
        case "DeletePVC":
          await this.deleteIgnoringGone(
            `/api/v1/namespaces/${ns}/persistentvolumeclaims/${encodeURIComponent(step.pvc)}`,
          );
          message = `deleted ${step.pvc} of removed member ${step.member}, so a later scale-up starts it empty`;
          break;
        case "TransferMaster":
          await admin("POST", "/v1/admin/master/transfer", { to: step.to });
          message = `master handed over from ${step.from} to ${step.to}`;
          break;
        case "RemoveMember":
          await admin("DELETE", `/v1/admin/members/${encodeURIComponent(step.member)}`);
          message = `removed ${step.member} from the Paxos membership`;
          break;
        case "PromoteMember":
          await admin("POST", `/v1/admin/members/${encodeURIComponent(step.member)}/promote`);
          message = `promoted learner ${step.member} to voter`;
          break;
        case "AddLearner":
          await admin("POST", "/v1/admin/members", {
            name: step.member,
            address: peerAddress(g, step.member),
            role: "learner",
          });
          message = `added ${step.member} to the Paxos membership as a learner`;
          break;
        case "RestartPod":
          await this.deleteIgnoringGone(
            `/api/v1/namespaces/${ns}/pods/${encodeURIComponent(step.pod)}`,
            step.uid,
          );
          message = `deleted pod ${step.pod} so that it restarts with the current template`;
          break;
      }
    } catch (e) {
      const refused = e instanceof MemberApiError && e.status === 400;
      this.log.warn({ group: g.metadata.name, step, err: errorText(e) }, "step not done; retrying");
      return { message: `${step.kind} failed: ${errorText(e)}`, degraded: refused };
    }
    this.log.info({ group: g.metadata.name, step }, message);
    await this.event(group, "Normal", step.kind, message);
    return undefined;
  }

  /** DELETE that treats an object already gone (or replaced, with a uid precondition) as done. */
  private async deleteIgnoringGone(path: string, uid?: string): Promise<void> {
    try {
      await this.rest.request("DELETE", path, {
        ...(uid ? { body: { apiVersion: "v1", kind: "DeleteOptions", preconditions: { uid } } } : {}),
      });
    } catch (e) {
      if (!isNotFound(e) && !isConflict(e)) throw e;
    }
  }

  /**
   * A Warning Event per episode in which a member's log passed spec.logCleaner.maxLogSize and its
   * paused cleaner cleaned outside the windows. The Event's name carries the pod and the episode,
   * so each is recorded once however often the operator looks.
   */
  private async reportForcedCleaning(
    group: PaxosGroup,
    m: ObservedMember,
    pods: readonly Pod[],
  ): Promise<void> {
    const at = m.node?.cleaner.lastForcedAt;
    const uid = pods.find((p) => p.metadata.name === m.name)?.metadata.uid;
    if (!at || !uid || Number.isNaN(Date.parse(at))) return;
    await this.event(
      group,
      "Warning",
      "LogOverMaxSize",
      `${m.name}: its PaxosLog grew past spec.logCleaner.maxLogSize at ${at}; it cleaned the log outside the cleaner windows`,
      `${group.metadata.name}.log-over-max-size.${uid}.${Date.parse(at)}`,
    );
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
   * Records the checkpoint load once per termination (the Event's name says which), counts it
   * in the status, then deletes the pod; the StatefulSet recreates it on the same PVC. Returns the
   * new count.
   */
  private async replaceMember(group: PaxosGroup, pod: Pod, count: number): Promise<number> {
    const podName = pod.metadata.name ?? "";
    // Named after the termination itself: the same exit is seen as `state` and then as `lastState`,
    // with different restart counts, and must be counted once.
    const exit = checkpointExit(pod);
    const finished = exit?.finishedAt ? Date.parse(exit.finishedAt) : Number.NaN;
    const eventName = `${group.metadata.name}.checkpoint-loaded.${pod.metadata.uid}.${Number.isNaN(finished) ? 0 : finished}`;
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
    const known = name === undefined ? undefined : `${ns}/${name}`;
    if (known !== undefined && this.recordedEvents.has(known)) return false;
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
      if (known !== undefined) this.rememberEvent(known);
      return true;
    } catch (e) {
      if (known !== undefined && isConflict(e)) {
        this.rememberEvent(known);
        return false;
      }
      // Without a name, Events are informative: a failure must not fail the reconcile.
      if (name) throw e;
      this.log.warn({ reason, err: errorText(e) }, "could not record an Event");
      return true;
    }
  }

  private rememberEvent(key: string): void {
    this.recordedEvents.add(key);
    if (this.recordedEvents.size > RECORDED_EVENTS_KEPT) {
      const oldest = this.recordedEvents.values().next().value;
      if (oldest !== undefined) this.recordedEvents.delete(oldest);
    }
  }
}

function describeCleaner(c: CleanerCommand): string {
  return c.state === "running" ? `running${c.until ? ` until ${c.until}` : ""}` : "paused";
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
