// Runs reconcilers: workers take keys from a work queue and call `reconcile`; a failure is retried
// with backoff, a success resets it. Informers feed the queue; a stop (or SIGTERM) stops them,
// lets running reconciles finish within a deadline, and returns.
import { type Clock, realClock } from "./clock.js";
import type { Informer } from "./informer.js";
import { type Logger, silentLogger } from "./logger.js";
import type { WorkQueue } from "./work-queue.js";

export interface ReconcileResult {
  /** Reconcile this key again after this long (e.g. at the next cleaner-window boundary). */
  requeueAfterMs?: number;
}

export type Reconciler = (key: string) => Promise<ReconcileResult | undefined>;

export interface ManagerOptions {
  queue: WorkQueue;
  reconcile: Reconciler;
  /** Parallel workers (default 1); one key is never reconciled by two at once. */
  workers?: number;
  /** Started by `start`, waited for before the first reconcile, stopped by `stop`. */
  // biome-ignore lint/suspicious/noExplicitAny: informers of any object type
  informers?: Informer<any>[];
  /** How long `stop` waits for running reconciles (default 30 s). */
  shutdownTimeoutMs?: number;
  logger?: Logger;
  clock?: Clock;
}

export class Manager {
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly abort = new AbortController();
  private workers: Promise<void>[] = [];
  private stopping: Promise<void> | undefined;

  constructor(private readonly opts: ManagerOptions) {
    this.log = opts.logger ?? silentLogger;
    this.clock = opts.clock ?? realClock;
  }

  /** Starts the informers, waits until each has listed once, then starts the workers. */
  async start(): Promise<void> {
    const informers = this.opts.informers ?? [];
    for (const informer of informers) informer.start();
    await Promise.all(informers.map((i) => i.waitForSync(this.abort.signal)));
    const n = Math.max(1, this.opts.workers ?? 1);
    for (let i = 0; i < n; i++) this.workers.push(this.worker(i));
    this.log.info({ workers: n }, "controller started");
  }

  /**
   * Stops the informers and the queue, and waits for running reconciles up to the deadline (a
   * reconcile still running then is logged and abandoned).
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  /** Calls `stop` on the first of `signals`; returns a function that removes the handlers. */
  stopOnSignals(signals: NodeJS.Signals[] = ["SIGTERM", "SIGINT"]): () => void {
    const handler = (sig: NodeJS.Signals) => {
      this.log.info({ signal: sig }, "shutting down");
      void this.stop();
    };
    for (const s of signals) process.once(s, handler);
    return () => {
      for (const s of signals) process.removeListener(s, handler);
    };
  }

  private async shutdown(): Promise<void> {
    this.abort.abort();
    const queueDrained = this.opts.queue.shutDown();
    await Promise.all((this.opts.informers ?? []).map((i) => i.stop()));
    const timeoutMs = this.opts.shutdownTimeoutMs ?? 30_000;
    let timer: unknown;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = this.clock.setTimeout(() => resolve(false), timeoutMs);
    });
    const finished = await Promise.race([
      Promise.all([...this.workers, queueDrained]).then(() => true),
      timedOut,
    ]);
    this.clock.clearTimeout(timer);
    if (finished) this.log.info({}, "controller stopped");
    else this.log.warn({ timeoutMs }, "controller stopped with reconciles still running");
  }

  private async worker(id: number): Promise<void> {
    const { queue, reconcile } = this.opts;
    for (;;) {
      const key = await queue.get();
      if (key === undefined) return;
      try {
        const result = await reconcile(key);
        queue.forget(key);
        if (result?.requeueAfterMs !== undefined && !queue.isShuttingDown()) {
          queue.addAfter(key, result.requeueAfterMs);
        }
      } catch (e) {
        queue.addRateLimited(key);
        this.log.error(
          {
            err: e instanceof Error ? e.message : String(e),
            key,
            worker: id,
            retries: queue.numRequeues(key),
          },
          "reconcile failed; retrying with backoff",
        );
      } finally {
        queue.done(key);
      }
    }
  }
}
