// A small Kubernetes REST client for the e2e harness and the pod runner.
//
// It speaks JSON over https with the credentials of a kubeconfig (loaded by
// @kubernetes/client-node, so kind's embedded certificates work too). It is deliberately raw:
// the generated clients of @kubernetes/client-node send the wrong content type for patches and
// their informers stop silently on errors, and both matter here.
import https from "node:https";
import { KubeConfig } from "@kubernetes/client-node";
import {
  isNotFound,
  ApiError as KubeError,
  type KubeList,
  type KubeObject,
  PATCH_CONTENT_TYPES,
  type PatchType,
  type WatchEvent,
} from "../../operator/src/controller/rest.js";

// The object shapes, errors and patch types are the operator's own client's (one definition).
export {
  ApiError as KubeError,
  isConflict,
  isNotFound,
  type KubeList,
  type KubeObject,
  type ObjectMeta,
  PATCH_CONTENT_TYPES,
  type PatchType,
  type WatchEvent,
} from "../../operator/src/controller/rest.js";

export interface RequestOptions {
  body?: unknown;
  contentType?: string;
  query?: Record<string, string | number | boolean | undefined>;
  timeoutMs?: number;
  /** Extra request headers (for what a proxied pod receives, say). */
  headers?: Record<string, string>;
}

interface ResourceInfo {
  plural: string;
  namespaced: boolean;
}

export class KubeClient {
  private readonly discovery = new Map<string, Promise<Map<string, ResourceInfo>>>();

  private constructor(
    readonly server: string,
    private readonly httpsOptions: https.RequestOptions,
  ) {}

  static async fromKubeconfig(path: string, context?: string): Promise<KubeClient> {
    const kc = new KubeConfig();
    kc.loadFromFile(path);
    if (context) kc.setCurrentContext(context);
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error(`kubeconfig ${path}: no current cluster`);
    const opts: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(opts);
    // One keep-alive agent per client: watches and status updates reuse connections.
    opts.agent = new https.Agent({
      ca: opts.ca,
      cert: opts.cert,
      key: opts.key,
      keepAlive: true,
      maxSockets: 32,
      ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
    });
    return new KubeClient(cluster.server.replace(/\/+$/, ""), opts);
  }

  /** Destroys pooled connections so the process can exit. */
  close(): void {
    (this.httpsOptions.agent as https.Agent | undefined)?.destroy();
  }

  private url(path: string, query?: RequestOptions["query"]): URL {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    return url;
  }

  async requestText(method: string, path: string, opts: RequestOptions = {}): Promise<string> {
    const url = this.url(path, opts.query);
    const payload =
      opts.body === undefined
        ? undefined
        : typeof opts.body === "string"
          ? opts.body
          : JSON.stringify(opts.body);
    return await new Promise<string>((resolve, reject) => {
      const req = https.request(
        url,
        {
          ...this.httpsOptions,
          method,
          headers: {
            ...(this.httpsOptions.headers ?? {}),
            ...opts.headers,
            accept: "application/json",
            // Explicit length: node frames neither DELETE nor GET bodies on its own, and an
            // unframed body poisons the kept-alive connection for the next request.
            ...(payload !== undefined
              ? {
                  "content-type": opts.contentType ?? "application/json",
                  "content-length": Buffer.byteLength(payload),
                }
              : {}),
          },
          timeout: opts.timeoutMs ?? 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", reject);
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            const code = res.statusCode ?? 0;
            if (code >= 200 && code < 300) return resolve(text);
            let reason = res.statusMessage ?? "";
            let message = text.slice(0, 2000);
            try {
              const status = JSON.parse(text) as { reason?: string; message?: string };
              reason = status.reason ?? reason;
              message = status.message ?? message;
            } catch {
              // not a Status object: keep the raw text
            }
            reject(new KubeError(code, reason, message, method, url.pathname));
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${url.pathname}: no answer in time`)));
      req.on("error", reject);
      req.end(payload);
    });
  }

  async request<T = KubeObject>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const text = await this.requestText(method, path, opts);
    return (text ? JSON.parse(text) : {}) as T;
  }

  get<T = KubeObject>(path: string, query?: RequestOptions["query"]): Promise<T> {
    return this.request<T>("GET", path, { query });
  }

  async getOrNull<T = KubeObject>(path: string): Promise<T | null> {
    try {
      return await this.get<T>(path);
    } catch (e) {
      if (isNotFound(e)) return null;
      throw e;
    }
  }

  list<T extends KubeObject = KubeObject>(
    path: string,
    query?: RequestOptions["query"],
  ): Promise<KubeList<T>> {
    return this.get<KubeList<T>>(path, query);
  }

  create<T = KubeObject>(path: string, body: unknown, query?: RequestOptions["query"]): Promise<T> {
    return this.request<T>("POST", path, { body, query });
  }

  patch<T = KubeObject>(
    path: string,
    body: unknown,
    type: PatchType = "merge",
    query?: RequestOptions["query"],
  ): Promise<T> {
    return this.request<T>("PATCH", path, { body, contentType: PATCH_CONTENT_TYPES[type], query });
  }

  /** DELETE; a missing object is not an error (the wanted state already holds). */
  async delete(path: string, body?: unknown): Promise<void> {
    try {
      await this.request("DELETE", path, body === undefined ? {} : { body });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  /** The REST path of an object (or of its collection when `name` is empty), found by discovery. */
  async pathFor(
    apiVersion: string,
    kind: string,
    namespace: string | undefined,
    name?: string,
  ): Promise<string> {
    const info = await this.resourceInfo(apiVersion, kind);
    const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    const ns = info.namespaced ? `/namespaces/${encodeURIComponent(namespace || "default")}` : "";
    return `${base}${ns}/${info.plural}${name ? `/${encodeURIComponent(name)}` : ""}`;
  }

  private async resourceInfo(apiVersion: string, kind: string): Promise<ResourceInfo> {
    let entry = this.discovery.get(apiVersion);
    if (!entry) {
      const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
      entry = this.get<{ resources: { name: string; kind: string; namespaced: boolean }[] }>(base).then(
        (list) => {
          const byKind = new Map<string, ResourceInfo>();
          for (const r of list.resources) {
            if (!r.name.includes("/")) byKind.set(r.kind, { plural: r.name, namespaced: r.namespaced });
          }
          return byKind;
        },
      );
      this.discovery.set(apiVersion, entry);
      entry.catch(() => this.discovery.delete(apiVersion));
    }
    const info = (await entry).get(kind);
    if (!info) {
      // A CRD may have been created since the last look.
      this.discovery.delete(apiVersion);
      throw new Error(`the API server serves no kind ${kind} in ${apiVersion}`);
    }
    return info;
  }

  /** Server-side apply: creates or updates the object to match `obj`, as field manager `manager`. */
  async apply<T extends KubeObject = KubeObject>(obj: KubeObject, manager = "e2e"): Promise<T> {
    if (!obj.apiVersion || !obj.kind || !obj.metadata.name) {
      throw new Error("apply needs apiVersion, kind and metadata.name");
    }
    const path = await this.pathFor(obj.apiVersion, obj.kind, obj.metadata.namespace, obj.metadata.name);
    return this.patch<T>(path, obj, "apply", { fieldManager: manager, force: true });
  }

  /**
   * One watch request: calls `onEvent` per event until the server ends the stream, `signal` aborts
   * it, or nothing (not even a bookmark) arrives for `inactivityMs`. Resolves when the stream ends;
   * rejects on a transport error. An ERROR event (e.g. 410 Gone) is passed to `onEvent`.
   */
  watchOnce(
    path: string,
    query: RequestOptions["query"],
    onEvent: (e: WatchEvent) => void,
    signal: AbortSignal,
    inactivityMs = 90_000,
  ): Promise<void> {
    const url = this.url(path, { ...query, watch: 1, allowWatchBookmarks: true });
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const req = https.request(url, {
        ...this.httpsOptions,
        method: "GET",
        headers: { ...(this.httpsOptions.headers ?? {}), accept: "application/json" },
      });
      const finish = (err?: Error) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        req.destroy();
        if (err) reject(err);
        else resolve();
      };
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(
          () => finish(new Error(`watch ${path}: no event for ${inactivityMs} ms`)),
          inactivityMs,
        );
      };
      const onAbort = () => finish();
      signal.addEventListener("abort", onAbort);
      if (signal.aborted) return finish();
      req.on("error", (e) => finish(e));
      req.on("response", (res) => {
        if (res.statusCode !== 200) {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            finish(
              new KubeError(
                res.statusCode ?? 0,
                res.statusMessage ?? "",
                Buffer.concat(chunks).toString("utf8").slice(0, 500),
                "WATCH",
                path,
              ),
            ),
          );
          return;
        }
        arm();
        let buffered = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          arm();
          buffered += chunk;
          let nl = buffered.indexOf("\n");
          while (nl >= 0) {
            const line = buffered.slice(0, nl).trim();
            buffered = buffered.slice(nl + 1);
            if (line) {
              try {
                onEvent(JSON.parse(line) as WatchEvent);
              } catch (e) {
                return finish(e as Error);
              }
            }
            nl = buffered.indexOf("\n");
          }
        });
        res.on("end", () => finish());
        res.on("error", (e) => finish(e));
      });
      req.end();
    });
  }
}

export interface InformerOptions {
  /** Query for list and watch, e.g. `{ fieldSelector: "spec.nodeName=x" }`. */
  query?: Record<string, string>;
  /** Called after every change to the cache, and after each (re)list. */
  onChange: (type: WatchEvent["type"] | "SYNC", obj: KubeObject | undefined) => void;
  onError?: (err: unknown) => void;
}

const keyOf = (o: KubeObject) => `${o.metadata.namespace ?? ""}/${o.metadata.name ?? ""}`;

/**
 * A list+watch cache of one collection that never gives up: any error, a 410 Gone or a silent
 * stream leads to a backoff and a fresh list, so the cache converges to the server's state.
 */
export class Informer {
  private readonly cache = new Map<string, KubeObject>();
  private readonly abort = new AbortController();
  private running: Promise<void> | undefined;
  private synced = false;
  private syncWaiters: (() => void)[] = [];

  constructor(
    private readonly client: KubeClient,
    private readonly path: string,
    private readonly opts: InformerOptions,
  ) {}

  start(): void {
    this.running ??= this.loop();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
  }

  items(): KubeObject[] {
    return [...this.cache.values()];
  }

  get(namespace: string | undefined, name: string): KubeObject | undefined {
    return this.cache.get(`${namespace ?? ""}/${name}`);
  }

  /** Resolves after the first successful list; rejects if there is none within `timeoutMs`. */
  waitForSync(timeoutMs = 60_000): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`no list of ${this.path} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.syncWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private async loop(): Promise<void> {
    let backoff = 250;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        const list = await this.client.list(this.path, this.opts.query);
        const fresh = new Map(list.items.map((o) => [keyOf(o), o] as const));
        this.cache.clear();
        for (const [k, v] of fresh) this.cache.set(k, v);
        this.synced = true;
        for (const w of this.syncWaiters.splice(0)) w();
        this.opts.onChange("SYNC", undefined);
        let rv = list.metadata.resourceVersion;
        let gone = false;
        while (!signal.aborted && !gone) {
          await this.client.watchOnce(
            this.path,
            { ...this.opts.query, resourceVersion: rv, timeoutSeconds: 60 },
            (e) => {
              if (e.type === "ERROR") {
                gone = true;
                return;
              }
              rv = e.object.metadata.resourceVersion ?? rv;
              if (e.type === "BOOKMARK") return;
              if (e.type === "DELETED") this.cache.delete(keyOf(e.object));
              else this.cache.set(keyOf(e.object), e.object);
              this.opts.onChange(e.type, e.object);
            },
            signal,
          );
          backoff = 250;
        }
      } catch (e) {
        if (signal.aborted) break;
        this.opts.onError?.(e);
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 5_000);
      }
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 120_000,
  intervalMs = 500,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last})` : ""}`,
      );
    }
    await sleep(intervalMs);
  }
}
