// Start-up step 1 of checkpoint-design.md: a checkpoint received from a peer (`install-<S>`)
// replaces the KV state machine's database. Every step can be repeated after a crash at any point
// and ends in the same state, because `install-<S>` stays until the very last step:
//   rebuild sm.new from the dump -> swap sm.new in as sm -> beforeComplete(S) -> install-S => ckpt-S.

import { rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import { readKvLastExecuted, syncKvDatabase } from "../sm/kv-state-machine.js";
import type { CheckpointState } from "../sm/state-machine.js";
import { RocksStore, type StoreOp } from "../storage/rocks.js";
import { type CheckpointStore, readManifest, syncDir } from "./checkpoint-store.js";
import { readKvDump } from "./kv-dump.js";

const SM_DIR = "sm";
const SM_NEW_DIR = "sm.new";
const SM_OLD_DIR = "sm.old";
/** Bytes of keys and values per unsynced bulk-load batch. */
const BULK_BATCH_BYTES = 8 << 20;

export interface ApplyPendingInstallOptions {
  readonly dataDir: string;
  readonly store: CheckpointStore;
  readonly logger: Logger;
  /**
   * Runs once the new state is in place and before the checkpoint becomes the local one; must be
   * idempotent (it runs again if the process dies before the install completes).
   */
  readonly beforeComplete: (instanceId: number) => Promise<void>;
}

/**
 * Installs the pending checkpoint received from a peer, if there is one, and returns its
 * instance; null when none is pending.
 */
export async function applyPendingInstall(opts: ApplyPendingInstallOptions): Promise<number | null> {
  const pending = opts.store.pendingInstall();
  if (pending === null) return null;
  const instanceId = pending.instanceId;
  opts.logger.info({ instanceId, dir: pending.dir }, "installing a checkpoint received from a peer");
  const rebuilt = await rebuildStateDatabase(pending, path.join(opts.dataDir, SM_NEW_DIR));
  opts.logger.info({ instanceId, ...rebuilt }, "rebuilt the state machine database from the checkpoint");
  await swapStateDatabase(opts.dataDir);
  await opts.beforeComplete(instanceId);
  await opts.store.completeInstall(instanceId);
  opts.logger.info({ instanceId }, "installed the checkpoint; it is now the local checkpoint");
  return instanceId;
}

/**
 * Rebuilds the state machine's database from the local checkpoint when the database is behind it
 * (it was lost or replaced by an empty one): a start then replays only the log after the
 * checkpoint, which the cleaner keeps, instead of failing on the log it has already deleted.
 * Returns the checkpoint's instance when it rebuilt, null when the database was not behind.
 */
export async function restoreFromLocalCheckpoint(opts: {
  readonly dataDir: string;
  readonly store: CheckpointStore;
  readonly logger: Logger;
  /** The database's last executed instance. */
  readonly executed: number;
}): Promise<number | null> {
  const checkpoint = opts.store.current();
  if (checkpoint === null || opts.executed >= checkpoint.instanceId) return null;
  opts.logger.warn(
    { stateMachineAt: opts.executed, checkpoint: checkpoint.instanceId },
    "the state machine is behind its own checkpoint: rebuilding it from the checkpoint",
  );
  const rebuilt = await rebuildStateDatabase(checkpoint, path.join(opts.dataDir, SM_NEW_DIR));
  await swapStateDatabase(opts.dataDir);
  opts.logger.info(
    { instanceId: checkpoint.instanceId, ...rebuilt },
    "rebuilt the state machine from the checkpoint",
  );
  return checkpoint.instanceId;
}

/**
 * Builds a fresh KV database in `targetDir` (removing whatever is there) from the checkpoint's
 * dump, checking every file's SHA-256, the entry count and that the database says it is at the
 * checkpoint's instance. Synced and closed when it resolves.
 */
export async function rebuildStateDatabase(
  state: CheckpointState,
  targetDir: string,
): Promise<{ entries: number; bytes: number; durationMs: number }> {
  const started = performance.now();
  const manifest = await readManifest(state.dir);
  if (manifest.instanceId !== state.instanceId)
    throw new Error(
      `${state.dir}: the manifest says instance ${manifest.instanceId}, expected ${state.instanceId}`,
    );
  await rm(targetDir, { recursive: true, force: true });
  const db = await RocksStore.open(targetDir);
  let entries = 0;
  let bytes = 0;
  try {
    let ops: StoreOp[] = [];
    let batchBytes = 0;
    // One batch is written while the next one is read.
    let writing: Promise<void> = Promise.resolve();
    for await (const [key, value] of readKvDump({ dir: state.dir, files: manifest.files })) {
      ops.push({ type: "put", key, value });
      entries++;
      batchBytes += key.length + value.length;
      if (batchBytes >= BULK_BATCH_BYTES) {
        await writing;
        writing = db.batch(ops, { sync: false });
        bytes += batchBytes;
        ops = [];
        batchBytes = 0;
      }
    }
    await writing;
    await db.batch(ops, { sync: false });
    bytes += batchBytes;
    if (entries !== manifest.entries)
      throw new Error(
        `${state.dir}: the dump holds ${entries} entries, the manifest says ${manifest.entries}`,
      );
    const at = await readKvLastExecuted(db);
    if (at !== state.instanceId)
      throw new Error(
        `${state.dir}: the rebuilt database says it is at instance ${at}, the checkpoint is at ${state.instanceId}`,
      );
    await syncKvDatabase(db);
  } finally {
    await db.close();
  }
  return { entries, bytes, durationMs: performance.now() - started };
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/**
 * Puts `sm.new` in the place of `sm`: `sm` -> `sm.old`, `sm.new` -> `sm`, fsync, remove `sm.old`.
 * Repeatable from any point: a missing `sm` means the old one was already moved aside.
 */
export async function swapStateDatabase(dataDir: string): Promise<void> {
  const current = path.join(dataDir, SM_DIR);
  const fresh = path.join(dataDir, SM_NEW_DIR);
  const old = path.join(dataDir, SM_OLD_DIR);
  if (!(await exists(fresh)))
    throw new Error(`cannot swap in the rebuilt state machine: ${fresh} does not exist`);
  if (await exists(current)) {
    // From an earlier run that died after its swap; the state in it was replaced already.
    await rm(old, { recursive: true, force: true });
    await rename(current, old);
  }
  await rename(fresh, current);
  await syncDir(dataDir);
  await rm(old, { recursive: true, force: true });
}
