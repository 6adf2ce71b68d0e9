// Promises that settle when a monotonically increasing counter (the executed instance) reaches a
// target, or that time out. Kept apart from the runtime so the bookkeeping is easy to test.

interface Waiter {
  readonly target: number;
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export class ProgressWaiters {
  private readonly waiters = new Set<Waiter>();

  constructor(private current: number) {}

  get value(): number {
    return this.current;
  }

  /** Resolves once the counter is >= target; rejects with `onTimeout()` after `timeoutMs`. */
  wait(target: number, timeoutMs: number, onTimeout: () => Error): Promise<void> {
    if (this.current >= target) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        target,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(onTimeout());
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  advance(to: number): void {
    if (to <= this.current) return;
    this.current = to;
    for (const w of this.waiters) {
      if (w.target > to) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve();
    }
  }

  /** Fail everyone still waiting (shutdown). */
  rejectAll(error: Error): void {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(error);
    }
    this.waiters.clear();
  }
}

/** Outstanding requests by id, each with its own timeout and its start time. */
export class PendingRequests<T> {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: T) => void; reject: (e: Error) => void; timer: NodeJS.Timeout; startedAt: number }
  >();

  get size(): number {
    return this.pending.size;
  }

  /** Registers a request; `send(id)` is called synchronously with its id. */
  start(timeoutMs: number, onTimeout: () => Error, send: (id: number) => void): Promise<T> {
    const id = this.nextId++;
    const promise = new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(onTimeout());
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, startedAt: performance.now() });
    });
    send(id);
    return promise;
  }

  /** Settles the request; returns how long it was outstanding (ms), or null if it is gone. */
  resolve(id: number, value: T): number | null {
    const p = this.take(id);
    p?.resolve(value);
    return p === undefined ? null : performance.now() - p.startedAt;
  }

  reject(id: number, error: Error): void {
    this.take(id)?.reject(error);
  }

  rejectAll(error: Error): void {
    for (const id of [...this.pending.keys()]) this.reject(id, error);
  }

  private take(id: number) {
    const p = this.pending.get(id);
    if (p === undefined) return undefined;
    this.pending.delete(id);
    clearTimeout(p.timer);
    return p;
  }
}
