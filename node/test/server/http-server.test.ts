import assert from "node:assert/strict";
import { Agent, request as httpRequest } from "node:http";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { HttpError } from "../../src/server/admin-routes.js";
import {
  type AdminRoutes,
  decodeKey,
  type HttpServerOptions,
  type RunningHttpServer,
  startHttpServer,
} from "../../src/server/http-server.js";
import { createMetrics } from "../../src/server/metrics.js";
import { ServiceError } from "../../src/server/service.js";
import { FakeService, type Reply, request, STATUS, toReply } from "./helpers.js";

const MiB = 1024 * 1024;

interface Harness {
  readonly service: FakeService;
  readonly server: RunningHttpServer;
  readonly logs: string[];
  call(method: string, path: string, opts?: Parameters<typeof request>[3]): Promise<Reply>;
}

async function start(options: Partial<HttpServerOptions> = {}): Promise<Harness> {
  const service = new FakeService();
  const logs: string[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void logs.push(line) });
  const server = await startHttpServer({
    host: "127.0.0.1",
    port: 0,
    service,
    metrics: createMetrics({ member: "kv-0", group: "kv" }),
    logger,
    ...options,
  });
  return { service, server, logs, call: (method, path, opts) => request(server.port, method, path, opts) };
}

function assertError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, reply.text);
  assert.match(String(reply.headers["content-type"]), /^application\/json/);
  const body = reply.json as { error: string; message: string };
  assert.equal(body.error, code);
  assert.equal(typeof body.message, "string");
}

describe("KV routes", () => {
  let h: Harness;
  before(async () => {
    h = await start();
  });
  after(() => h.server.close());

  test("PUT stores the raw bytes and answers the instance", async () => {
    const value = Uint8Array.from([0, 1, 2, 255, 10, 13]);
    const reply = await h.call("PUT", "/v1/kv/alpha", { body: value });
    assert.equal(reply.status, 200);
    assert.match(String(reply.headers["content-type"]), /^application\/json/);
    const { instance } = reply.json as { instance: number };
    assert.ok(Number.isInteger(instance) && instance > 0);
    assert.deepEqual(h.service.data.get("alpha"), value);
  });

  test("PUT with an empty body stores an empty value", async () => {
    const reply = await h.call("PUT", "/v1/kv/empty", { body: "" });
    assert.equal(reply.status, 200);
    assert.equal(h.service.data.get("empty")?.length, 0);
  });

  test("GET answers the value as octet-stream, linearizable by default", async () => {
    h.service.data.set("beta", Buffer.from("hello\0world"));
    const reply = await h.call("GET", "/v1/kv/beta");
    assert.equal(reply.status, 200);
    assert.equal(reply.headers["content-type"], "application/octet-stream");
    assert.deepEqual(reply.body, Buffer.from("hello\0world"));
    assert.equal(h.service.calls.at(-1), "get beta linearizable");
  });

  test("GET ?consistency=local and =linearizable reach the service", async () => {
    h.service.data.set("gamma", Buffer.from("v"));
    assert.equal((await h.call("GET", "/v1/kv/gamma?consistency=local")).status, 200);
    assert.equal(h.service.calls.at(-1), "get gamma local");
    assert.equal((await h.call("GET", "/v1/kv/gamma?consistency=linearizable&x=1")).status, 200);
    assert.equal(h.service.calls.at(-1), "get gamma linearizable");
  });

  test("GET with another consistency is 400", async () => {
    for (const q of ["consistency=strong", "consistency=", "consistency=local&consistency=local"]) {
      assertError(await h.call("GET", `/v1/kv/gamma?${q}`), 400, "bad_request");
    }
  });

  test("GET of an absent key is 404 not_found", async () => {
    assertError(await h.call("GET", "/v1/kv/absent"), 404, "not_found");
  });

  test("HEAD answers the headers of GET without a body", async () => {
    h.service.data.set("head", Buffer.from("12345"));
    const reply = await h.call("HEAD", "/v1/kv/head");
    assert.equal(reply.status, 200);
    assert.equal(reply.headers["content-length"], "5");
    assert.equal(reply.body.length, 0);
  });

  test("DELETE answers the instance", async () => {
    h.service.data.set("gone", Buffer.from("x"));
    const reply = await h.call("DELETE", "/v1/kv/gone");
    assert.equal(reply.status, 200);
    assert.ok(Number.isInteger((reply.json as { instance: number }).instance));
    assert.equal(h.service.data.has("gone"), false);
  });

  test("a key's percent-encoding, %2F and raw '/' are decoded", async () => {
    for (const [path, key] of [
      ["/v1/kv/a%2Fb", "a/b"],
      ["/v1/kv/a/b/c", "a/b/c"],
      ["/v1/kv/sp%20ace", "sp ace"],
      ["/v1/kv/%C3%A9t%C3%A9", "été"],
      ["/v1/kv/%F0%9F%98%80", "😀"],
      ["/v1/kv/%EF%BB%BFbom", "\uFEFFbom"],
      ["/v1/kv/%00nul", "\0nul"],
      ["/v1/kv/a+b", "a+b"],
      ["/v1/kv/..", ".."],
    ] as const) {
      const reply = await h.call("PUT", path, { body: "v" });
      assert.equal(reply.status, 200, `${path}: ${reply.text}`);
      assert.equal(h.service.calls.at(-1), `put ${key}`, path);
    }
  });

  test("keys of 1024 bytes pass, 1025 bytes are 400 bad_key", async () => {
    const ok = [
      "a".repeat(1024),
      "%61".repeat(1024),
      encodeURIComponent("é".repeat(512)),
      encodeURIComponent("😀".repeat(256)),
    ];
    for (const raw of ok) assert.equal((await h.call("PUT", `/v1/kv/${raw}`, { body: "v" })).status, 200);
    const tooLong = [
      "a".repeat(1025),
      "%61".repeat(1025),
      encodeURIComponent(`${"é".repeat(512)}a`),
      encodeURIComponent(`${"😀".repeat(256)}a`),
    ];
    for (const raw of tooLong) {
      const reply = await h.call("PUT", `/v1/kv/${raw}`, { body: "v" });
      assertError(reply, 400, "bad_key");
      assert.match((reply.json as { message: string }).message, /1025 bytes/);
    }
  });

  test("empty keys, bad percent-encoding and invalid UTF-8 are 400 bad_key", async () => {
    const calls = h.service.calls.length;
    for (const raw of [
      "",
      "a%",
      "a%4",
      "a%zz",
      "%g0",
      "%C3",
      "%C3%28",
      "%FF",
      "%C0%AF",
      "%ED%A0%80",
      "%F4%90%80%80",
    ]) {
      for (const method of ["GET", "PUT", "DELETE"]) {
        assertError(
          await h.call(method, `/v1/kv/${raw}`, { body: method === "PUT" ? "v" : undefined }),
          400,
          "bad_key",
        );
      }
    }
    assert.equal(h.service.calls.length, calls, "the service must not be called for a bad key");
  });

  test("other methods on a key are 405 with Allow", async () => {
    for (const method of ["POST", "PATCH", "OPTIONS"]) {
      const reply = await h.call(method, "/v1/kv/x");
      assertError(reply, 405, "method_not_allowed");
      assert.equal(reply.headers.allow, "GET, HEAD, PUT, DELETE");
    }
  });

  test("service errors map to status codes", async () => {
    const cases = [
      [new ServiceError("no_quorum", "no quorum reachable"), 503, "no_quorum", "1"],
      [new ServiceError("overloaded", "too many commands in flight"), 503, "overloaded", "1"],
      [new ServiceError("shutting_down", "member is stopping"), 503, "shutting_down", "1"],
      [new ServiceError("timeout", "outcome unknown"), 504, "timeout", undefined],
    ] as const;
    try {
      for (const [err, status, code, retryAfter] of cases) {
        h.service.failWith = err;
        for (const [method, body] of [
          ["PUT", "v"],
          ["GET", undefined],
          ["DELETE", undefined],
        ] as const) {
          const reply = await h.call(method, "/v1/kv/err", { body });
          assertError(reply, status, code);
          assert.equal((reply.json as { message: string }).message, err.message);
          assert.equal(reply.headers["retry-after"], retryAfter, `${code} ${method}`);
        }
      }
    } finally {
      h.service.failWith = undefined;
    }
  });

  test("an unexpected exception is 500 internal, logged, and the server keeps serving", async () => {
    h.service.failWith = new TypeError("boom in the runtime");
    try {
      assertError(await h.call("PUT", "/v1/kv/x", { body: "v" }), 500, "internal");
    } finally {
      h.service.failWith = undefined;
    }
    assert.ok(h.logs.some((l) => l.includes("boom in the runtime") && l.includes('"level":50')));
    assert.equal((await h.call("GET", "/healthz")).status, 200);
  });

  test("malformed HTTP gets a JSON error too", async () => {
    const rawExchange = (head: Buffer): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = connect(h.server.port, "127.0.0.1", () => socket.write(head));
        const chunks: Buffer[] = [];
        socket.on("data", (c: Buffer) => chunks.push(c));
        socket.on("error", reject);
        socket.on("close", () => resolve(Buffer.concat(chunks).toString("utf8")));
      });
    const rawUtf8 = Buffer.concat([
      Buffer.from("GET /v1/kv/"),
      Buffer.from("é", "utf8"),
      Buffer.from(" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]);
    const bad = await rawExchange(rawUtf8);
    assert.match(bad, /^HTTP\/1\.1 400 /);
    assert.match(bad, /\{"error":"bad_request","message":"malformed HTTP request/);
    const huge = await rawExchange(
      Buffer.from(`GET /v1/kv/${"a".repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`),
    );
    assert.match(huge, /^HTTP\/1\.1 431 /);
    assert.match(huge, /"error":"bad_request"/);
  });

  test("a client that leaves before its answer does not disturb the server", async () => {
    const release = h.service.hold();
    const errorsBefore = h.logs.length;
    const req = httpRequest({
      host: "127.0.0.1",
      port: h.server.port,
      method: "PUT",
      path: "/v1/kv/left",
      agent: false,
    });
    const closed = new Promise((resolve) => req.on("close", resolve));
    req.on("error", () => {});
    req.end("v");
    while (!h.service.calls.includes("put left")) await new Promise((r) => setTimeout(r, 5));
    req.destroy();
    await closed;
    release();
    assert.equal((await h.call("GET", "/healthz")).status, 200);
    assert.equal(h.service.data.has("left"), true);
    assert.equal(h.logs.length, errorsBefore, h.logs.slice(errorsBefore).join(""));
  });

  test("many concurrent keep-alive requests are all answered", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 64 });
    try {
      const replies = await Promise.all(
        Array.from({ length: 300 }, (_, i) => h.call("PUT", `/v1/kv/c${i}`, { body: `v${i}`, agent })),
      );
      assert.ok(replies.every((r) => r.status === 200));
      assert.equal(Buffer.from(h.service.data.get("c299")!).toString(), "v299");
    } finally {
      agent.destroy();
    }
  });
});

describe("value size limit", () => {
  let h: Harness;
  before(async () => {
    h = await start();
  });
  after(() => h.server.close());

  test("1 MiB by default: exactly 1 MiB passes, one byte more is 413", async () => {
    assert.equal((await h.call("PUT", "/v1/kv/big", { body: new Uint8Array(MiB) })).status, 200);
    assert.equal(h.service.data.get("big")?.length, MiB);
    const before = h.service.calls.length;
    assertError(await h.call("PUT", "/v1/kv/big", { body: new Uint8Array(MiB + 1) }), 413, "too_large");
    assert.equal(h.service.calls.length, before);
  });

  test("413 comes from Content-Length before any body byte is sent", async () => {
    const reply = await new Promise<Reply>((resolve, reject) => {
      const req = httpRequest({
        host: "127.0.0.1",
        port: h.server.port,
        method: "PUT",
        path: "/v1/kv/huge",
        agent: false,
        headers: { "content-length": String(64 * MiB) },
      });
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          resolve(toReply(res.statusCode!, res.headers, Buffer.concat(chunks)));
          req.destroy();
        });
      });
      req.on("error", reject);
      req.flushHeaders();
    });
    assertError(reply, 413, "too_large");
  });

  test("413 for a chunked body past the limit", async () => {
    const reply = await new Promise<Reply>((resolve, reject) => {
      const req = httpRequest({
        host: "127.0.0.1",
        port: h.server.port,
        method: "PUT",
        path: "/v1/kv/c",
        agent: false,
      });
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve(toReply(res.statusCode!, res.headers, Buffer.concat(chunks))));
      });
      req.on("error", reject);
      for (let i = 0; i < 24; i++) req.write(new Uint8Array(64 * 1024));
      req.end();
    });
    assertError(reply, 413, "too_large");
    assert.ok(!h.service.calls.includes("put c"));
  });

  test("an endless chunked body gets its 413 at once and is cut off after a bounded amount", async () => {
    // A raw socket: node's own client stops pumping a body once a kept-alive answer has arrived.
    const limit = 512 * MiB;
    const outcome = await new Promise<{ answer: string; sent: number }>((resolve) => {
      const received: Buffer[] = [];
      let sent = 0;
      let done = false;
      const chunk = Buffer.concat([Buffer.from("40000\r\n"), Buffer.alloc(0x40000), Buffer.from("\r\n")]);
      const socket = connect(h.server.port, "127.0.0.1", () => {
        socket.write("PUT /v1/kv/e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        pump();
      });
      const finish = (): void => {
        if (!done) {
          done = true;
          socket.destroy();
          resolve({ answer: Buffer.concat(received).toString("latin1"), sent });
        }
      };
      const pump = (): void => {
        while (!done && sent < limit) {
          sent += chunk.length;
          if (!socket.write(chunk)) {
            socket.once("drain", pump);
            return;
          }
        }
        finish();
      };
      socket.on("data", (c: Buffer) => received.push(c));
      socket.on("error", finish);
      socket.on("close", finish);
    });
    assert.match(outcome.answer, /^HTTP\/1\.1 413 /);
    assert.ok(
      outcome.sent < limit,
      `the server read all ${outcome.sent} bytes instead of cutting the stream`,
    );
    assert.ok(!h.service.calls.includes("put e"));
  });

  test("a client that sends its whole oversized body before reading still gets the 413, without a reset", async () => {
    const body = new Uint8Array(8 * MiB);
    const raw = await new Promise<string>((resolve, reject) => {
      const socket = connect(h.server.port, "127.0.0.1", () => {
        socket.write(
          `PUT /v1/kv/whole HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`,
        );
        socket.end(body);
      });
      const chunks: Buffer[] = [];
      socket.on("data", (c: Buffer) => chunks.push(c));
      socket.on("error", reject);
      socket.on("close", () => resolve(Buffer.concat(chunks).toString("latin1")));
    });
    assert.match(raw, /^HTTP\/1\.1 413 /);
    assert.match(raw, /"error":"too_large"/);
    assert.ok(!h.service.calls.includes("put whole"));
  });

  test("a kept-alive connection is reused after an oversized body was drained", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      assertError(
        await h.call("PUT", "/v1/kv/k", { body: new Uint8Array(2 * MiB), agent }),
        413,
        "too_large",
      );
      const reused = await new Promise<boolean>((resolve, reject) => {
        const req = httpRequest(
          { host: "127.0.0.1", port: h.server.port, path: "/healthz", agent },
          (res) => {
            res.resume();
            res.on("end", () => resolve(req.reusedSocket && res.statusCode === 200));
          },
        );
        req.on("error", reject);
        req.end();
      });
      assert.equal(reused, true);
    } finally {
      agent.destroy();
    }
  });

  test("Expect: 100-continue: an oversized upload is refused before the body is sent", async () => {
    const result = await new Promise<{ continued: boolean; reply: Reply }>((resolve, reject) => {
      let continued = false;
      const req = httpRequest({
        host: "127.0.0.1",
        port: h.server.port,
        method: "PUT",
        path: "/v1/kv/x",
        agent: false,
        headers: { expect: "100-continue", "content-length": String(2 * MiB) },
      });
      req.on("continue", () => {
        continued = true;
      });
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          resolve({ continued, reply: toReply(res.statusCode!, res.headers, Buffer.concat(chunks)) });
          req.destroy();
        });
      });
      req.on("error", reject);
      req.flushHeaders();
    });
    assert.equal(result.continued, false);
    assertError(result.reply, 413, "too_large");
    assert.equal(result.reply.headers.connection, "close");
  });

  test("Expect: 100-continue: an acceptable upload gets 100 Continue, then 200", async () => {
    const body = Buffer.from("continued value");
    const result = await new Promise<{ continued: boolean; reply: Reply }>((resolve, reject) => {
      let continued = false;
      const req = httpRequest({
        host: "127.0.0.1",
        port: h.server.port,
        method: "PUT",
        path: "/v1/kv/cont",
        agent: false,
        headers: { expect: "100-continue", "content-length": String(body.length) },
      });
      req.on("continue", () => {
        continued = true;
        req.end(body);
      });
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ continued, reply: toReply(res.statusCode!, res.headers, Buffer.concat(chunks)) }),
        );
      });
      req.on("error", reject);
      req.flushHeaders();
    });
    assert.equal(result.continued, true);
    assert.equal(result.reply.status, 200);
    assert.deepEqual(Buffer.from(h.service.data.get("cont")!), body);
  });

  test("a smaller configured limit applies", async () => {
    const small = await start({ maxValueBytes: 10 });
    try {
      assert.equal((await small.call("PUT", "/v1/kv/k", { body: "0123456789" })).status, 200);
      assertError(await small.call("PUT", "/v1/kv/k", { body: "0123456789a" }), 413, "too_large");
    } finally {
      await small.server.close();
    }
  });
});

describe("status, probes, metrics and unknown routes", () => {
  let h: Harness;
  before(async () => {
    h = await start();
  });
  after(() => h.server.close());

  test("GET /v1/status is the service's status as JSON", async () => {
    const reply = await h.call("GET", "/v1/status");
    assert.equal(reply.status, 200);
    assert.deepEqual(reply.json, STATUS);
  });

  test("GET /healthz is 200 ok", async () => {
    const reply = await h.call("GET", "/healthz");
    assert.equal(reply.status, 200);
    assert.equal(reply.text.trim(), "ok");
  });

  test("GET /readyz follows service.isReady()", async () => {
    assert.equal((await h.call("GET", "/readyz")).status, 200);
    h.service.ready = false;
    try {
      assertError(await h.call("GET", "/readyz"), 503, "not_ready");
    } finally {
      h.service.ready = true;
    }
  });

  test("GET /metrics is Prometheus text with the paxos_ metrics and counted requests", async () => {
    await h.call("PUT", "/v1/kv/m", { body: "v" });
    await h.call("GET", "/nowhere");
    const reply = await h.call("GET", "/metrics");
    assert.equal(reply.status, 200);
    assert.match(String(reply.headers["content-type"]), /^text\/plain/);
    for (const name of [
      "paxos_proposals_total",
      "paxos_chosen_instances_total",
      "paxos_commit_latency_seconds",
      "paxos_fsync_seconds",
      "paxos_batch_commands",
      "paxos_batch_records",
      "paxos_peer_link_up",
      "paxos_rejected_frames_total",
      "paxos_dropped_messages_total",
      "paxos_late_accepts_total",
      "paxos_instance_chosen",
      "paxos_instance_executed",
      "paxos_http_requests_total",
      "paxos_http_request_duration_seconds",
      "paxos_role",
      "paxos_member_lag",
      "process_cpu_user_seconds_total",
    ]) {
      assert.match(reply.text, new RegExp(`^# TYPE ${name} `, "m"), name);
    }
    assert.match(
      reply.text,
      /^paxos_http_requests_total\{route="PUT \/v1\/kv\/\{key\}",code="200",member="kv-0",group="kv"\} [1-9]/m,
    );
    assert.match(reply.text, /^paxos_http_requests_total\{route="unmatched",code="404",/m);
  });

  test("unknown routes are 404 JSON", async () => {
    for (const path of ["/", "/nowhere", "/v1/kv", "/v1/status/", "/v1/admin/nothing", "/healthz/x"]) {
      assertError(await h.call("GET", path), 404, "not_found");
    }
  });

  test("wrong methods on fixed routes are 405 with Allow", async () => {
    for (const path of ["/v1/status", "/healthz", "/readyz", "/metrics"]) {
      const reply = await h.call("POST", path, { body: "x" });
      assertError(reply, 405, "method_not_allowed");
      assert.equal(reply.headers.allow, "GET, HEAD");
    }
  });
});

function adminRoutes(seen: unknown[]): AdminRoutes {
  return [
    {
      method: "PUT",
      path: "/v1/admin/cleaner",
      handle: ({ body }) => {
        seen.push(body);
        const b = body as { state?: unknown } | undefined;
        if (b?.state !== "running" && b?.state !== "paused") {
          throw new HttpError(400, "bad_request", 'state must be "running" or "paused"');
        }
        return { state: b.state, until: null, holdCount: 7 };
      },
    },
    { method: "GET", path: "/v1/admin/cleaner", handle: () => ({ state: "paused" }) },
    {
      method: "DELETE",
      path: "/v1/admin/members/:name",
      handle: ({ params, query }) => {
        if (params.name === "busy") throw new HttpError(409, "conflict", "a change is in progress");
        if (params.name === "noquorum") throw new ServiceError("no_quorum", "cannot reach a quorum");
        if (params.name === "crash") throw new Error("handler bug");
        return { removed: params.name, force: query.get("force") };
      },
    },
  ];
}

describe("admin routes with a token", () => {
  let h: Harness;
  const seen: unknown[] = [];
  const auth = { authorization: "Bearer s3cr3t" };
  before(async () => {
    h = await start({ token: "s3cr3t", admin: adminRoutes(seen) });
  });
  after(() => h.server.close());

  test("no, wrong or malformed credentials are 401 with WWW-Authenticate", async () => {
    const attempts: Record<string, string>[] = [
      {},
      { authorization: "Bearer wrong" },
      { authorization: "Bearer s3cr3t-and-more" },
      { authorization: "Bearer s3cr" },
      { authorization: "Basic czNjcjN0" },
      { authorization: "s3cr3t" },
      { authorization: "Bearer s3cr3t extra" },
    ];
    for (const headers of attempts) {
      const reply = await h.call("PUT", "/v1/admin/cleaner", { headers, body: '{"state":"running"}' });
      assertError(reply, 401, "unauthorized");
      assert.match(String(reply.headers["www-authenticate"]), /^Bearer/);
    }
    assert.equal(seen.length, 0);
  });

  test("unknown admin routes are 401 too, so routes are not revealed", async () => {
    assertError(await h.call("GET", "/v1/admin/secret-route"), 401, "unauthorized");
    assertError(await h.call("GET", "/v1/admin/secret-route", { headers: auth }), 404, "not_found");
  });

  test("the right token reaches the handler with the parsed body", async () => {
    const reply = await h.call("PUT", "/v1/admin/cleaner", { headers: auth, body: '{"state":"running"}' });
    assert.equal(reply.status, 200);
    assert.deepEqual(reply.json, { state: "running", until: null, holdCount: 7 });
    assert.deepEqual(seen.at(-1), { state: "running" });
    const lower = await h.call("GET", "/v1/admin/cleaner", { headers: { authorization: "bearer s3cr3t" } });
    assert.equal(lower.status, 200);
  });

  test("malformed JSON is 400 bad_request; handler errors keep their status", async () => {
    for (const body of ["{", "not json", '{"state":}', "\xff"]) {
      assertError(await h.call("PUT", "/v1/admin/cleaner", { headers: auth, body }), 400, "bad_request");
    }
    assertError(await h.call("PUT", "/v1/admin/cleaner", { headers: auth, body: "{}" }), 400, "bad_request");
    assertError(await h.call("PUT", "/v1/admin/cleaner", { headers: auth }), 400, "bad_request");
  });

  test("path parameters, query, HttpError, ServiceError and crashes", async () => {
    const ok = await h.call("DELETE", "/v1/admin/members/kv-3?force=true", { headers: auth });
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.json, { removed: "kv-3", force: "true" });
    assertError(await h.call("DELETE", "/v1/admin/members/busy", { headers: auth }), 409, "conflict");
    const nq = await h.call("DELETE", "/v1/admin/members/noquorum", { headers: auth });
    assertError(nq, 503, "no_quorum");
    assert.equal(nq.headers["retry-after"], "1");
    assertError(await h.call("DELETE", "/v1/admin/members/crash", { headers: auth }), 500, "internal");
    assertError(await h.call("DELETE", "/v1/admin/members/%ZZ", { headers: auth }), 400, "bad_request");
    assertError(await h.call("DELETE", "/v1/admin/members/", { headers: auth }), 404, "not_found");
  });

  test("a wrong method on an admin route is 405 with Allow", async () => {
    const reply = await h.call("POST", "/v1/admin/cleaner", { headers: auth, body: "{}" });
    assertError(reply, 405, "method_not_allowed");
    assert.equal(reply.headers.allow, "PUT, GET, HEAD");
  });

  test("admin bodies are limited", async () => {
    const body = JSON.stringify({ state: "running", pad: "x".repeat(70 * 1024) });
    assertError(await h.call("PUT", "/v1/admin/cleaner", { headers: auth, body }), 413, "too_large");
  });
});

describe("admin routes without a token", () => {
  test("are open", async () => {
    const h = await start({ admin: adminRoutes([]) });
    try {
      const reply = await h.call("PUT", "/v1/admin/cleaner", { body: '{"state":"paused"}' });
      assert.equal(reply.status, 200);
      assert.deepEqual(reply.json, { state: "paused", until: null, holdCount: 7 });
    } finally {
      await h.server.close();
    }
  });

  test("invalid route tables are refused at start", async () => {
    const handle = (): unknown => ({});
    await assert.rejects(
      start({ admin: [{ method: "GET", path: "/v1/other", handle }] }),
      /must start with \/v1\/admin\//,
    );
    await assert.rejects(
      start({
        admin: [
          { method: "GET", path: "/v1/admin/x", handle },
          { method: "GET", path: "/v1/admin/x", handle },
        ],
      }),
      /registered twice/,
    );
  });
});

describe("close", () => {
  test("lets an in-flight request finish, refuses new connections, closes idle keep-alive sockets", {
    timeout: 30_000,
  }, async () => {
    const h = await start({ closeGraceMs: 60_000 });
    const agent = new Agent({ keepAlive: true });
    try {
      // An idle pooled socket must not hold close() up.
      assert.equal((await h.call("GET", "/healthz", { agent })).status, 200);
      const release = h.service.hold();
      const inFlight = h.call("PUT", "/v1/kv/late", { body: "v" });
      while (!h.service.calls.includes("put late")) await new Promise((r) => setTimeout(r, 5));
      const closed = h.server.close();
      await assert.rejects(h.call("GET", "/healthz"), /ECONNREFUSED/);
      release();
      const reply = await inFlight;
      assert.equal(reply.status, 200);
      assert.equal(reply.headers.connection, "close");
      await closed;
    } finally {
      agent.destroy();
      await h.server.close();
    }
  });

  test("reports a port already in use", async () => {
    const h = await start();
    try {
      await assert.rejects(start({ port: h.server.port }), /EADDRINUSE/);
    } finally {
      await h.server.close();
    }
  });
});

describe("decodeKey", () => {
  test("valid and invalid keys", () => {
    assert.deepEqual(decodeKey("abc"), { key: "abc" });
    assert.deepEqual(decodeKey("a%2fb"), { key: "a/b" });
    assert.deepEqual(decodeKey("%E2%82%AC"), { key: "€" });
    assert.match((decodeKey("") as { error: string }).error, /empty/);
    assert.match((decodeKey("a%2") as { error: string }).error, /invalid percent-encoding "%2"/);
    assert.match((decodeKey("%80") as { error: string }).error, /not valid UTF-8/);
  });
});
