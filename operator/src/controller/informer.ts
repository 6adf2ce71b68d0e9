// A list+watch cache of one collection that never gives up: any error, an end of the stream, a
// 410 Gone or a silent stream leads to a jittered backoff and a fresh list, so the cache and the
// handlers converge to the server's state whatever the network does.
import { jittered, sleep } from "./clock.js";
import { type Logger, silentLogger } from "./logger.js";
import { ApiError, type KubeList, type KubeObject, type KubeRest, type Query } from "./rest.js";

export interface InformerHandlers<T extends KubeObject> {
  onAdd?(obj: T): void;
  onUpdate?(oldObj: T, newObj: T): void;
  /** `obj` is the last state known; after a re-list it may be older than the deletion. */
  onDelete?(obj: T): void;
}

export interface InformerOptions<T extends KubeObject> {
  /** Collection path without namespace: `/api/v1/pods`, `/apis/paxos.dev/v1alpha1/paxosgroups`. */
  path: string;
  /** Only this namespace; all namespaces when absent. */
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  handlers?: InformerHandlers<T>;
  /** Restart the watch when nothing, not even a bookmark, arrives for this long (default 5 min). */
  inactivityTimeoutMs?: number;
  /** First restart delay (default 500 ms), doubled per consecutive failure up to `maxBackoffMs`. */
  initialBackoffMs?: number;
  /** Default 30 s. */
  maxBackoffMs?: number;
  /** Page size of lists (default 500). */
  pageSize?: number;
  logger?: Logger;
}

export interface InformerStats {
  /** Completed lists (the first one and every re-list). */
  lists: number;
  /** Watch requests started. */
  watches: number;
  /** Failures (list or watch errors, ends, inactivity) that led to a restart. */
  restarts: number;
}

/** The cache key of an object: "namespace/name", or "name" for cluster-scoped objects. */
export function objectKey(obj: KubeObject): string {
  const { namespace, name } = obj.metadata;
  return namespace ? `${namespace}/${name ?? ""}` : (name ?? "");
}

/** Inserts `namespaces/<ns>` into a collection path after its group/version prefix. */
export function namespacedPath(path: string, namespace: string | undefined): string {
  if (!namespace) return path;
  const parts = path.split("/");
  // ["", "api", "v1", plural] or ["", "apis", group, version, plural]
  const prefix = parts[1] === "api" ? 3 : parts[1] === "apis" ? 4 : -1;
  if (prefix < 0 || parts.length !== prefix + 1) {
    throw new Error(
      `informer path ${path}: expected /api/<version>/<plural> or /apis/<group>/<version>/<plural>`,
    );
  }
  return [
    ...parts.slice(0, prefix),
    "namespaces",
    encodeURIComponent(namespace),
    ...parts.slice(prefix),
  ].join("/");
}

/** Server-side watch timeouts, random so that many watches do not end together (as client-go). */
const MIN_WATCH_TIMEOUT_S = 300;

export class Informer<T extends KubeObject = KubeObject> {
  private readonly cache = new Map<string, T>();
  private readonly abort = new AbortController();
  private readonly path: string;
  private readonly query: Query;
  private readonly handlers: InformerHandlers<T>;
  private readonly log: Logger;
  private running: Promise<void> | undefined;
  private synced = false;
  private syncWaiters: (() => void)[] = [];
  private readonly counters: InformerStats = { lists: 0, watches: 0, restarts: 0 };

  constructor(
    private readonly rest: KubeRest,
    private readonly opts: InformerOptions<T>,
  ) {
    this.path = namespacedPath(opts.path, opts.namespace);
    this.query = { labelSelector: opts.labelSelector, fieldSelector: opts.fieldSelector };
    this.handlers = opts.handlers ?? {};
    this.log = opts.logger ?? silentLogger;
  }

  start(): void {
    if (this.abort.signal.aborted) throw new Error(`informer ${this.path}: started after stop`);
    this.running ??= this.run();
  }

  /** Ends the watch; resolves once the informer does nothing more. */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
  }

  /** True once the first list has filled the cache. */
  hasSynced(): boolean {
    return this.synced;
  }

  /** Resolves after the first list; rejects when `signal` aborts first. */
  waitForSync(signal?: AbortSignal): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(new Error(`informer ${this.path}: aborted before its first list`));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.syncWaiters.push(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  keys(): string[] {
    return [...this.cache.keys()];
  }

  stats(): InformerStats {
    return { ...this.counters };
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    const initial = this.opts.initialBackoffMs ?? 500;
    const max = this.opts.maxBackoffMs ?? 30_000;
    let failures = 0;
    while (!signal.aborted) {
      let healthy = false;
      try {
        let rv = await this.relist(signal);
        // Re-watch from the last resourceVersion while the server ends streams cleanly; anything
        // else falls through to a backoff and a re-list.
        for (;;) {
          if (signal.aborted) return;
          let received = false;
          this.counters.watches++;
          await this.rest.watch(
            this.path,
            {
              ...this.query,
              resourceVersion: rv,
              timeoutSeconds: Math.floor(MIN_WATCH_TIMEOUT_S * (1 + Math.random())),
            },
            (event) => {
              received = true;
              healthy = true;
              if (event.type === "ERROR") {
                const status = event.object as unknown as {
                  code?: number;
                  reason?: string;
                  message?: string;
                };
                throw new ApiError(
                  status.code ?? 0,
                  status.reason ?? "",
                  status.message ?? "",
                  "WATCH",
                  this.path,
                );
              }
              rv = event.object.metadata.resourceVersion ?? rv;
              this.apply(event.type, event.object as T);
            },
            { signal, inactivityMs: this.opts.inactivityTimeoutMs ?? 300_000 },
          );
          if (!received) throw new Error(`watch ${this.path}: the server ended the stream without any event`);
          failures = 0;
        }
      } catch (e) {
        if (signal.aborted) return;
        // A watch that delivered events was healthy: its end starts a fresh backoff.
        if (healthy) failures = 0;
        this.counters.restarts++;
        const delay = jittered(Math.min(initial * 2 ** failures, max), 0.5);
        failures++;
        this.log.warn(
          { err: e instanceof Error ? e.message : String(e), path: this.path, retryInMs: Math.round(delay) },
          "informer restarts: list and watch again",
        );
        await sleep(delay, signal);
      }
    }
  }

  /** Lists page by page, then reconciles the cache with the result (handlers see the difference). */
  private async relist(signal: AbortSignal): Promise<string | undefined> {
    const items: T[] = [];
    let cont: string | undefined;
    let rv: string | undefined;
    do {
      const page = await this.rest.get<KubeList<T>>(this.path, {
        ...this.query,
        limit: this.opts.pageSize ?? 500,
        continue: cont,
      });
      items.push(...page.items);
      cont = page.metadata.continue || undefined;
      rv = page.metadata.resourceVersion;
    } while (cont && !signal.aborted);
    if (signal.aborted) return rv;
    const fresh = new Map(items.map((o) => [objectKey(o), o] as const));
    for (const [key, old] of [...this.cache]) {
      if (!fresh.has(key)) {
        this.cache.delete(key);
        this.call("delete", () => this.handlers.onDelete?.(old));
      }
    }
    for (const obj of fresh.values()) this.apply("ADDED", obj);
    this.counters.lists++;
    if (!this.synced) {
      this.synced = true;
      for (const w of this.syncWaiters.splice(0)) w();
    }
    return rv;
  }

  private apply(type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK", obj: T): void {
    if (type === "BOOKMARK") return;
    const key = objectKey(obj);
    const old = this.cache.get(key);
    if (type === "DELETED") {
      this.cache.delete(key);
      this.call("delete", () => this.handlers.onDelete?.(old ?? obj));
      return;
    }
    this.cache.set(key, obj);
    if (!old) this.call("add", () => this.handlers.onAdd?.(obj));
    else if (old.metadata.resourceVersion !== obj.metadata.resourceVersion) {
      this.call("update", () => this.handlers.onUpdate?.(old, obj));
    }
  }

  // A failing handler must not break the watch of every other object.
  private call(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.log.error(
        { err: e instanceof Error ? e.message : String(e), path: this.path },
        `${what} handler failed`,
      );
    }
  }
}
