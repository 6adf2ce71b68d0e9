// Checkpoint benchmarks (issue 3):
//   restart  — time from process start to serving, against PaxosLog length, with and without a
//              checkpoint: with one, the start must stay flat.
//   transfer — checkpoint transfer throughput over the real protocol (WebSocket on 127.0.0.1,
//              per-chunk CRC, SHA-256, fsync) next to a plain file copy of the same files on the
//              same disk, in the same run.

import { copyFile, mkdir, mkdtemp, open, readFile, rm } from "node:fs/promises";
import os from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { pino } from "pino";
import { CheckpointStore, syncDir } from "../node/src/checkpoint/checkpoint-store.js";
import { receiveCheckpoint } from "../node/src/checkpoint/transfer.js";
import { encodeKvCommand } from "../node/src/sm/kv-command.js";
import { KvStateMachine } from "../node/src/sm/kv-state-machine.js";
import { PaxosLog } from "../node/src/storage/paxos-log.js";
import {
  freePorts,
  registerTempDir,
  removeTempDirs,
  request,
  start,
  stop,
  stopAll,
  waitFor,
} from "./procs.js";

const USAGE = `npm run bench:checkpoint -- [options]

  --part LIST       restart,transfer (default both)
  --sizes LIST      log lengths for the restart part (default 10000,100000,1000000)
  --state-mib N     state machine size for the transfer part (default 1024)
  --help            this text`;

const ROOT = resolve(import.meta.dirname, "..", "..");
const BIN = join(ROOT, "bin", "paxos-node.js");
const SENDER = join(ROOT, "dist", "bench", "checkpoint-sender.js");
const quiet = pino({ level: "silent" });
const BALLOT = { counter: 1, member: "n1" };

/** A log of `count` chosen instances, each putting one 100-byte value under one of 10,000 keys. */
async function writeLog(dir: string, count: number): Promise<void> {
  const log = await PaxosLog.open(dir);
  await log.recover();
  const value = new Uint8Array(100).fill(120);
  const BATCH = 10_000;
  for (let from = 0; from < count; from += BATCH) {
    const records = [];
    for (let i = from; i < Math.min(count, from + BATCH); i++) {
      const command = encodeKvCommand({ op: "put", key: `key-${i % 10_000}`, value });
      records.push({
        instance: i,
        ballot: BALLOT,
        value: { kind: "commands" as const, id: `v${i}`, commands: [command] },
        chosen: true,
      });
    }
    await log.persist({ records, chosenUpTo: from + records.length - 1 });
  }
  await log.close();
}

/** Executes the whole log into the state machine and makes a checkpoint of it. */
async function checkpointLog(dataDir: string): Promise<number> {
  const log = await PaxosLog.open(join(dataDir, "log"));
  const recovered = await log.recover();
  const store = await CheckpointStore.open(join(dataDir, "checkpoints"), quiet);
  const sm = await KvStateMachine.open(join(dataDir, "sm"), { checkpoints: store });
  for await (const e of log.replay(0, recovered.chosenUpTo)) {
    await sm.execute(e.instance, e.value.kind === "commands" ? e.value.commands : []);
  }
  const made = await sm.makeCheckpoint();
  await sm.close();
  await store.close();
  await log.close();
  return made?.instanceId ?? -1;
}

async function timeStart(dataDir: string): Promise<{ seconds: number; replayed: number }> {
  const [httpPort, peerPort] = await freePorts(2);
  const args = [
    BIN,
    "--member=n1",
    `--peers=n1=127.0.0.1:${peerPort}`,
    `--peer-port=${peerPort}`,
    `--http-port=${httpPort}`,
    "--host=127.0.0.1",
    `--data-dir=${dataDir}`,
    `--termination-log=${join(dataDir, "termination")}`,
    "--log-level=warn",
  ];
  const started = performance.now();
  const proc = start("paxos-node", process.execPath, args, join(dataDir, "node.log"));
  try {
    const status = await waitFor("the member to serve", 600_000, [proc], async () => {
      const r = await request(httpPort!, "GET", "/v1/status").catch(() => undefined);
      return r?.status === 200
        ? (JSON.parse(r.body) as { instances: { replayedOnStart: number } })
        : undefined;
    });
    return { seconds: (performance.now() - started) / 1000, replayed: status.instances.replayedOnStart };
  } finally {
    await stop(proc);
  }
}

async function restartPart(root: string, sizes: number[]): Promise<void> {
  console.log("\nrestart: process start -> /v1/status answers (one member; a log of N chosen instances)");
  console.log("  none:  no checkpoint, state machine empty: the whole log is replayed");
  console.log("  lost:  checkpoint at the log's end, state machine lost: rebuilt from the checkpoint");
  console.log("  kept:  checkpoint at the log's end, state machine kept: nothing to replay");
  console.log("       N |   none s (replayed) |   lost s (replayed) |   kept s (replayed) | none/lost");
  for (const n of sizes) {
    const none = join(root, `restart-${n}-none`);
    const withCp = join(root, `restart-${n}-ckpt`);
    await writeLog(join(none, "log"), n);
    await writeLog(join(withCp, "log"), n);
    await checkpointLog(withCp);
    const a = await timeStart(none);
    const kept = await timeStart(withCp);
    await rm(join(withCp, "sm"), { recursive: true, force: true });
    const lost = await timeStart(withCp);
    const cell = (r: { seconds: number; replayed: number }) =>
      `${r.seconds.toFixed(2).padStart(8)} (${String(r.replayed).padStart(8)})`;
    console.log(
      `${String(n).padStart(8)} | ${cell(a)} | ${cell(lost)} | ${cell(kept)} | ${(a.seconds / lost.seconds).toFixed(1)}x`,
    );
    await rm(none, { recursive: true, force: true });
    await rm(withCp, { recursive: true, force: true });
  }
}

async function transferPart(root: string, stateMiB: number): Promise<void> {
  const dataDir = join(root, "transfer-source");
  const store = await CheckpointStore.open(join(dataDir, "checkpoints"), quiet);
  const sm = await KvStateMachine.open(join(dataDir, "sm"), { checkpoints: store });
  const valueBytes = 256 * 1024;
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < value.length; i++) value[i] = (i * 2654435761) >>> 24;
  const count = Math.ceil((stateMiB * 1024 * 1024) / valueBytes);
  for (let i = 0; i < count; i++) {
    value[0] = i & 0xff;
    await sm.execute(i, [encodeKvCommand({ op: "put", key: `blob-${i}`, value })]);
  }
  const made = await sm.makeCheckpoint();
  if (made === null) throw new Error("no checkpoint was made");
  const state = store.current()!;
  const mib = made.bytes / (1024 * 1024);
  console.log(
    `\ntransfer: checkpoint of ${mib.toFixed(0)} MiB in ${state.files.length} file(s); made in ${(made.durationMs / 1000).toFixed(1)} s, ` +
      `state machine paused ${made.pauseMs.toFixed(3)} ms`,
  );

  const copy = async (): Promise<number> => {
    const dir = join(root, `copy-${Math.random().toString(36).slice(2)}`);
    await mkdir(dir);
    const t0 = performance.now();
    for (const f of state.files) {
      await copyFile(join(state.dir, f.path), join(dir, f.path));
      const h = await open(join(dir, f.path), "r");
      await h.sync();
      await h.close();
    }
    await syncDir(dir);
    const s = (performance.now() - t0) / 1000;
    await rm(dir, { recursive: true, force: true });
    return s;
  };

  // The sender is a peer: its own process, as in a real transfer.
  await sm.close();
  await store.close();
  const portFile = join(root, "sender.port");
  const senderProc = start(
    "checkpoint sender",
    process.execPath,
    [SENDER, join(dataDir, "checkpoints"), portFile],
    join(root, "sender.log"),
  );
  const port = await waitFor("the checkpoint sender to listen", 30_000, [senderProc], async () => {
    const text = await readFile(portFile, "utf8").catch(() => "");
    return text === "" ? undefined : Number(text);
  });
  const transfer = async (): Promise<number> => {
    const dir = join(root, `recv-${Math.random().toString(36).slice(2)}`);
    await mkdir(dir);
    const t0 = performance.now();
    await receiveCheckpoint({ address: `127.0.0.1:${port}`, self: "receiver", tmpDir: dir, logger: quiet });
    const s = (performance.now() - t0) / 1000;
    await rm(dir, { recursive: true, force: true });
    return s;
  };

  try {
    // Alternate, so neither side always gets the warmer page cache.
    const rows: { copy: number; transfer: number }[] = [];
    for (let round = 0; round < 2; round++) rows.push({ copy: await copy(), transfer: await transfer() });
    console.log("   round | file copy + fsync | transfer (CRC, SHA-256, fsync) | transfer/copy");
    rows.forEach((r, i) => {
      console.log(
        `${String(i + 1).padStart(8)} | ${(mib / r.copy).toFixed(0).padStart(8)} MiB/s      | ` +
          `${(mib / r.transfer).toFixed(0).padStart(8)} MiB/s                   | ${(r.copy / r.transfer).toFixed(2)}`,
      );
    });
    console.log("goal: transfer/copy >= 0.5");
  } finally {
    await stop(senderProc);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      part: { type: "string" },
      sizes: { type: "string" },
      "state-mib": { type: "string" },
      help: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const parts = (values.part ?? "restart,transfer").split(",");
  const sizes = (values.sizes ?? "10000,100000,1000000").split(",").map(Number);
  const stateMiB = Number(values["state-mib"] ?? 1024);
  if (sizes.some((n) => !Number.isSafeInteger(n) || n < 1) || !(stateMiB > 0)) throw new Error(USAGE);
  const root = await mkdtemp(join(os.tmpdir(), "paxos-bench-ckpt-"));
  registerTempDir(root);
  try {
    if (parts.includes("restart")) await restartPart(root, sizes);
    if (parts.includes("transfer")) await transferPart(root, stateMiB);
  } finally {
    await stopAll();
    removeTempDirs();
  }
}

await main();
