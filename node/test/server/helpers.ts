// Test doubles and an HTTP client for the server's unit tests. The fake service stands in for the
// runtime only here; the product is verified end to end with real processes elsewhere.

import { type Agent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import type { KvService, NodeStatus, ReadConsistency } from "../../src/server/service.js";

export const STATUS: NodeStatus = {
  member: "kv-0",
  group: "kv",
  role: "master",
  master: "kv-0",
  members: [
    { name: "kv-0", address: "kv-0.kv-peers:7070", role: "voter", lag: 0 },
    { name: "kv-1", address: "kv-1.kv-peers:7070", role: "voter", lag: 3 },
    { name: "kv-2", address: "kv-2.kv-peers:7070", role: "learner", lag: null },
  ],
  instances: {
    chosen: 42,
    executed: 41,
    checkpoint: 30,
    minKept: 0,
    replayedOnStart: 11,
    abstainUntil: null,
  },
  cleaner: { state: "paused", until: null, holdCount: 100000, lastForcedAt: null },
  transfer: null,
};

export class FakeService implements KvService {
  readonly data = new Map<string, Uint8Array>();
  /** One line per KV call, e.g. `put a/b` or `get k local`. */
  readonly calls: string[] = [];
  ready = true;
  /** Thrown by KV calls while set. */
  failWith: unknown;
  private instance = 0;
  private gate: Promise<void> | undefined;
  private release: (() => void) | undefined;

  /** Makes KV calls wait until the returned function is called. */
  hold(): () => void {
    this.gate = new Promise((resolve) => {
      this.release = resolve;
    });
    return () => {
      this.gate = undefined;
      this.release?.();
    };
  }

  async put(key: string, value: Uint8Array): Promise<{ instance: number }> {
    this.calls.push(`put ${key}`);
    await this.enter();
    this.data.set(key, value);
    return { instance: ++this.instance };
  }

  async delete(key: string): Promise<{ instance: number }> {
    this.calls.push(`delete ${key}`);
    await this.enter();
    this.data.delete(key);
    return { instance: ++this.instance };
  }

  async get(key: string, consistency: ReadConsistency): Promise<Uint8Array | undefined> {
    this.calls.push(`get ${key} ${consistency}`);
    await this.enter();
    return this.data.get(key);
  }

  status(): NodeStatus {
    return STATUS;
  }

  isReady(): boolean {
    return this.ready;
  }

  private async enter(): Promise<void> {
    if (this.gate !== undefined) await this.gate;
    if (this.failWith !== undefined) throw this.failWith;
  }
}

export interface Reply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly text: string;
  readonly json: unknown;
}

export interface RequestOptions {
  readonly headers?: Record<string, string>;
  /** Sent with a Content-Length. */
  readonly body?: string | Uint8Array;
  readonly agent?: Agent;
}

export function request(
  port: number,
  method: string,
  path: string,
  opts: RequestOptions = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: "127.0.0.1", port, method, path, headers: opts.headers, agent: opts.agent ?? false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => resolve(toReply(res.statusCode!, res.headers, Buffer.concat(chunks))));
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

export function toReply(status: number, headers: IncomingHttpHeaders, body: Buffer): Reply {
  const text = body.toString("utf8");
  let json: unknown;
  if (String(headers["content-type"]).startsWith("application/json")) json = JSON.parse(text);
  return { status, headers, body, text, json };
}
