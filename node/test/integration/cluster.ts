// Real paxos-node processes on 127.0.0.1 for integration tests: free ports, temporary data
// directories, kill -9 and restart, and a small HTTP client.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const MAIN = join(dirname(fileURLToPath(import.meta.url)), "../../src/main.js");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface MemberProcess {
  readonly name: string;
  readonly peerPort: number;
  readonly httpPort: number;
  readonly dataDir: string;
  readonly logFile: string;
  readonly terminationLog: string;
  child: ChildProcess | null;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null;
}

export interface StatusJson {
  member: string;
  role: string;
  master: string | null;
  members: { name: string; role: string; lag: number | null }[];
  instances: {
    chosen: number;
    executed: number;
    checkpoint: number;
    minKept: number;
    replayedOnStart: number;
    abstainUntil: number | null;
  };
  cleaner: { state: string; until: string | null; holdCount: number };
  transfer: { receiving: { from: string; bytes: number } | null; sending: unknown[] };
}

export interface ClusterOptions {
  readonly token?: string;
  /** Extra flags for every member, e.g. `--hold-count=10`. */
  readonly args?: readonly string[];
}

export class Cluster {
  readonly members: MemberProcess[] = [];
  readonly root: string;
  readonly token: string | undefined;
  private readonly tokenFile: string | undefined;
  private readonly extraArgs: readonly string[];

  private constructor(size: number, ports: number[], opts: ClusterOptions) {
    this.extraArgs = opts.args ?? [];
    this.root = mkdtempSync(join(tmpdir(), "paxos-it-"));
    this.token = opts.token;
    if (opts.token !== undefined) {
      this.tokenFile = join(this.root, "token");
      writeFileSync(this.tokenFile, `${opts.token}\n`);
    }
    for (let i = 0; i < size; i++) {
      const name = `n${i + 1}`;
      this.members.push({
        name,
        peerPort: ports[2 * i]!,
        httpPort: ports[2 * i + 1]!,
        dataDir: join(this.root, name),
        logFile: join(this.root, `${name}.log`),
        terminationLog: join(this.root, `${name}.termination-log`),
        child: null,
        exit: null,
      });
    }
  }

  static async start(size: number, opts: ClusterOptions = {}): Promise<Cluster> {
    const ports: number[] = [];
    while (ports.length < 2 * size) {
      const p = await freePort();
      if (!ports.includes(p)) ports.push(p);
    }
    const c = new Cluster(size, ports, opts);
    for (const m of c.members) c.startMember(m.name);
    return c;
  }

  /**
   * A new member `n<k>` with its own ports and data directory, not started: started, it gets every
   * member (itself included) as --peers, like a learner joining the group.
   */
  async addMember(): Promise<string> {
    const ports: number[] = [];
    const taken = new Set(this.members.flatMap((m) => [m.peerPort, m.httpPort]));
    while (ports.length < 2) {
      const p = await freePort();
      if (!taken.has(p) && !ports.includes(p)) ports.push(p);
    }
    const name = `n${this.members.length + 1}`;
    this.members.push({
      name,
      peerPort: ports[0]!,
      httpPort: ports[1]!,
      dataDir: join(this.root, name),
      logFile: join(this.root, `${name}.log`),
      terminationLog: join(this.root, `${name}.termination-log`),
      child: null,
      exit: null,
    });
    return name;
  }

  /** A new member started and added as a learner through `master`'s admin API (a scale step). */
  async joinLearner(master: string): Promise<string> {
    const name = await this.addMember();
    this.startMember(name);
    const added = await this.admin(master, "POST", "/v1/admin/members", {
      name,
      address: `127.0.0.1:${this.member(name).peerPort}`,
      role: "learner",
    });
    if (added.status !== 200)
      throw new Error(`adding ${name}: HTTP ${added.status} ${JSON.stringify(added.json)}`);
    return name;
  }

  member(name: string): MemberProcess {
    const m = this.members.find((x) => x.name === name);
    if (m === undefined) throw new Error(`no member ${name}`);
    return m;
  }

  /** Starts the member's process; `env` adds environment variables (test hooks) for this start only. */
  startMember(name: string, env: Readonly<Record<string, string>> = {}): void {
    const m = this.member(name);
    if (m.child !== null) throw new Error(`${name} is already running`);
    const peers = this.members.map((x) => `${x.name}=127.0.0.1:${x.peerPort}`).join(",");
    const args = [
      MAIN,
      `--member=${m.name}`,
      `--peers=${peers}`,
      `--peer-port=${m.peerPort}`,
      `--http-port=${m.httpPort}`,
      "--host=127.0.0.1",
      `--data-dir=${m.dataDir}`,
      `--termination-log=${m.terminationLog}`,
      "--log-level=info",
    ];
    if (this.tokenFile !== undefined) args.push(`--token-file=${this.tokenFile}`);
    args.push(...this.extraArgs);
    const child = spawn(process.execPath, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    const chunks: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => chunks.push(d));
    child.stderr.on("data", (d: Buffer) => chunks.push(d));
    m.child = child;
    m.exit = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        writeFileSync(m.logFile, Buffer.concat(chunks), { flag: "a" });
        m.child = null;
        resolve({ code, signal });
      });
    });
  }

  /** SIGSTOP: the process keeps its sockets but answers nothing, as if cut off, until resume(). */
  pause(name: string): void {
    this.member(name).child?.kill("SIGSTOP");
  }

  resume(name: string): void {
    this.member(name).child?.kill("SIGCONT");
  }

  /** kill -9: no chance to flush or close anything. */
  async kill(name: string): Promise<void> {
    const m = this.member(name);
    if (m.child === null) return;
    m.child.kill("SIGKILL");
    await m.exit;
  }

  async stop(name: string): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const m = this.member(name);
    if (m.child === null || m.exit === null) throw new Error(`${name} is not running`);
    const exit = m.exit;
    m.child.kill("SIGTERM");
    return exit;
  }

  async destroy(): Promise<void> {
    await Promise.all(this.members.map((m) => this.kill(m.name)));
    if (process.env.KEEP_TEST_DATA === undefined) rmSync(this.root, { recursive: true, force: true });
  }

  logs(name: string): string {
    try {
      return readFileSync(this.member(name).logFile, "utf8");
    } catch {
      return "";
    }
  }

  url(name: string, path: string): string {
    return `http://127.0.0.1:${this.member(name).httpPort}${path}`;
  }

  async status(name: string): Promise<StatusJson | null> {
    try {
      const r = await fetch(this.url(name, "/v1/status"), { signal: AbortSignal.timeout(2000) });
      return r.ok ? ((await r.json()) as StatusJson) : null;
    } catch {
      return null;
    }
  }

  /** Waits until the running members agree on one master, and returns it. */
  async waitForMaster(timeoutMs = 30_000, among?: readonly string[]): Promise<string> {
    const names = among ?? this.members.filter((m) => m.child !== null).map((m) => m.name);
    let seen = "no answer yet";
    return waitFor(
      timeoutMs,
      () => `a master agreed by every running member (last seen: ${seen})`,
      async () => {
        const statuses = await Promise.all(names.map((n) => this.status(n)));
        seen = names
          .map((n, i) => {
            const st = statuses[i];
            if (st === null || st === undefined)
              return `${n}: ${this.member(n).child === null ? "exited" : "no answer"}`;
            return `${n}: ${st.role}, master ${st.master}, executed ${st.instances.executed}`;
          })
          .join("; ");
        const master = statuses[0]?.master;
        if (master === null || master === undefined) return undefined;
        if (!statuses.every((s) => s?.master === master)) return undefined;
        const own = statuses.find((s) => s?.member === master);
        return own?.role === "master" ? master : undefined;
      },
    );
  }

  async put(name: string, key: string, value: string): Promise<Response> {
    return fetch(this.url(name, `/v1/kv/${encodeURIComponent(key)}`), {
      method: "PUT",
      body: value,
      signal: AbortSignal.timeout(20_000),
    });
  }

  /** An admin call with the cluster's token; resolves to the status and the parsed JSON answer. */
  async admin(
    name: string,
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; json: Record<string, unknown> }> {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (this.token !== undefined) headers.Authorization = `Bearer ${this.token}`;
    const r = await fetch(this.url(name, path), {
      method,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(60_000),
    });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  }

  async get(name: string, key: string, consistency?: "local"): Promise<Response> {
    const q = consistency === undefined ? "" : `?consistency=${consistency}`;
    return fetch(this.url(name, `/v1/kv/${encodeURIComponent(key)}${q}`), {
      signal: AbortSignal.timeout(20_000),
    });
  }
}

/** Every key reads back its value on `member` (linearizable, or its local state with `local`). */
export async function assertAllReadable(
  c: Cluster,
  member: string,
  data: ReadonlyMap<string, string>,
  local = false,
): Promise<void> {
  for (const [key, value] of data) {
    const r = await c.get(member, key, local ? "local" : undefined);
    assert.equal(r.status, 200, `${member}: GET ${key} answered ${r.status}`);
    assert.equal(await r.text(), value, `${member}: ${key} has the wrong value`);
  }
}

/** Waits until `member` has executed everything `other` has chosen. */
export async function waitCaughtUp(
  c: Cluster,
  member: string,
  other: string,
  timeoutMs = 60_000,
): Promise<void> {
  await waitFor(timeoutMs, `${member} to catch up with ${other}`, async () => {
    const [s, o] = await Promise.all([c.status(member), c.status(other)]);
    if (s === null || o === null) return undefined;
    return s.instances.executed >= o.instances.chosen ? true : undefined;
  });
}

export async function waitFor<T>(
  timeoutMs: number,
  what: string | (() => string),
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${typeof what === "string" ? what : what()}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Writers that each put unique keys in a loop, to random members, until stopped or `maxWrites`
 * each. Only writes answered 200 count as acknowledged. `targets`, asked before every write,
 * narrows the running members written to (e.g. to leave out one removed from the group).
 */
export class Writers {
  readonly acknowledged = new Map<string, string>();
  errors = 0;
  private running = true;
  private readonly loops: Promise<void>[];

  constructor(cluster: Cluster, count: number, maxWrites = 5000, targets?: () => readonly string[]) {
    this.loops = Array.from({ length: count }, async (_, w) => {
      for (let i = 0; i < maxWrites && this.running; i++) {
        const allowed = targets?.();
        const alive = cluster.members.filter(
          (m) => m.child !== null && (allowed === undefined || allowed.includes(m.name)),
        );
        const target = alive[Math.floor(Math.random() * alive.length)];
        if (target === undefined) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        const key = `w${w}-${i}`;
        const value = `${key}-${Math.random().toString(36).slice(2)}`;
        try {
          const r = await cluster.put(target.name, key, value);
          await r.arrayBuffer();
          if (r.status === 200) this.acknowledged.set(key, value);
          else this.errors++;
        } catch {
          this.errors++;
        }
      }
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}
