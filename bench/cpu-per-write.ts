// Where a write's CPU goes: a three-member paxos-node group on 127.0.0.1, primed like the main
// bench, then driven at each concurrency level while every member's threads are read from /proc.
// Prints CPU microseconds per acknowledged write, user and system, per member (main thread and
// the rest) and for this load generator. Linux only. `npm run bench:cpu -- --concurrency 1,64`.

import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { runLoad } from "./load.js";
import { checkPaxosNode, paxosPut, startPaxosGroup } from "./paxos.js";
import { registerTempDir, removeTempDirs, stopAll } from "./procs.js";

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

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { concurrency: { type: "string" }, seconds: { type: "string" }, prime: { type: "string" } },
  });
  const levels = (values.concurrency ?? "1,64").split(",").map(Number);
  const seconds = Number(values.seconds ?? 10);
  const prime = Number(values.prime ?? 10);
  if (levels.some((c) => !Number.isInteger(c) || c < 1) || !(seconds > 0) || !(prime >= 0))
    throw new Error(
      "--concurrency takes positive integers, --seconds a positive and --prime a non-negative number",
    );
  checkPaxosNode();
  const dir = mkdtempSync(join(tmpdir(), "paxos-bench-cpu-"));
  registerTempDir(dir);
  const group = await startPaxosGroup(dir);
  const port = await group.masterPort();
  const load = (concurrency: number, s: number) =>
    runLoad({ port, build: paxosPut, concurrency, client: "raw", seconds: s, warmupSeconds: 0 });
  if (prime > 0) for (const c of [64, 1]) await load(c, prime);
  for (const concurrency of levels) {
    const pids = group.members.map((m) => m.process.child.pid!);
    const before = pids.map(threadCpu);
    const generatorBefore = process.cpuUsage();
    const r = await load(concurrency, seconds);
    const generator = process.cpuUsage(generatorBefore);
    const us = (ms: number) => Math.round((ms * 1000) / r.ops);
    console.log(
      `concurrency ${concurrency}: ${Math.round(r.opsPerSec)} ops/s, p50 ${r.p50Ms.toFixed(2)} ms; ` +
        "CPU µs per write (user/system):",
    );
    group.members.forEach((m, i) => {
      const after = threadCpu(pids[i]!);
      const was = before[i]!;
      const role = m.httpPort === port ? "master  " : "follower";
      console.log(
        `  ${m.name} ${role} main thread ${us(after.main.user - was.main.user)}/${us(after.main.system - was.main.system)}, ` +
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
