// kill -9 a process that is writing to the PaxosLog: every record it acknowledged must be there,
// intact, after reopening, and the log must be a clean prefix (no hole, nothing half written).

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { ChosenEntry } from "../../src/paxos/types.js";
import { PaxosLog } from "../../src/storage/paxos-log.js";
import { crashTestRecord } from "./crash-records.js";

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), "log-writer-child.js");
const ROUNDS = 4;
/** Far more than any round acknowledges before it is killed, so the child is always mid-write. */
const RECORDS_PER_CHILD = 200_000;
const ROUND_TIMEOUT_MS = 60_000;
/**
 * Small enough that the rounds wrap the vote journal several times and release it as they go, so a
 * kill lands in the middle of those too.
 */
const JOURNAL_BYTES = 64 * 1024;

const children = new Set<ChildProcess>();
const tempRoots: string[] = [];
after(async () => {
  for (const child of children) child.kill("SIGKILL");
  for (const dir of tempRoots) await rm(dir, { recursive: true, force: true });
});

/** Runs the writer until it has acknowledged `killAfter` records, SIGKILLs it, returns what it acknowledged. */
function runAndKill(dir: string, killAfter: number, mode: "inline" | "background"): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const args = [CHILD, dir, String(RECORDS_PER_CHILD), String(JOURNAL_BYTES), mode];
    const child = spawn(process.execPath, args, {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.add(child);
    const acked: number[] = [];
    let pendingLine = "";
    let stderr = "";
    let killed = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`writer acknowledged only ${acked.length} records in ${ROUND_TIMEOUT_MS} ms`));
    }, ROUND_TIMEOUT_MS);
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
    });
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      const lines = (pendingLine + chunk).split("\n");
      pendingLine = lines.pop() ?? "";
      for (const line of lines) acked.push(Number(line));
      if (!killed && acked.length >= killAfter) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (signal === "SIGKILL" && killed) resolve(acked);
      else reject(new Error(`writer exited on its own (code ${code}, signal ${signal}): ${stderr}`));
    });
  });
}

test("every record acknowledged before kill -9 survives, across repeated crashes", async () => {
  const root = await mkdtemp(path.join(os.tmpdir(), "paxos-log-crash-"));
  tempRoots.push(root);
  const dir = path.join(root, "log");
  const allAcked: number[] = [];

  for (let round = 0; round < ROUNDS; round++) {
    // Different kill points per round: early (first batches), and deeper into the run.
    // Syncs on the writer's thread (a follower's votes) and on the thread pool (a master's), in turn.
    const acked = await runAndKill(dir, [1, 37, 250, 900][round]!, round % 2 === 0 ? "inline" : "background");
    assert.ok(acked.length > 0);
    allAcked.push(...acked);
    const highest = Math.max(...allAcked);

    const log = await PaxosLog.open(dir);
    try {
      const state = await log.recover();
      assert.ok(
        state.chosenUpTo >= highest,
        `round ${round}: chosenUpTo ${state.chosenUpTo} is below acknowledged instance ${highest}`,
      );
      // The child writes instances in order and every persist() is its own chosen record, so a crash
      // may cut the log anywhere, but never leave a hole.
      assert.deepEqual(state.unchosen, [], `round ${round}: records after a gap`);
      assert.equal(state.minInstance, 0);
      const seen = new Set<number>();
      for await (const entry of log.replay(0, state.chosenUpTo)) {
        const expected = crashTestRecord(entry.instance);
        assert.deepEqual(entry, { instance: expected.instance, value: expected.value } satisfies ChosenEntry);
        seen.add(entry.instance);
      }
      for (const instance of allAcked)
        assert.ok(seen.has(instance), `acknowledged instance ${instance} is lost`);
      assert.deepEqual(state.promised, crashTestRecord(state.chosenUpTo).ballot);
    } finally {
      await log.close();
    }
  }
});
