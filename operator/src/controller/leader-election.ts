// Lease-based leader election (coordination.k8s.io/v1), the algorithm of client-go's
// leaderelection: acquire when the lease is free or expired as observed by this process's own
// clock (immune to clock skew between machines), renew with optimistic concurrency, step down when
// renewals fail for `renewDeadlineMs`, and release the lease on a graceful stop.
import { type Clock, jittered, realClock, sleep } from "./clock.js";
import { type Logger, silentLogger } from "./logger.js";
import { isConflict, isNotFound, type KubeObject, type KubeRest } from "./rest.js";

export interface LeaderElectorOptions {
  namespace: string;
  /** Name of the Lease object. */
  name: string;
  /** This candidate's identity, unique among candidates (e.g. the pod name). */
  identity: string;
  /** How long others wait after the last renewal before taking over (default 15 s). */
  leaseDurationMs?: number;
  /** How long the leader keeps retrying a renewal before it steps down (default 10 s). */
  renewDeadlineMs?: number;
  /** Time between attempts to acquire or renew (default 2 s). */
  retryPeriodMs?: number;
  /** Runs while leading; `signal` aborts when leadership is lost or the elector stops. */
  onStartedLeading: (signal: AbortSignal) => void | Promise<void>;
  onStoppedLeading?: () => void;
  /** Called when another identity is seen holding the lease. */
  onNewLeader?: (identity: string) => void;
  logger?: Logger;
  clock?: Clock;
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

interface Lease extends KubeObject {
  spec?: LeaseSpec;
}

/** metav1.MicroTime wants exactly six fractional digits. */
export function microTime(date: Date): string {
  return date.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

export class LeaderElector {
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly path: string;
  private readonly collection: string;
  /** The lease as last read or written, and when (local clock) its content last changed. */
  private observed: Lease | undefined;
  private observedAt = 0;
  private leading = false;
  private lastLeader: string | undefined;

  constructor(
    private readonly rest: KubeRest,
    private readonly opts: LeaderElectorOptions,
  ) {
    this.leaseDurationMs = opts.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    this.retryPeriodMs = opts.retryPeriodMs ?? 2_000;
    if (this.leaseDurationMs <= this.renewDeadlineMs) {
      throw new Error("leader election: leaseDurationMs must be greater than renewDeadlineMs");
    }
    if (this.renewDeadlineMs <= this.retryPeriodMs * 1.2) {
      throw new Error("leader election: renewDeadlineMs must be greater than 1.2 * retryPeriodMs");
    }
    this.clock = opts.clock ?? realClock;
    this.log = opts.logger ?? silentLogger;
    this.collection = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(opts.namespace)}/leases`;
    this.path = `${this.collection}/${encodeURIComponent(opts.name)}`;
  }

  isLeader(): boolean {
    return this.leading;
  }

  /**
   * Campaigns until this candidate leads, leads until leadership is lost or `signal` aborts, then
   * resolves (releasing the lease on abort). Once it has resolved after a loss, the caller should
   * exit: the work started under leadership must not continue unguarded.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (!(await this.acquire(signal))) return;
    this.leading = true;
    this.log.info({ lease: this.opts.name, identity: this.opts.identity }, "started leading");
    const leadership = new AbortController();
    const onAbort = () => leadership.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const work = Promise.resolve()
      .then(() => this.opts.onStartedLeading(leadership.signal))
      .catch((e) =>
        this.log.error({ err: e instanceof Error ? e.message : String(e) }, "leader work failed"),
      );
    try {
      await this.renewLoop(leadership.signal);
    } finally {
      signal.removeEventListener("abort", onAbort);
      leadership.abort();
      this.leading = false;
      await work;
      if (signal.aborted) await this.release();
      this.log.info({ lease: this.opts.name, identity: this.opts.identity }, "stopped leading");
      this.opts.onStoppedLeading?.();
    }
  }

  private async acquire(signal: AbortSignal): Promise<boolean> {
    while (!signal.aborted) {
      if (await this.tryAcquireOrRenew()) return true;
      await sleep(jittered(this.retryPeriodMs, 0.2), signal, this.clock);
    }
    return false;
  }

  /** Renews every retry period; returns when `signal` aborts or no renewal succeeded in time. */
  private async renewLoop(signal: AbortSignal): Promise<void> {
    let lastRenew = this.clock.now();
    while (!signal.aborted) {
      await sleep(this.retryPeriodMs, signal, this.clock);
      if (signal.aborted) return;
      if (await this.tryAcquireOrRenew()) {
        lastRenew = this.clock.now();
      } else if (this.clock.now() - lastRenew >= this.renewDeadlineMs) {
        this.log.warn({ lease: this.opts.name }, "failed to renew the lease in time: stepping down");
        return;
      }
    }
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const now = new Date();
    const me = this.opts.identity;
    let current: Lease;
    try {
      current = await this.rest.get<Lease>(this.path);
    } catch (e) {
      if (!isNotFound(e)) return this.failed(e);
      try {
        const created = await this.rest.create<Lease>(this.collection, {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { name: this.opts.name, namespace: this.opts.namespace },
          spec: this.spec(now, { leaseTransitions: 0 }),
        });
        this.observe(created);
        return true;
      } catch (err) {
        return this.failed(err);
      }
    }
    this.observe(current);
    const spec = current.spec ?? {};
    const holder = spec.holderIdentity ?? "";
    if (holder && holder !== me) {
      if (holder !== this.lastLeader) {
        this.lastLeader = holder;
        this.opts.onNewLeader?.(holder);
      }
      const durationMs = (spec.leaseDurationSeconds ?? 0) * 1000;
      if (this.observedAt + durationMs > this.clock.now()) return false;
    }
    const renewing = holder === me;
    const next: Lease = {
      ...current,
      spec: {
        ...this.spec(now, {
          leaseTransitions: (spec.leaseTransitions ?? 0) + (renewing ? 0 : 1),
        }),
        ...(renewing && spec.acquireTime ? { acquireTime: spec.acquireTime } : {}),
      },
    };
    try {
      this.observe(await this.rest.replace<Lease>(this.path, next));
      return true;
    } catch (e) {
      return this.failed(e);
    }
  }

  private spec(now: Date, extra: LeaseSpec): LeaseSpec {
    return {
      holderIdentity: this.opts.identity,
      leaseDurationSeconds: Math.max(1, Math.ceil(this.leaseDurationMs / 1000)),
      acquireTime: microTime(now),
      renewTime: microTime(now),
      ...extra,
    };
  }

  private observe(lease: Lease): void {
    const before = this.observed;
    if (
      !before ||
      before.metadata.resourceVersion !== lease.metadata.resourceVersion ||
      JSON.stringify(before.spec) !== JSON.stringify(lease.spec)
    ) {
      this.observedAt = this.clock.now();
    }
    this.observed = lease;
  }

  private failed(e: unknown): false {
    // A conflict is the normal outcome of a race with another candidate.
    if (!isConflict(e)) {
      this.log.warn(
        { err: e instanceof Error ? e.message : String(e), lease: this.opts.name },
        "lease update failed",
      );
    }
    return false;
  }

  /** Hands the lease over at once: empty holder and a 1 s duration, as client-go's release. */
  private async release(): Promise<void> {
    const lease = this.observed;
    if (!lease || lease.spec?.holderIdentity !== this.opts.identity) return;
    const now = microTime(new Date());
    try {
      await this.rest.replace(this.path, {
        ...lease,
        spec: {
          holderIdentity: "",
          leaseDurationSeconds: 1,
          acquireTime: now,
          renewTime: now,
          leaseTransitions: lease.spec.leaseTransitions ?? 0,
        },
      });
    } catch (e) {
      this.log.warn({ err: e instanceof Error ? e.message : String(e) }, "failed to release the lease");
    }
  }
}
