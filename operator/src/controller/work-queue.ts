// A per-key work queue with the semantics of client-go's workqueue: a key is never handed to two
// workers at once, a key added while it is being processed is processed again once it is done,
// and failures are retried with per-key exponential backoff under an overall rate limit.
import { type Clock, realClock, type TimerHandle } from "./clock.js";

export interface RateLimiterOptions {
  /** First retry delay of a failing key (default 5 ms, doubled per failure). */
  baseDelayMs?: number;
  /** Cap of the per-key delay (default 1000 s). */
  maxDelayMs?: number;
  /** Overall retries per second across all keys (default 10). */
  qps?: number;
  /** Retries allowed at once before `qps` applies (default 100). */
  burst?: number;
}

/**
 * controller-runtime's default limiter: the larger of a per-key exponential backoff and the wait
 * for a token of a bucket shared by every key.
 */
export class RateLimiter {
  private readonly failures = new Map<string, number>();
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly qps: number;
  private readonly burst: number;
  private tokens: number;
  private last: number;

  constructor(
    opts: RateLimiterOptions = {},
    private readonly clock: Clock = realClock,
  ) {
    this.baseDelayMs = opts.baseDelayMs ?? 5;
    this.maxDelayMs = opts.maxDelayMs ?? 1_000_000;
    this.qps = opts.qps ?? 10;
    this.burst = opts.burst ?? 100;
    if (this.qps <= 0 || this.burst < 1) throw new Error("rate limiter: qps must be > 0 and burst >= 1");
    this.tokens = this.burst;
    this.last = clock.now();
  }

  /** The delay before `key`'s next retry; counts one more failure of it. */
  when(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const backoff = Math.min(this.baseDelayMs * 2 ** n, this.maxDelayMs);
    return Math.max(backoff, this.reserveToken());
  }

  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  // Like golang.org/x/time/rate's Reserve: the bucket may go negative, and the debt is the wait.
  private reserveToken(): number {
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.qps) / 1000);
    this.last = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.qps;
  }
}

export interface WorkQueueOptions {
  clock?: Clock;
  rateLimiter?: RateLimiter | RateLimiterOptions;
}

export class WorkQueue {
  private readonly clock: Clock;
  private readonly limiter: RateLimiter;
  private readonly queue: string[] = [];
  /** Keys waiting to be processed (queued, or re-added while processing). */
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly delayed = new Map<string, { at: number; handle: TimerHandle }>();
  private readonly getters: ((key: string | undefined) => void)[] = [];
  private drainWaiters: (() => void)[] = [];
  private shuttingDown = false;

  constructor(opts: WorkQueueOptions = {}) {
    this.clock = opts.clock ?? realClock;
    this.limiter =
      opts.rateLimiter instanceof RateLimiter
        ? opts.rateLimiter
        : new RateLimiter(opts.rateLimiter ?? {}, this.clock);
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    const getter = this.getters.shift();
    if (getter) {
      this.dirty.delete(key);
      this.processing.add(key);
      getter(key);
    } else {
      this.queue.push(key);
    }
  }

  /** Adds `key` after `ms`; of several pending delays for one key the earliest wins. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) return this.add(key);
    const at = this.clock.now() + ms;
    const pending = this.delayed.get(key);
    if (pending) {
      if (pending.at <= at) return;
      this.clock.clearTimeout(pending.handle);
    }
    const handle = this.clock.setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, ms);
    this.delayed.set(key, { at, handle });
  }

  /** Adds `key` after its backoff: call after a failed attempt. */
  addRateLimited(key: string): void {
    this.addAfter(key, this.limiter.when(key));
  }

  /** Resets `key`'s backoff: call after a successful attempt. */
  forget(key: string): void {
    this.limiter.forget(key);
  }

  numRequeues(key: string): number {
    return this.limiter.numRequeues(key);
  }

  /**
   * The next key to process; the caller must call `done(key)` afterwards. After `shutDown` it still
   * hands out the keys already queued, then resolves to undefined.
   */
  get(): Promise<string | undefined> {
    const key = this.queue.shift();
    if (key !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.getters.push(resolve));
  }

  done(key: string): void {
    if (!this.processing.delete(key)) return;
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
    this.checkDrained();
  }

  /** Keys queued and not being processed (delayed keys are not counted until they are due). */
  len(): number {
    return this.queue.length;
  }

  isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  /**
   * Stops accepting keys and drops delayed ones; waiting `get`s resolve to undefined. Resolves once
   * the queue is empty and no key is being processed.
   */
  shutDown(): Promise<void> {
    this.shuttingDown = true;
    for (const { handle } of this.delayed.values()) this.clock.clearTimeout(handle);
    this.delayed.clear();
    for (const getter of this.getters.splice(0)) getter(undefined);
    return new Promise((resolve) => {
      this.drainWaiters.push(resolve);
      this.checkDrained();
    });
  }

  private checkDrained(): void {
    if (!this.shuttingDown || this.queue.length > 0 || this.processing.size > 0) return;
    for (const w of this.drainWaiters.splice(0)) w();
  }
}
