import { randomBytes } from "node:crypto";
import http from "node:http";
import { performance } from "node:perf_hooks";
import { RawConnection } from "./raw-client.js";

/** How one write is sent to a system under test. */
export interface RequestSpec {
  method: string;
  path: string;
  contentType: string;
  body: Buffer;
}

export type RequestFactory = (key: string, value: Buffer) => RequestSpec;

/**
 * `raw`: one hand-written keep-alive HTTP/1.1 connection per worker (raw-client.ts).
 * `http`: node:http with a keep-alive Agent, which costs 2-3x the CPU per request; on a small
 * machine that CPU is taken from the members under test, and its per-request overhead adds to
 * every measured latency, which hides more of the faster system's advantage.
 */
export type ClientKind = "http" | "raw";

export interface LoadOptions {
  port: number;
  build: RequestFactory;
  /** Workers, each with one request outstanding at a time; also the number of sockets. */
  concurrency: number;
  client: ClientKind;
  seconds: number;
  /** Load run first on the same connections and thrown away. */
  warmupSeconds: number;
  valueBytes?: number;
  requestTimeoutMs?: number;
  /** Ends the run early: workers send nothing new once it fires. */
  signal?: AbortSignal;
}

export interface LoadResult {
  concurrency: number;
  /** Wall time of the measured phase, from its start until the last request returned. */
  seconds: number;
  ops: number;
  errors: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  maxMs: number;
  /**
   * CPU time this load generator used during the measured phase, in percent of one core: it
   * shares the machine with the members, so it shows how much it took from them.
   */
  generatorCpuPercent: number;
  /** Distinct failure descriptions with how often each happened. */
  errorKinds: Record<string, number>;
}

interface PhaseResult {
  latenciesMs: number[];
  errors: number;
  errorKinds: Map<string, number>;
  seconds: number;
  cpuPercent: number;
}

/** Pause after a failed request, so a refused connection does not turn a worker into a busy loop. */
const ERROR_BACKOFF_MS = 10;
const KEY_BYTES = 8;

function sendOne(agent: http.Agent, port: number, spec: RequestSpec, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        method: spec.method,
        path: spec.path,
        agent,
        headers: { "content-type": spec.contentType, "content-length": spec.body.length },
      },
      (res) => {
        const status = res.statusCode ?? 0;
        if (status === 200) {
          res.resume();
          res.once("end", resolve);
        } else {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.once("end", () => {
            const body = Buffer.concat(chunks).toString("utf8").slice(0, 200).trim();
            reject(new Error(`HTTP ${status} ${body}`));
          });
        }
        res.once("error", reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once("error", reject);
    req.end(spec.body);
  });
}

/** Sends one request and settles when its answer is complete: resolves on 200, rejects otherwise. */
type Send = (spec: RequestSpec) => Promise<void>;

/** One `Send` per worker, all sharing the connections that outlive a phase. */
interface Connections {
  forWorker(index: number): Send;
  close(): void;
}

function connections(opts: LoadOptions): Connections {
  const timeoutMs = opts.requestTimeoutMs ?? 10_000;
  if (opts.client === "raw") {
    const conns = Array.from({ length: opts.concurrency }, () => new RawConnection(opts.port));
    return {
      forWorker: (i) => (spec) => conns[i]!.request(spec, timeoutMs),
      close: () => {
        for (const c of conns) c.close();
      },
    };
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.concurrency });
  return {
    forWorker: () => (spec) => sendOne(agent, opts.port, spec, timeoutMs),
    close: () => agent.destroy(),
  };
}

async function phase(conns: Connections, opts: LoadOptions, seconds: number): Promise<PhaseResult> {
  const valueBytes = opts.valueBytes ?? 100;
  const latenciesMs: number[] = [];
  const errorKinds = new Map<string, number>();
  let errors = 0;
  const cpuBefore = process.cpuUsage();
  const startedAt = performance.now();
  const deadline = startedAt + seconds * 1000;

  const worker = async (index: number) => {
    const send = conns.forWorker(index);
    while (performance.now() < deadline && !opts.signal?.aborted) {
      const random = randomBytes(KEY_BYTES + valueBytes);
      const key = random.subarray(0, KEY_BYTES).toString("hex");
      const spec = opts.build(key, random.subarray(KEY_BYTES));
      const t0 = performance.now();
      try {
        await send(spec);
        latenciesMs.push(performance.now() - t0);
      } catch (err) {
        errors++;
        const kind = (err as Error).message;
        errorKinds.set(kind, (errorKinds.get(kind) ?? 0) + 1);
        await new Promise((resolve) => setTimeout(resolve, ERROR_BACKOFF_MS));
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, (_, i) => worker(i)));
  const elapsedSeconds = (performance.now() - startedAt) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const cpuPercent = ((cpu.user + cpu.system) / 1e6 / elapsedSeconds) * 100;
  return { latenciesMs, errors, errorKinds, seconds: elapsedSeconds, cpuPercent };
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(p * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/**
 * Closed-loop load: `concurrency` workers each send a write with a random 16-hex-digit key and
 * `valueBytes` random bytes, wait for the answer, and send the next, until time is up.
 */
export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const conns = connections(opts);
  try {
    if (opts.warmupSeconds > 0) await phase(conns, opts, opts.warmupSeconds);
    const measured = await phase(conns, opts, opts.seconds);
    opts.signal?.throwIfAborted();
    const sorted = Float64Array.from(measured.latenciesMs).sort();
    const ops = sorted.length;
    let total = 0;
    for (const v of sorted) total += v;
    return {
      concurrency: opts.concurrency,
      seconds: measured.seconds,
      ops,
      errors: measured.errors,
      opsPerSec: ops / measured.seconds,
      p50Ms: percentile(sorted, 0.5),
      p99Ms: percentile(sorted, 0.99),
      meanMs: ops > 0 ? total / ops : Number.NaN,
      maxMs: ops > 0 ? sorted[ops - 1]! : Number.NaN,
      generatorCpuPercent: measured.cpuPercent,
      errorKinds: Object.fromEntries(measured.errorKinds),
    };
  } finally {
    conns.close();
  }
}
