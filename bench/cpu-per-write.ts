// Where a write's CPU goes: a three-member paxos-node group (or, with `--system reference`, the
// bench's reference system) on 127.0.0.1, primed like the main bench, then driven at each
// concurrency level while every member's threads are read from /proc. Prints CPU microseconds per
// acknowledged write, user and system, per member (main thread and the rest) and for this load
// generator. Linux only. `npm run bench:cpu -- --concurrency 1,64`.

import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type RequestFactory, runLoad } from "./load.js";
import { checkPaxosNode, paxosPut, startPaxosGroup } from "./paxos.js";
import { registerTempDir, removeTempDirs, stopAll } from "./procs.js";
import { referencePut, startReferenceGroup } from "./reference.js";

const CLOCK_TICK_MS = 10; // USER_HZ is 100 on Linux

interface ThreadCpu {
  main: { user: number; system: number };
  others: { user: number; system: number };
}

/** CPU ms used so far by a process's main thread and by its other threads. */
function threadCpu(pid: number): ThreadCpu {
  const cpu: ThreadCpu = { main: { user: 0, system: 0 }, others: { user: 0, system: 0 } };
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue; // the thread ended meanwhile
    }
    const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
    const into = tid === String(pid) ? cpu.main : cpu.others;
    into.user += Number(fields[11]) * CLOCK_TICK_MS;
    into.system += Number(fields[12]) * CLOCK_TICK_MS;
  }
  return cpu;
}

interface System {
  readonly port: number;
  readonly build: RequestFactory;
  /** Each member's pid and how to call it, looked up again before each level. */
  members(): Promise<{ label: string; pid: number }[]>;
}

async function startSystem(kind: string, dir: string): Promise<System> {
  if (kind === "reference") {
    const ref = await startReferenceGroup(dir);
    const members = ref.processes.map((p, i) => ({
      label: i === 0 ? "master  " : "follower",
      pid: p.child.pid!,
    }));
    return { port: ref.port, build: referencePut, members: async () => members };
  }
  checkPaxosNode();
  const group = await startPaxosGroup(dir);
  const port = await group.masterPort();
  return {
    port,
    build: paxosPut,
    async members() {
      const master = await group.masterPort();
      if (master !== port) throw new Error("the master changed during the run: its numbers would mislead");
      return group.members.map((m) => ({
        label: `${m.name} ${m.httpPort === port ? "master  " : "follower"}`,
        pid: m.process.child.pid!,
      }));
    },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      concurrency: { type: "string" },
      seconds: { type: "string" },
      prime: { type: "string" },
      system: { type: "string" },
    },
  });
  const levels = (values.concurrency ?? "1,64").split(",").map(Number);
  const seconds = Number(values.seconds ?? 10);
  const prime = Number(values.prime ?? 10);
  const kind = values.system ?? "paxos";
  if (levels.some((c) => !Number.isInteger(c) || c < 1) || !(seconds > 0) || !(prime >= 0))
    throw new Error(
      "--concurrency takes positive integers, --seconds a positive and --prime a non-negative number",
    );
  if (kind !== "paxos" && kind !== "reference") throw new Error('--system takes "paxos" or "reference"');
  const dir = mkdtempSync(join(tmpdir(), "paxos-bench-cpu-"));
  registerTempDir(dir);
  const system = await startSystem(kind, dir);
  const load = (concurrency: number, s: number) =>
    runLoad({
      port: system.port,
      build: system.build,
      concurrency,
      client: "raw",
      seconds: s,
      warmupSeconds: 0,
    });
  if (prime > 0) for (const c of [64, 1]) await load(c, prime);
  for (const concurrency of levels) {
    const members = await system.members();
    const before = members.map((m) => threadCpu(m.pid));
    const generatorBefore = process.cpuUsage();
    const r = await load(concurrency, seconds);
    const generator = process.cpuUsage(generatorBefore);
    const us = (ms: number) => Math.round((ms * 1000) / r.ops);
    console.log(
      `${kind} concurrency ${concurrency}: ${Math.round(r.opsPerSec)} ops/s, p50 ${r.p50Ms.toFixed(2)} ms; ` +
        "CPU µs per write (user/system):",
    );
    members.forEach((m, i) => {
      const after = threadCpu(m.pid);
      const was = before[i]!;
      console.log(
        `  ${m.label} main thread ${us(after.main.user - was.main.user)}/${us(after.main.system - was.main.system)}, ` +
          `other threads ${us(after.others.user - was.others.user)}/${us(after.others.system - was.others.system)}`,
      );
    });
    console.log(`  load generator ${us(generator.user / 1000)}/${us(generator.system / 1000)}`);
  }
}

try {
  await main();
} finally {
  await stopAll();
  removeTempDirs();
}
