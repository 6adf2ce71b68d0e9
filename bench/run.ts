import { mkdirSync, mkdtempSync, statfsSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type EtcdCluster, ensureEtcd, etcdPut, startEtcdCluster } from "./etcd.js";
import { type ClientKind, type LoadResult, type RequestFactory, runLoad } from "./load.js";
import { checkPaxosNode, type PaxosGroup, paxosPut, startPaxosGroup } from "./paxos.js";
import { registerTempDir, removeTempDirs, stopAll } from "./procs.js";
import { type ReferenceSystem, referencePut, startBareServer, startReferenceGroup } from "./reference.js";

const USAGE = `npm run bench -- [options]

Starts a three-member paxos-node group and a three-member etcd cluster on 127.0.0.1, drives
each at its master/leader with the same closed-loop load (100-byte values, random keys) at
each concurrency level, and prints ops/s, p50 and p99 with the paxos/etcd ratios.

  --seconds N          measured seconds per system and level (default: BENCH_SECONDS or 10)
  --warmup N           unmeasured seconds before each measurement (default 1)
  --prime N            unmeasured seconds of load at concurrency 64, then N more at concurrency 1,
                       for each system once it is up, before the first level (default 10; 0 skips it)
  --concurrency LIST   comma-separated levels (default 1,16,64,256)
  --rounds N           measure each level N times, the systems alternating, and report each
                       system's median run and the spread of the per-round ratios (default 1;
                       single runs on a shared 2-core machine move by 20-40%)
  --client KIND        load generator client: "raw" (minimal keep-alive HTTP/1.1; default) or
                       "http" (node:http with a keep-alive Agent, 2-3x the CPU per request)
  --only SYSTEM        run only "etcd" or only "paxos" (no ratios, no targets)
  --with LIST          also measure reference systems, each against etcd (see bench/README.md):
                       "reference" (the least work a replicated Node store must do per write
                       here) and "bare" (HTTP alone, durable nowhere)
  --json FILE          also write the results as JSON to FILE
  --help               this text`;

type System = "paxos" | "etcd";
type Reference = "reference" | "bare";
const REFERENCES: readonly Reference[] = ["reference", "bare"];
/**
 * Priming loads: the batched paths of high concurrency, then the one-write-at-a-time paths of
 * concurrency 1, which run other code (measured: 10 s at 64 alone left paxos-node compiling the
 * concurrency-1 paths during that level's run, 389-434 ops/s against 499-560 once primed there too).
 */
const PRIME_CONCURRENCIES = [64, 1];

interface Options {
  seconds: number;
  rounds: number;
  warmupSeconds: number;
  primeSeconds: number;
  levels: number[];
  client: ClientKind;
  systems: System[];
  references: Reference[];
  jsonFile: string | undefined;
}

function positiveNumber(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${flag} must be a positive number, got "${text}"`);
  return n;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: "string" },
      warmup: { type: "string" },
      prime: { type: "string" },
      concurrency: { type: "string" },
      rounds: { type: "string" },
      client: { type: "string" },
      only: { type: "string" },
      with: { type: "string" },
      json: { type: "string" },
      help: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return undefined;
  }
  const seconds = positiveNumber("--seconds", values.seconds ?? process.env.BENCH_SECONDS ?? "10");
  const warmupSeconds = values.warmup === undefined ? 1 : Number(values.warmup);
  if (!Number.isFinite(warmupSeconds) || warmupSeconds < 0) {
    throw new Error(`--warmup must be a number >= 0, got "${values.warmup}"`);
  }
  const primeSeconds = values.prime === undefined ? 10 : Number(values.prime);
  if (!Number.isFinite(primeSeconds) || primeSeconds < 0) {
    throw new Error(`--prime must be a number >= 0, got "${values.prime}"`);
  }
  const rounds = Number(values.rounds ?? "1");
  if (!Number.isInteger(rounds) || rounds < 1)
    throw new Error(`--rounds takes an integer >= 1, got "${values.rounds}"`);
  const levels = (values.concurrency ?? "1,16,64,256").split(",").map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 1) throw new Error(`--concurrency takes positive integers, got "${s}"`);
    return n;
  });
  const client = values.client ?? "raw";
  if (client !== "http" && client !== "raw")
    throw new Error(`--client takes "http" or "raw", got "${client}"`);
  let systems: System[] = ["paxos", "etcd"];
  if (values.only !== undefined) {
    if (values.only !== "paxos" && values.only !== "etcd") {
      throw new Error(`--only takes "paxos" or "etcd", got "${values.only}"`);
    }
    systems = [values.only];
  }
  const references = (values.with ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s) => {
      if (!REFERENCES.includes(s as Reference)) {
        throw new Error(`--with takes ${REFERENCES.map((r) => `"${r}"`).join(" and ")}, got "${s}"`);
      }
      return s as Reference;
    });
  return {
    seconds,
    rounds,
    warmupSeconds,
    primeSeconds,
    levels,
    client,
    systems,
    references,
    jsonFile: values.json,
  };
}

interface Row {
  concurrency: number;
  paxos: LoadResult | undefined;
  etcd: LoadResult | undefined;
  /** paxos ops/s divided by etcd ops/s, of their median runs. */
  opsRatio: number | undefined;
  /** The ratio of each round, in round order (one per round; empty without both systems). */
  roundRatios: number[];
  /** paxos p99 divided by etcd p99: below 1 means paxos has the better tail. */
  p99Ratio: number | undefined;
  /** The reference systems asked for with --with. */
  references: Partial<Record<Reference, LoadResult>>;
}

interface Target {
  name: string;
  verdict: "PASS" | "FAIL" | "NOT MEASURED";
  detail: string;
}

function evaluateTargets(rows: Row[]): Target[] {
  const at = (c: number) => rows.find((r) => r.concurrency === c);
  const targets: Target[] = [];
  const check = (c: number, name: string, test: (row: Row) => boolean, detail: (row: Row) => string) => {
    const row = at(c);
    if (!row?.paxos || !row.etcd || row.opsRatio === undefined) {
      targets.push({ name, verdict: "NOT MEASURED", detail: `needs both systems at concurrency ${c}` });
      return;
    }
    const clean = row.paxos.errors === 0;
    targets.push({
      name,
      verdict: clean && test(row) ? "PASS" : "FAIL",
      detail: detail(row) + (clean ? "" : `, but paxos had ${row.paxos.errors} errors`),
    });
  };
  check(
    1,
    "concurrency 1: paxos ops/s >= 2x etcd",
    (r) => r.opsRatio! >= 2,
    (r) => `ratio ${fmt(r.opsRatio, 2)}x${roundsText(r)}`,
  );
  check(
    64,
    "concurrency 64: paxos ops/s >= 4x etcd, paxos p99 <= etcd p99",
    (r) => r.opsRatio! >= 4 && r.paxos!.p99Ms <= r.etcd!.p99Ms,
    (r) =>
      `ratio ${fmt(r.opsRatio, 2)}x${roundsText(r)}, p99 ${fmt(r.paxos!.p99Ms, 2)} ms vs ${fmt(r.etcd!.p99Ms, 2)} ms`,
  );
  return targets;
}

function roundRatiosText(r: Row): string {
  return r.roundRatios.map((x) => fmt(x, 2)).join(", ");
}

function roundsText(r: Row): string {
  return r.roundRatios.length > 1 ? ` (rounds: ${roundRatiosText(r)})` : "";
}

/** The run with the median ops/s (the lower of the two middle ones for an even count). */
function medianRun(results: LoadResult[] | undefined): LoadResult | undefined {
  if (!results || results.length === 0) return undefined;
  const sorted = [...results].sort((a, b) => a.opsPerSec - b.opsPerSec);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function fmt(n: number | undefined, digits: number): string {
  return n === undefined || Number.isNaN(n) ? "-" : n.toFixed(digits);
}

function referenceTable(rows: Row[], references: readonly Reference[]): string {
  const header = ["concurrency", "system", "ops/s", "p50 ms", "p99 ms", "ratio ops/s (system/etcd)"];
  const body = rows.flatMap((row) =>
    references.flatMap((name) => {
      const r = row.references[name];
      if (r === undefined) return [];
      const ratio = row.etcd ? r.opsPerSec / row.etcd.opsPerSec : undefined;
      const ops = fmt(r.opsPerSec, 0) + (r.errors ? ` (${r.errors} err)` : "");
      return [[String(row.concurrency), name, ops, fmt(r.p50Ms, 2), fmt(r.p99Ms, 2), fmt(ratio, 2)]];
    }),
  );
  return markdownTable(header, body, [true, false, true, true, true, true]);
}

function table(rows: Row[]): string {
  const header = [
    "concurrency",
    "paxos ops/s",
    "p50 ms",
    "p99 ms",
    "etcd ops/s",
    "p50 ms",
    "p99 ms",
    "ratio ops/s (paxos/etcd)",
    "p99 ratio (paxos/etcd)",
  ];
  const withRounds = rows.some((r) => r.roundRatios.length > 1);
  if (withRounds) header.push("ratio per round");
  const cells = (r: LoadResult | undefined) =>
    r
      ? [fmt(r.opsPerSec, 0) + (r.errors ? ` (${r.errors} err)` : ""), fmt(r.p50Ms, 2), fmt(r.p99Ms, 2)]
      : ["-", "-", "-"];
  const body = rows.map((r) => [
    String(r.concurrency),
    ...cells(r.paxos),
    ...cells(r.etcd),
    fmt(r.opsRatio, 2),
    fmt(r.p99Ratio, 2),
    ...(withRounds ? [roundRatiosText(r)] : []),
  ]);
  return markdownTable(
    header,
    body,
    header.map(() => true),
  );
}

function markdownTable(header: string[], body: string[][], alignRight: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const pad = (c: string, i: number) => (alignRight[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!));
  const line = (cols: string[]) => `| ${cols.map(pad).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => `${"-".repeat(w + 1)}${alignRight[i] ? ":" : "-"}`).join("|")}|`;
  return [line(header), rule, ...body.map(line)].join("\n");
}

/** tmpfs turns fsync into a no-op, which would flatter both systems and hide their real cost. */
function filesystemNote(dir: string): string {
  const TMPFS_MAGIC = 0x01021994;
  const type = statfsSync(dir).type;
  return type === TMPFS_MAGIC ? "tmpfs (fsync is free here: numbers are not representative)" : "disk-backed";
}

function machine() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? "unknown",
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    /** Other work on the machine skews both systems; a run on a busy machine says so here. */
    loadAverage1m: Number(os.loadavg()[0]!.toFixed(2)),
  };
}

function describe(system: System | Reference, r: LoadResult): string {
  const errs = r.errors
    ? `, ${r.errors} errors: ${Object.entries(r.errorKinds)
        .slice(0, 3)
        .map(([k, n]) => `${n}x ${k}`)
        .join("; ")}`
    : "";
  return (
    `[bench] ${system.padEnd(9)} c=${r.concurrency}: ${fmt(r.opsPerSec, 0)} ops/s, ` +
    `p50 ${fmt(r.p50Ms, 2)} ms, p99 ${fmt(r.p99Ms, 2)} ms, max ${fmt(r.maxMs, 1)} ms, ` +
    `load generator ${fmt(r.generatorCpuPercent, 0)}% of a core${errs}`
  );
}

const interrupt = new AbortController();
/** Orderly shutdown of the clusters, newest first; stopAll() then catches anything left. */
const stoppers: (() => Promise<void>)[] = [];

async function main(opts: Options): Promise<void> {
  const wants = (s: System) => opts.systems.includes(s);
  if (wants("paxos")) checkPaxosNode();
  const etcdVersion = wants("etcd") ? ensureEtcd() : undefined;
  const m = machine();

  const baseDir = mkdtempSync(join(os.tmpdir(), "paxos-bench-"));
  registerTempDir(baseDir);
  const fsNote = filesystemNote(baseDir);
  console.log(`[bench] data and logs in ${baseDir} (${fsNote}); removed on exit`);

  let etcd: EtcdCluster | undefined;
  let paxos: PaxosGroup | undefined;
  if (wants("etcd")) {
    mkdirSync(join(baseDir, "etcd"));
    etcd = await startEtcdCluster(join(baseDir, "etcd"));
    stoppers.push(etcd.stop);
    console.log(
      `[bench] etcd ${etcdVersion}: 3 members up, client ports ${etcd.members.map((m) => m.clientPort)}`,
    );
  }
  if (wants("paxos")) {
    mkdirSync(join(baseDir, "paxos"));
    paxos = await startPaxosGroup(join(baseDir, "paxos"));
    stoppers.push(paxos.stop);
    console.log(`[bench] paxos-node: 3 members up, HTTP ports ${paxos.members.map((m) => m.httpPort)}`);
  }
  const references = new Map<Reference, ReferenceSystem>();
  for (const name of opts.references) {
    const dir = join(baseDir, name);
    mkdirSync(dir);
    const system = await (name === "reference" ? startReferenceGroup(dir) : startBareServer(dir));
    stoppers.push(system.stop);
    references.set(name, system);
    console.log(`[bench] ${name}: up, HTTP port ${system.port}`);
  }

  // Steady state, not start-up, is what the levels measure: paxos-node's JIT compiles its hot paths
  // only after some thousands of requests, the paths of one write at a time apart from the batched
  // ones, and etcd's first writes also fill its caches. Every system gets the same load first.
  if (opts.primeSeconds > 0) {
    const toPrime: [string, () => Promise<number>, RequestFactory][] = [];
    if (paxos) toPrime.push(["paxos", () => paxos.masterPort(), paxosPut]);
    if (etcd) toPrime.push(["etcd", () => etcd.leaderPort(), etcdPut]);
    for (const [name, system] of references) toPrime.push([name, async () => system.port, referencePut]);
    for (const [name, port, build] of toPrime) {
      for (const concurrency of PRIME_CONCURRENCIES) {
        const primed = await runLoad({
          concurrency,
          client: opts.client,
          seconds: opts.primeSeconds,
          warmupSeconds: 0,
          signal: interrupt.signal,
          port: await port(),
          build,
        });
        console.log(
          `[bench] primed ${name}: ${primed.ops} writes in ${fmt(primed.seconds, 1)} s at concurrency ${concurrency}, not counted`,
        );
      }
    }
  }

  const rows: Row[] = [];
  for (const [i, concurrency] of opts.levels.entries()) {
    const load = {
      concurrency,
      client: opts.client,
      seconds: opts.seconds,
      warmupSeconds: opts.warmupSeconds,
      signal: interrupt.signal,
    };
    const runs = new Map<System | Reference, LoadResult[]>();
    const measured = (name: System | Reference, result: LoadResult) => {
      runs.set(name, [...(runs.get(name) ?? []), result]);
      console.log(describe(name, result));
    };
    const roundRatios: number[] = [];
    for (let round = 0; round < opts.rounds; round++) {
      // Alternating which system goes first spreads slow drift (page cache, disk write-back) over both.
      const order: System[] = (i + round) % 2 === 0 ? ["paxos", "etcd"] : ["etcd", "paxos"];
      for (const system of order) {
        if (system === "etcd" && etcd) {
          measured("etcd", await runLoad({ ...load, port: await etcd.leaderPort(), build: etcdPut }));
        } else if (system === "paxos" && paxos) {
          measured("paxos", await runLoad({ ...load, port: await paxos.masterPort(), build: paxosPut }));
        }
      }
      for (const [name, system] of references) {
        measured(name, await runLoad({ ...load, port: system.port, build: referencePut }));
      }
      const [p, e] = [runs.get("paxos")?.at(-1), runs.get("etcd")?.at(-1)];
      if (p && e) {
        const ratio = p.opsPerSec / e.opsPerSec;
        roundRatios.push(ratio);
        if (opts.rounds > 1)
          console.log(
            `[bench] round ${round + 1}/${opts.rounds} at c=${concurrency}: paxos/etcd ${fmt(ratio, 2)}x`,
          );
      }
    }
    const row: Row = {
      concurrency,
      paxos: medianRun(runs.get("paxos")),
      etcd: medianRun(runs.get("etcd")),
      opsRatio: undefined,
      roundRatios,
      p99Ratio: undefined,
      references: {},
    };
    for (const name of references.keys()) row.references[name] = medianRun(runs.get(name));
    if (row.paxos && row.etcd) {
      row.opsRatio = row.paxos.opsPerSec / row.etcd.opsPerSec;
      row.p99Ratio = row.paxos.p99Ms / row.etcd.p99Ms;
    }
    rows.push(row);
  }

  const date = new Date().toISOString();
  console.log(
    `\n${date}, ${m.cores} x ${m.cpu}, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}, ` +
      `load average ${m.loadAverage1m} at start` +
      (opts.primeSeconds > 0
        ? `, each system primed for ${opts.primeSeconds} s at concurrency ${PRIME_CONCURRENCIES.join(" and ")}`
        : "") +
      (etcdVersion ? `, etcd ${etcdVersion}` : "") +
      `; ${opts.seconds} s per run after ${opts.warmupSeconds} s warm-up` +
      (opts.rounds > 1 ? `, median run of ${opts.rounds} rounds per system and level` : "") +
      "; 100-byte values; " +
      `client ${opts.client}; data ${fsNote}\n`,
  );
  console.log(table(rows));
  if (opts.references.length > 0) {
    console.log(`\nReference systems (bench/README.md), measured after paxos-node and etcd at each level:\n`);
    console.log(referenceTable(rows, opts.references));
  }
  const targets = wants("paxos") && wants("etcd") ? evaluateTargets(rows) : [];
  if (targets.length > 0) {
    console.log("\nTargets:");
    for (const t of targets) console.log(`  ${t.verdict.padEnd(12)} ${t.name} (${t.detail})`);
  }
  if (opts.jsonFile) {
    const report = {
      date,
      machine: m,
      etcdVersion,
      seconds: opts.seconds,
      rounds: opts.rounds,
      warmupSeconds: opts.warmupSeconds,
      client: opts.client,
      valueBytes: 100,
      dataFilesystem: fsNote,
      rows,
      targets,
    };
    writeFileSync(opts.jsonFile, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`\n[bench] wrote ${opts.jsonFile}`);
  }
}

let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const stopCluster of stoppers.reverse()) await stopCluster().catch(() => undefined);
    await stopAll();
    removeTempDirs();
  })();
  return cleaning;
}

function onSignal(signal: NodeJS.Signals, code: number): void {
  process.on(signal, () => {
    if (interrupt.signal.aborted) {
      // Second signal: no more waiting; the exit hook in procs.ts kills what is left.
      process.exit(code);
    }
    interrupt.abort(new Error(`${signal} received`));
    console.error(`\n[bench] ${signal}: stopping every process the bench started`);
    void cleanup().finally(() => process.exit(code));
  });
}
onSignal("SIGINT", 130);
onSignal("SIGTERM", 143);

let options: Options | undefined;
try {
  options = parseOptions(process.argv.slice(2));
} catch (err) {
  console.error(`[bench] ${(err as Error).message}\n\n${USAGE}`);
  process.exit(2);
}
if (options) {
  try {
    await main(options);
  } catch (err) {
    // After Ctrl-C the members are being stopped on purpose; their logs explain nothing.
    if (!interrupt.signal.aborted) {
      console.error(`[bench] failed: ${(err as Error).message}`);
    }
    process.exitCode = 1;
  } finally {
    await cleanup();
  }
}
