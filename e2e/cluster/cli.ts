// `npm run cluster:up` / `npm run cluster:down`: a local cluster (control plane + pod runner) that
// outlives the command, for poking at by hand with kubectl. Its state lives in .cache/cluster/.
import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LocalCluster } from "../providers/local.js";
import { ensureBinaries, REPO_ROOT } from "./binaries.js";
import { sleep } from "./kube.js";

const STATE_DIR = path.join(REPO_ROOT, ".cache", "cluster");
const STATE_FILE = path.join(STATE_DIR, "state.json");
const KUBECONFIG = path.join(STATE_DIR, "kubeconfig");
const LOG_FILE = path.join(STATE_DIR, "cluster.log");

interface State {
  pid: number;
  dir: string;
  kubeconfig: string;
  server: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function readState(): Promise<State | undefined> {
  try {
    return JSON.parse(await readFile(STATE_FILE, "utf8")) as State;
  } catch {
    return undefined;
  }
}

async function up(): Promise<void> {
  const existing = await readState();
  if (existing && alive(existing.pid)) {
    console.log(
      `a local cluster is already up (pid ${existing.pid}): export KUBECONFIG=${existing.kubeconfig}`,
    );
    return;
  }
  await ensureBinaries(true);
  await mkdir(STATE_DIR, { recursive: true });
  await rm(STATE_FILE, { force: true });
  const fd = openSync(LOG_FILE, "w");
  // Detached, so the cluster stays when this command returns; `cluster:down` stops it.
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), "serve"], {
    detached: true,
    stdio: ["ignore", fd, fd],
  });
  closeSync(fd);
  child.unref();
  let exited: number | null | undefined;
  child.on("exit", (code) => {
    exited = code;
  });
  const deadline = Date.now() + 300_000;
  for (;;) {
    const s = await readState();
    if (s) {
      console.log(`local cluster up: API server ${s.server}, folder ${s.dir}, log ${LOG_FILE}`);
      console.log(`export KUBECONFIG=${s.kubeconfig}`);
      return;
    }
    if (exited !== undefined || Date.now() > deadline) {
      const log = await readFile(LOG_FILE, "utf8").catch(() => "");
      throw new Error(
        `the local cluster did not come up; ${LOG_FILE}:\n${log.split("\n").slice(-30).join("\n")}`,
      );
    }
    await sleep(500);
  }
}

async function serve(): Promise<void> {
  const cluster = await LocalCluster.start({ log: (l) => console.log(`${new Date().toISOString()} ${l}`) });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    console.log("stopping");
    await cluster.stop();
    await rm(STATE_FILE, { force: true });
    await rm(KUBECONFIG, { force: true });
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop());
  process.on("SIGINT", () => void stop());
  await copyFile(cluster.kubeconfig, KUBECONFIG);
  const state: State = {
    pid: process.pid,
    dir: cluster.controlPlane.dir,
    kubeconfig: KUBECONFIG,
    server: cluster.controlPlane.server,
  };
  await writeFile(STATE_FILE, JSON.stringify(state, null, 2));
  console.log("ready");
}

async function down(): Promise<void> {
  const s = await readState();
  if (!s || !alive(s.pid)) {
    console.log("no local cluster is up");
    await rm(STATE_FILE, { force: true });
    return;
  }
  process.kill(s.pid, "SIGTERM");
  const deadline = Date.now() + 120_000;
  while (alive(s.pid)) {
    if (Date.now() > deadline) throw new Error(`the cluster process ${s.pid} did not stop in 120 s`);
    await sleep(250);
  }
  console.log("local cluster down");
}

const cmd = process.argv[2];
const commands: Record<string, () => Promise<void>> = { up, down, serve };
const fn = cmd ? commands[cmd] : undefined;
if (!fn) {
  console.error("usage: node dist/e2e/cluster/cli.js up|down");
  process.exit(2);
}
fn().catch((e: Error) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
