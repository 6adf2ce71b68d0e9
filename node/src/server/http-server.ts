// The client API, admin API, probes and /metrics on node:http. This layer parses and validates,
// maps service errors to status codes and serialises; the KvService decides everything else.
//
// Keys: everything after `/v1/kv/` up to the query string is the key, percent-decoded. A raw '/' is
// part of the key, so `/v1/kv/a/b` and `/v1/kv/a%2Fb` name the same key "a/b". Dot segments are
// not resolved. Node's parser refuses raw non-ASCII bytes in the request line, so non-ASCII keys
// arrive percent-encoded.

import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse, STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { ADMIN_PREFIX, type AdminRoutes, compileAdminRoutes, HttpError } from "./admin-routes.js";
import type { Metrics } from "./metrics.js";
import { type KvService, type ReadConsistency, ServiceError } from "./service.js";

export type { AdminMethod, AdminRequest, AdminRoute, AdminRoutes } from "./admin-routes.js";
export { HttpError } from "./admin-routes.js";

export const DEFAULT_MAX_VALUE_BYTES = 1024 * 1024;
export const MAX_KEY_BYTES = 1024;
const MAX_ADMIN_BODY_BYTES = 64 * 1024;
/** How much of an unwanted request body lingerOverBody reads and discards before cutting the connection. */
const DISCARD_LIMIT_BYTES = 64 * 1024 * 1024;
const DISCARD_TIMEOUT_MS = 10_000;
/** Longer than common client pools' idle timeouts, so the server is rarely the side closing a pooled socket. */
const KEEP_ALIVE_TIMEOUT_MS = 65_000;
const DEFAULT_CLOSE_GRACE_MS = 10_000;

export interface HttpServerOptions {
  readonly host: string;
  readonly port: number;
  readonly service: KvService;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** When set, `/v1/admin/` calls must send `Authorization: Bearer <token>`. */
  readonly token?: string;
  /** Largest accepted value; default 1 MiB. */
  readonly maxValueBytes?: number;
  readonly admin?: AdminRoutes;
  /** How long close() lets in-flight requests finish before cutting their connections; default 10 s. */
  readonly closeGraceMs?: number;
}

export interface RunningHttpServer {
  readonly port: number;
  /** Stops accepting, lets in-flight requests finish (bounded by closeGraceMs), closes every connection. */
  close(): Promise<void>;
}

const JSON_TYPE = "application/json";
const TEXT_TYPE = "text/plain; charset=utf-8";
const KV_METHODS = "GET, HEAD, PUT, DELETE";
const READ_METHODS = "GET, HEAD";
const RETRY_AFTER_SECONDS = "1";

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Percent-decodes and validates a raw key taken from the request path. */
export function decodeKey(raw: string): { key: string } | { error: string } {
  if (raw.length === 0) return { error: "the key is empty" };
  if (!raw.includes("%")) {
    // The request line is ASCII, so without escapes every character is one byte of valid UTF-8.
    return raw.length > MAX_KEY_BYTES ? tooLong(raw.length) : { key: raw };
  }
  const src = Buffer.from(raw, "latin1");
  const bytes = new Uint8Array(src.length);
  let n = 0;
  for (let i = 0; i < src.length; ) {
    const c = src[i]!;
    if (c !== 0x25) {
      bytes[n++] = c;
      i++;
      continue;
    }
    const hi = hexValue(src[i + 1]);
    const lo = hexValue(src[i + 2]);
    if (hi < 0 || lo < 0) {
      return { error: `invalid percent-encoding "${raw.slice(i, i + 3)}" at character ${i} of the key` };
    }
    bytes[n++] = (hi << 4) | lo;
    i += 3;
  }
  if (n > MAX_KEY_BYTES) return tooLong(n);
  try {
    return { key: utf8.decode(bytes.subarray(0, n)) };
  } catch {
    return { error: "the key is not valid UTF-8 once percent-decoded" };
  }
}

function tooLong(bytes: number): { error: string } {
  return { error: `the key is ${bytes} bytes; keys are 1..${MAX_KEY_BYTES} bytes of UTF-8` };
}

function hexValue(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/** The client went away while its body was being read: nobody is left to answer. */
class ClientGone extends Error {}

interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly started: number;
  /** The client sent `Expect: 100-continue` and holds its body back until we say `100 Continue`. */
  readonly expectsContinue: boolean;
  continued: boolean;
  answered: boolean;
  /** Metric label: a route template, never the raw path, so the label set stays bounded. */
  route: string;
}

export function startHttpServer(opts: HttpServerOptions): Promise<RunningHttpServer> {
  const { service, metrics, logger } = opts;
  const maxValueBytes = opts.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
  const adminRouter = compileAdminRoutes(opts.admin ?? []);
  const tokenDigest = opts.token === undefined ? undefined : sha256(opts.token);
  const closeGraceMs = opts.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS;
  let closing = false;

  const server = createServer({ keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS, noDelay: true });
  server.on("request", (req: IncomingMessage, res: ServerResponse) => dispatch(req, res, false));
  // Answering before `100 Continue` lets an oversized or misaddressed upload be refused unsent.
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => dispatch(req, res, true));
  // Malformed HTTP never reaches a handler; answer it in the API's JSON error shape too.
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === "ECONNRESET" || !socket.writable) {
      socket.destroy();
      return;
    }
    const status =
      err.code === "HPE_HEADER_OVERFLOW" ? 431 : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
    const body = JSON.stringify({ error: "bad_request", message: `malformed HTTP request (${err.code})` });
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: ${JSON_TYPE}\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
    metrics.observeHttpRequest("malformed", status, 0);
  });

  function dispatch(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void {
    const ex: Exchange = {
      req,
      res,
      started: performance.now(),
      expectsContinue,
      continued: false,
      answered: false,
      route: "unmatched",
    };
    route(ex).catch((err: unknown) => {
      try {
        fail(ex, err);
      } catch (failure) {
        logger.error({ err: failure, route: ex.route }, "could not answer an http request");
        res.destroy();
      }
    });
  }

  async function route(ex: Exchange): Promise<void> {
    const url = ex.req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const query = q < 0 ? "" : url.slice(q + 1);
    // HEAD is GET without a body; node:http drops the body of a HEAD answer by itself.
    const method = ex.req.method === "HEAD" ? "GET" : (ex.req.method ?? "");

    if (path.startsWith("/v1/kv/")) return kv(ex, method, path.slice("/v1/kv/".length), query);
    if (path.startsWith(ADMIN_PREFIX)) return admin(ex, method, path, query);
    switch (path) {
      case "/healthz":
        ex.route = "/healthz";
        if (method !== "GET") return methodNotAllowed(ex, READ_METHODS);
        return send(ex, 200, TEXT_TYPE, "ok\n");
      case "/readyz":
        ex.route = "/readyz";
        if (method !== "GET") return methodNotAllowed(ex, READ_METHODS);
        if (service.isReady()) return send(ex, 200, TEXT_TYPE, "ready\n");
        return sendError(ex, 503, "not_ready", "not a voting or learning member within the lag bound yet");
      case "/v1/status":
        ex.route = "/v1/status";
        if (method !== "GET") return methodNotAllowed(ex, READ_METHODS);
        return send(ex, 200, JSON_TYPE, JSON.stringify(service.status()));
      case "/metrics":
        ex.route = "/metrics";
        if (method !== "GET") return methodNotAllowed(ex, READ_METHODS);
        return send(ex, 200, metrics.registry.contentType, await metrics.registry.metrics());
    }
    return sendError(ex, 404, "not_found", `no route for ${path}`);
  }

  async function kv(ex: Exchange, method: string, rawKey: string, query: string): Promise<void> {
    if (method !== "GET" && method !== "PUT" && method !== "DELETE") {
      ex.route = "/v1/kv/{key}";
      return methodNotAllowed(ex, KV_METHODS);
    }
    ex.route = `${method} /v1/kv/{key}`;
    const decoded = decodeKey(rawKey);
    if ("error" in decoded) return sendError(ex, 400, "bad_key", decoded.error);
    const key = decoded.key;

    if (method === "GET") {
      const consistency = parseConsistency(query);
      if (consistency === undefined) {
        const message = 'consistency must be "linearizable" (the default) or "local"';
        return sendError(ex, 400, "bad_request", message);
      }
      const value = await service.get(key, consistency);
      if (value === undefined) return sendError(ex, 404, "not_found", "no such key");
      return send(ex, 200, "application/octet-stream", value);
    }
    if (method === "DELETE") {
      const { instance } = await service.delete(key);
      return send(ex, 200, JSON_TYPE, `{"instance":${instance}}`);
    }
    const value = await readBody(ex, maxValueBytes);
    if (value === undefined) {
      return sendError(ex, 413, "too_large", `the value exceeds the limit of ${maxValueBytes} bytes`);
    }
    const { instance } = await service.put(key, value);
    return send(ex, 200, JSON_TYPE, `{"instance":${instance}}`);
  }

  async function admin(ex: Exchange, method: string, path: string, query: string): Promise<void> {
    ex.route = "/v1/admin";
    // Before routing, so that an unauthenticated caller learns nothing about which routes exist.
    if (tokenDigest !== undefined && !authorized(ex.req.headers.authorization, tokenDigest)) {
      ex.res.setHeader("www-authenticate", 'Bearer realm="paxos-node admin"');
      return sendError(ex, 401, "unauthorized", "admin calls need the header Authorization: Bearer <token>");
    }
    const match = adminRouter.match(method, path);
    if (match.kind === "not_found") return sendError(ex, 404, "not_found", `no route for ${path}`);
    if (match.kind === "method_not_allowed") {
      const allow = match.allow.includes("GET") ? [...match.allow, "HEAD"] : match.allow;
      return methodNotAllowed(ex, allow.join(", "));
    }
    ex.route = `${match.route.method} ${match.route.path}`;
    const raw = hasBody(ex.req) ? await readBody(ex, MAX_ADMIN_BODY_BYTES) : new Uint8Array(0);
    if (raw === undefined) {
      const message = `admin request bodies are limited to ${MAX_ADMIN_BODY_BYTES} bytes`;
      return sendError(ex, 413, "too_large", message);
    }
    let body: unknown;
    if (raw.length > 0) {
      try {
        body = JSON.parse(utf8.decode(raw));
      } catch {
        return sendError(ex, 400, "bad_request", "the request body is not valid JSON");
      }
    }
    const result = await match.route.handle({
      body,
      params: match.params,
      query: new URLSearchParams(query),
    });
    return send(ex, 200, JSON_TYPE, JSON.stringify(result ?? {}));
  }

  /**
   * Collects the body, or resolves `undefined` as soon as it exceeds `limit` — at once, without
   * reading anything, when Content-Length already says so.
   */
  function readBody(ex: Exchange, limit: number): Promise<Uint8Array | undefined> {
    const { req } = ex;
    const declared = req.headers["content-length"];
    if (declared !== undefined && Number(declared) > limit) return Promise.resolve(undefined);
    if (ex.expectsContinue) {
      ex.res.writeContinue();
      ex.continued = true;
    }
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer): void => {
        size += chunk.length;
        if (size <= limit) {
          chunks.push(chunk);
          return;
        }
        // Stop collecting; lingerOverBody discards a bounded rest once the 413 is out.
        req.pause();
        cleanup();
        resolve(undefined);
      };
      const onEnd = (): void => {
        cleanup();
        // A copy: chunks are views into the socket's read buffers, which a retained value would pin.
        const value = new Uint8Array(size);
        let offset = 0;
        for (const c of chunks) {
          value.set(c, offset);
          offset += c.length;
        }
        resolve(value);
      };
      const onGone = (): void => {
        cleanup();
        reject(new ClientGone());
      };
      const onClose = (): void => {
        if (!req.complete) onGone();
      };
      const cleanup = (): void => {
        req.off("data", onData);
        req.off("end", onEnd);
        req.off("error", onGone);
        req.off("close", onClose);
      };
      req.on("data", onData);
      req.on("end", onEnd);
      req.on("error", onGone);
      req.on("close", onClose);
    });
  }

  function send(ex: Exchange, status: number, contentType: string, body: string | Uint8Array): void {
    const { req, res } = ex;
    if (ex.answered || res.destroyed) return;
    ex.answered = true;
    const bodyUnread = !req.complete && hasBody(req);
    if (bodyUnread && ex.expectsContinue && !ex.continued) {
      // The client holds its body back and may never send it: the connection cannot be reused.
      res.setHeader("connection", "close");
    } else if (bodyUnread) {
      lingerOverBody(ex);
    } else if (closing) {
      res.setHeader("connection", "close");
    }
    res.writeHead(status, {
      "content-type": contentType,
      "content-length": typeof body === "string" ? Buffer.byteLength(body) : body.byteLength,
    });
    res.end(body);
    metrics.observeHttpRequest(ex.route, status, (performance.now() - ex.started) / 1000);
    if (logger.isLevelEnabled("debug")) {
      logger.debug({ method: req.method, route: ex.route, status }, "http request");
    }
  }

  /**
   * For an answer given while (part of) the request body is unread. Closing a connection with
   * unread data makes the kernel send RST, which can destroy the answer before the client reads it
   * (clients that send the whole body before reading lose it). So the rest is read and discarded,
   * within bounds, and only then is a connection closed that must not be reused; node:http would
   * close it right after the answer, or drain a kept-alive one without any bound.
   */
  function lingerOverBody(ex: Exchange): void {
    const { req, res } = ex;
    const closeAfterBody = closing || !res.shouldKeepAlive;
    // The client already said `Connection: close` (or we are closing); this only stops node:http from
    // closing the socket before the body is drained. We close it below.
    res.shouldKeepAlive = true;
    let discarded = 0;
    const cleanup = (): void => {
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("close", cleanup);
    };
    const giveUp = (): void => {
      cleanup();
      req.socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      discarded += chunk.length;
      if (discarded > DISCARD_LIMIT_BYTES) giveUp();
    };
    const onEnd = (): void => {
      cleanup();
      if (closeAfterBody) req.socket.end();
    };
    const timer = setTimeout(giveUp, DISCARD_TIMEOUT_MS);
    timer.unref();
    req.on("data", onData);
    req.on("end", onEnd);
    // The client went away.
    req.on("close", cleanup);
    req.resume();
  }

  function sendError(ex: Exchange, status: number, code: string, message: string): void {
    send(ex, status, JSON_TYPE, JSON.stringify({ error: code, message }));
  }

  function methodNotAllowed(ex: Exchange, allow: string): void {
    ex.res.setHeader("allow", allow);
    sendError(ex, 405, "method_not_allowed", `${ex.req.method} is not allowed here; use ${allow}`);
  }

  function fail(ex: Exchange, err: unknown): void {
    if (err instanceof ClientGone) return;
    if (ex.answered) {
      logger.error({ err, method: ex.req.method, route: ex.route }, "http request failed after its answer");
      return;
    }
    if (err instanceof ServiceError) {
      if (err.code === "timeout") {
        sendError(ex, 504, "timeout", err.message);
      } else {
        // Every other code means "certainly not proposed", so the client may retry safely.
        ex.res.setHeader("retry-after", RETRY_AFTER_SECONDS);
        sendError(ex, 503, err.code, err.message);
      }
    } else if (err instanceof HttpError) {
      sendError(ex, err.status, err.code, err.message);
    } else {
      logger.error({ err, method: ex.req.method, route: ex.route }, "http request failed");
      sendError(ex, 500, "internal", "internal error; see the member's log");
    }
  }

  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: opts.host, port: opts.port, backlog: 1024 }, () => {
      server.off("error", reject);
      server.on("error", (err) => logger.error({ err }, "http server error"));
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : opts.port;
      let closed: Promise<void> | undefined;
      resolve({
        port,
        close(): Promise<void> {
          closed ??= new Promise((done) => {
            closing = true;
            const force = setTimeout(() => server.closeAllConnections(), closeGraceMs);
            force.unref();
            server.close(() => {
              clearTimeout(force);
              done();
            });
            // Busy connections close after their current answer, which carries `Connection: close`.
            server.closeIdleConnections();
          });
          return closed;
        },
      });
    });
  });
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

function parseConsistency(query: string): ReadConsistency | undefined {
  if (query === "") return "linearizable";
  const values = new URLSearchParams(query).getAll("consistency");
  if (values.length === 0) return "linearizable";
  if (values.length > 1) return undefined;
  const v = values[0];
  return v === "linearizable" || v === "local" ? v : undefined;
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/** Compares digests, so neither the token's bytes nor its length leak through timing. */
function authorized(header: string | undefined, expected: Buffer): boolean {
  if (header === undefined) return false;
  const m = /^Bearer +(\S+) *$/i.exec(header);
  return m !== null && timingSafeEqual(sha256(m[1]!), expected);
}
