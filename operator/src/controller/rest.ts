// A raw JSON client of the Kubernetes API with the credentials of a KubeConfig.
//
// Raw on purpose: the generated clients of @kubernetes/client-node send the wrong content type for
// patches, and their Watch neither times out on a silent stream nor reports 410 Gone as such.
import http from "node:http";
import https from "node:https";
import type { KubeConfig } from "@kubernetes/client-node";

/** The parts of an object's metadata its readers use; the rest passes through untouched. */
export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[];
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  creationTimestamp?: string;
  finalizers?: string[];
  managedFields?: { manager?: string; operation?: string; subresource?: string; time?: string }[];
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  // biome-ignore lint/suspicious/noExplicitAny: objects of any kind pass through this client
  [field: string]: any;
}

export interface KubeList<T extends KubeObject = KubeObject> {
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export interface WatchEvent<T extends KubeObject = KubeObject> {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: T;
}

/** An error answer of the API server, with the reason of its Status (NotFound, Conflict, Expired, ...). */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly reason: string,
    message: string,
    readonly method: string,
    readonly path: string,
  ) {
    super(`${method} ${path}: ${statusCode} ${reason}: ${message}`);
    this.name = "ApiError";
  }
}

export const isNotFound = (e: unknown): boolean => e instanceof ApiError && e.statusCode === 404;
export const isConflict = (e: unknown): boolean => e instanceof ApiError && e.statusCode === 409;
export const isGone = (e: unknown): boolean => e instanceof ApiError && e.statusCode === 410;

export type PatchType = "merge" | "strategic" | "json" | "apply";
export const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  strategic: "application/strategic-merge-patch+json",
  json: "application/json-patch+json",
  apply: "application/apply-patch+yaml",
};

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  body?: unknown;
  contentType?: string;
  query?: Query;
  timeoutMs?: number;
}

export interface WatchOptions {
  /** Aborts the watch quietly (the returned promise resolves). */
  signal: AbortSignal;
  /** Fails the watch when nothing, not even a bookmark, arrives for this long. */
  inactivityMs: number;
}

function parseStatus(text: string, fallbackReason: string): { reason: string; message: string } {
  try {
    const status = JSON.parse(text) as { reason?: string; message?: string };
    return { reason: status.reason ?? fallbackReason, message: status.message ?? text.slice(0, 2000) };
  } catch {
    return { reason: fallbackReason, message: text.slice(0, 2000) };
  }
}

export class KubeRest {
  /** Pools the connections of this client; tests destroy its sockets to break watches. */
  readonly agent: http.Agent;
  private readonly transport: typeof https | typeof http;

  private constructor(
    private readonly kc: KubeConfig,
    readonly server: string,
    agent: http.Agent,
  ) {
    this.agent = agent;
    this.transport = server.startsWith("https:") ? https : http;
  }

  static async fromKubeConfig(kc: KubeConfig): Promise<KubeRest> {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig has no current cluster");
    const server = cluster.server.replace(/\/+$/, "");
    const opts: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(opts);
    const agent = server.startsWith("https:")
      ? new https.Agent({
          ca: opts.ca,
          cert: opts.cert,
          key: opts.key,
          keepAlive: true,
          ...(opts.servername ? { servername: opts.servername } : {}),
          ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
        })
      : new http.Agent({ keepAlive: true });
    return new KubeRest(kc, server, agent);
  }

  /** Destroys pooled connections so the process can exit. */
  close(): void {
    this.agent.destroy();
  }

  /** Headers are fetched per request: bearer tokens of exec plugins and service accounts rotate. */
  private async headers(): Promise<http.OutgoingHttpHeaders> {
    const opts: https.RequestOptions = {};
    await this.kc.applyToHTTPSOptions(opts);
    const headers: http.OutgoingHttpHeaders = { ...(opts.headers as http.OutgoingHttpHeaders | undefined) };
    if (opts.auth) headers.authorization = `Basic ${Buffer.from(opts.auth).toString("base64")}`;
    return headers;
  }

  url(path: string, query?: Query): URL {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    return url;
  }

  async request<T = KubeObject>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const url = this.url(path, opts.query);
    const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    const headers = await this.headers();
    const text = await new Promise<string>((resolve, reject) => {
      const req = this.transport.request(
        url,
        {
          agent: this.agent,
          method,
          headers: {
            ...headers,
            accept: "application/json",
            // Explicit length: node frames no DELETE body on its own, and an unframed body poisons
            // the kept-alive connection for the next request.
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
            const body = Buffer.concat(chunks).toString("utf8");
            const code = res.statusCode ?? 0;
            if (code >= 200 && code < 300) return resolve(body);
            const { reason, message } = parseStatus(body, res.statusMessage ?? "");
            reject(new ApiError(code, reason, message, method, url.pathname));
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${url.pathname}: no answer in time`)));
      req.on("error", reject);
      req.end(payload);
    });
    return (text ? JSON.parse(text) : {}) as T;
  }

  get<T = KubeObject>(path: string, query?: Query): Promise<T> {
    return this.request<T>("GET", path, { query });
  }

  create<T = KubeObject>(path: string, body: unknown): Promise<T> {
    return this.request<T>("POST", path, { body });
  }

  /** PUT: fails with 409 Conflict when `body.metadata.resourceVersion` is stale. */
  replace<T = KubeObject>(path: string, body: unknown): Promise<T> {
    return this.request<T>("PUT", path, { body });
  }

  patch<T = KubeObject>(path: string, body: unknown, type: PatchType, query?: Query): Promise<T> {
    return this.request<T>("PATCH", path, { body, contentType: PATCH_CONTENT_TYPES[type], query });
  }

  delete(path: string): Promise<KubeObject> {
    return this.request("DELETE", path);
  }

  /**
   * One watch request, `watch=1&allowWatchBookmarks=true` added to `query`. Calls `onEvent` per
   * event; resolves when the server ends the stream or `signal` aborts; rejects on a transport
   * error, an error status (410 Gone as an ApiError), or `inactivityMs` without any data.
   */
  async watch(
    path: string,
    query: Query,
    onEvent: (e: WatchEvent) => void,
    opts: WatchOptions,
  ): Promise<void> {
    const url = this.url(path, { ...query, watch: 1, allowWatchBookmarks: true });
    const headers = await this.headers();
    const { signal, inactivityMs } = opts;
    return await new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      const req = this.transport.request(url, {
        agent: this.agent,
        method: "GET",
        headers: { ...headers, accept: "application/json" },
      });
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        req.destroy();
        if (err) reject(err);
        else resolve();
      };
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(
          () => finish(new Error(`watch ${url.pathname}: nothing received for ${inactivityMs} ms`)),
          inactivityMs,
        );
      };
      const onAbort = () => finish();
      if (signal.aborted) return finish();
      signal.addEventListener("abort", onAbort);
      // Also covers a server that accepts the connection but never answers.
      arm();
      req.on("error", (e) => finish(e));
      req.on("response", (res) => {
        if (res.statusCode !== 200) {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", (e) => finish(e));
          res.on("end", () => {
            const { reason, message } = parseStatus(
              Buffer.concat(chunks).toString("utf8"),
              res.statusMessage ?? "",
            );
            finish(new ApiError(res.statusCode ?? 0, reason, message, "WATCH", url.pathname));
          });
          return;
        }
        arm();
        let buffered = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          arm();
          buffered += chunk;
          for (let nl = buffered.indexOf("\n"); nl >= 0 && !settled; nl = buffered.indexOf("\n")) {
            const line = buffered.slice(0, nl).trim();
            buffered = buffered.slice(nl + 1);
            if (!line) continue;
            let event: WatchEvent;
            try {
              event = JSON.parse(line) as WatchEvent;
            } catch {
              return finish(new Error(`watch ${url.pathname}: undecodable event ${line.slice(0, 200)}`));
            }
            try {
              onEvent(event);
            } catch (e) {
              return finish(e as Error);
            }
          }
        });
        res.on("end", () => finish());
        res.on("aborted", () => finish(new Error(`watch ${url.pathname}: connection aborted`)));
        res.on("error", (e) => finish(e));
        res.on("close", () => finish(new Error(`watch ${url.pathname}: connection closed`)));
      });
      req.end();
    });
  }
}
