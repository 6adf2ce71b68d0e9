// Shared by the Kubernetes tests: one local cluster per test file, and checks that nothing leaks.
import assert from "node:assert/strict";
import { LocalCluster, type LocalClusterOptions } from "../providers/local.js";

export const verbose = process.env.E2E_VERBOSE !== undefined;

export function log(line: string): void {
  if (verbose) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}

/** Starts a local cluster; E2E_VERBOSE=1 shows its progress on stderr. */
export function startCluster(opts: LocalClusterOptions = {}): Promise<LocalCluster> {
  return LocalCluster.start({ log, ...opts });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops the cluster and asserts that none of its processes (control plane or pods) is left. */
export async function stopCluster(cluster: LocalCluster | undefined): Promise<void> {
  if (!cluster) return;
  const pids = [...cluster.controlPlane.pids(), ...cluster.runner.startedPids];
  await cluster.stop();
  assert.deepEqual(pids.filter(alive), [], "processes left behind by the cluster");
}
