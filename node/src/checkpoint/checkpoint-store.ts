// The checkpoint folders under `<data>/checkpoints/` (layout and file format: checkpoint-design.md).
//
// Every change of state is a rename of a fully written and fsynced folder followed by an fsync of
// the parent, so a crash leaves either the old or the new folder, never half of one:
// - `tmp-*`          being written by the maker or a transfer receiver; removed on open.
// - `ckpt-<n>`       a complete checkpoint (manifest.json written last, before the rename).
// - `install-<n>`    a verified checkpoint from a peer, installed by applyPendingInstall at start-up.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import type { CheckpointFile, CheckpointState } from "../sm/state-machine.js";

export const MANIFEST_FILE = "manifest.json";
export const CHECKPOINT_FORMAT = 1;

/** The contents of manifest.json (format 1). */
export interface CheckpointManifest {
  readonly format: typeof CHECKPOINT_FORMAT;
  readonly instanceId: number;
  readonly createdAt: string;
  readonly entries: number;
  readonly files: readonly CheckpointFile[];
}

/**
 * A checkpoint of this store: where it is and its files, plus the manifest fields that a transfer
 * passes on so that the receiver can write a complete manifest.
 */
export interface StoredCheckpoint extends CheckpointState {
  readonly entries: number;
  readonly createdAt: string;
}

/** A checkpoint's files do not match its manifest, or the manifest itself is unusable. */
export class CheckpointCorruptError extends Error {
  override readonly name = "CheckpointCorruptError";
}

const CKPT_PREFIX = "ckpt-";
const INSTALL_PREFIX = "install-";
const TMP_PREFIX = "tmp-";
const SHA256_HEX = /^[0-9a-f]{64}$/;

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/**
 * A file name a manifest may list. Manifests also arrive from peers, so anything that could
 * leave the checkpoint folder or shadow the manifest is refused.
 */
function isPlainFileName(name: string): boolean {
  return (
    name.length > 0 &&
    name.length <= 255 &&
    name !== "." &&
    name !== ".." &&
    name !== MANIFEST_FILE &&
    !/[/\\\0]/.test(name)
  );
}

/** Validates a manifest (parsed JSON, e.g. received from a peer); `what` names it in errors. */
export function parseManifest(json: unknown, what: string): CheckpointManifest {
  const fail = (why: string): never => {
    throw new CheckpointCorruptError(`${what}: ${why}`);
  };
  if (typeof json !== "object" || json === null || Array.isArray(json)) return fail("not a JSON object");
  const m = json as Record<string, unknown>;
  if (m.format !== CHECKPOINT_FORMAT)
    return fail(`unsupported format ${JSON.stringify(m.format)}, expected 1`);
  if (!isCount(m.instanceId))
    return fail(`instanceId ${JSON.stringify(m.instanceId)} is not a non-negative integer`);
  if (typeof m.createdAt !== "string" || Number.isNaN(Date.parse(m.createdAt)))
    return fail(`createdAt ${JSON.stringify(m.createdAt)} is not an ISO date`);
  if (!isCount(m.entries)) return fail(`entries ${JSON.stringify(m.entries)} is not a non-negative integer`);
  if (!Array.isArray(m.files) || m.files.length === 0) return fail("files is not a non-empty array");
  const seen = new Set<string>();
  const files: CheckpointFile[] = m.files.map((f: unknown, i: number) => {
    if (typeof f !== "object" || f === null) return fail(`files[${i}] is not an object`);
    const { path: p, size, sha256 } = f as Record<string, unknown>;
    if (typeof p !== "string" || !isPlainFileName(p))
      return fail(`files[${i}].path ${JSON.stringify(p)} is not a plain file name`);
    if (seen.has(p)) return fail(`files[${i}].path ${JSON.stringify(p)} is listed twice`);
    seen.add(p);
    if (!isCount(size)) return fail(`files[${i}].size ${JSON.stringify(size)} is not a non-negative integer`);
    if (typeof sha256 !== "string" || !SHA256_HEX.test(sha256))
      return fail(`files[${i}].sha256 is not 64 lowercase hex digits`);
    return { path: p, size, sha256 };
  });
  return {
    format: CHECKPOINT_FORMAT,
    instanceId: m.instanceId,
    createdAt: m.createdAt,
    entries: m.entries,
    files,
  };
}

/** Reads and validates `<dir>/manifest.json`. */
export async function readManifest(dir: string): Promise<CheckpointManifest> {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new CheckpointCorruptError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CheckpointCorruptError(`${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseManifest(json, file);
}

/** Writes `<dir>/manifest.json` and makes it and the folder's entries durable. */
export async function writeManifest(dir: string, manifest: CheckpointManifest): Promise<void> {
  parseManifest(manifest, "manifest to write");
  const fh = await open(path.join(dir, MANIFEST_FILE), "w");
  try {
    await fh.writeFile(`${JSON.stringify(manifest)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await syncDir(dir);
}

/** fsync of a directory, so that renames and new entries in it survive a crash. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Every listed file exists with its listed size (cheap; no hashing). */
async function checkFileSizes(state: CheckpointState): Promise<void> {
  for (const f of state.files) {
    const file = path.join(state.dir, f.path);
    let size: number;
    try {
      size = (await stat(file)).size;
    } catch (err) {
      throw new CheckpointCorruptError(
        `checkpoint ${state.instanceId}: cannot stat ${file}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    if (size !== f.size)
      throw new CheckpointCorruptError(
        `checkpoint ${state.instanceId}: ${file} has ${size} bytes, the manifest says ${f.size}`,
      );
  }
}

/** Checks every file's size and SHA-256 against the manifest; throws CheckpointCorruptError naming the first bad file. */
export async function verifyCheckpointFiles(state: CheckpointState): Promise<void> {
  await checkFileSizes(state);
  for (const f of state.files) {
    const file = path.join(state.dir, f.path);
    const hash = createHash("sha256");
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }))
      hash.update(chunk as Buffer);
    const actual = hash.digest("hex");
    if (actual !== f.sha256)
      throw new CheckpointCorruptError(
        `checkpoint ${state.instanceId}: ${file} has SHA-256 ${actual}, the manifest says ${f.sha256}`,
      );
  }
}

function stateOf(dir: string, manifest: CheckpointManifest): StoredCheckpoint {
  const { instanceId, files, entries, createdAt } = manifest;
  return { instanceId, dir, files, entries, createdAt };
}

/** The instance number in a `<prefix><n>` folder name, or undefined when the name is not one. */
function instanceOfName(name: string, prefix: string): number | undefined {
  if (!name.startsWith(prefix)) return undefined;
  const digits = name.slice(prefix.length);
  if (!/^(0|[1-9][0-9]*)$/.test(digits)) return undefined;
  const n = Number(digits);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** A folder whose manifest parses, names the folder's instance, and whose files have the right sizes. */
async function loadFolder(dir: string, instanceId: number): Promise<StoredCheckpoint> {
  const manifest = await readManifest(dir);
  if (manifest.instanceId !== instanceId)
    throw new CheckpointCorruptError(`${dir}: the manifest says instance ${manifest.instanceId}`);
  const state = stateOf(dir, manifest);
  await checkFileSizes(state);
  return state;
}

export class CheckpointStore {
  private currentState: StoredCheckpoint | null = null;
  private pending: StoredCheckpoint | null = null;
  /** Lock counts by checkpoint folder. */
  private readonly locks = new Map<string, number>();
  /** Deletions of superseded folders still running; close() waits for them. */
  private readonly removals = new Set<Promise<void>>();
  /** publish, install and completeInstall run one at a time, so their checks cannot race. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly logger: Logger,
  ) {}

  /**
   * Opens (creating it if needed) the checkpoints folder: removes leftover `tmp-*` folders, keeps
   * the newest complete `ckpt-<n>` and the newest complete `install-<n>`, and removes the rest.
   */
  static async open(dir: string, logger: Logger): Promise<CheckpointStore> {
    const root = path.resolve(dir);
    await mkdir(root, { recursive: true });
    const store = new CheckpointStore(root, logger);
    const names = await readdir(root);
    const ckpts: number[] = [];
    const installs: number[] = [];
    for (const name of names) {
      if (name.startsWith(TMP_PREFIX)) {
        await rm(path.join(root, name), { recursive: true, force: true });
        logger.info({ dir: path.join(root, name) }, "removed an unfinished checkpoint folder");
        continue;
      }
      const c = instanceOfName(name, CKPT_PREFIX);
      if (c !== undefined) ckpts.push(c);
      const i = instanceOfName(name, INSTALL_PREFIX);
      if (i !== undefined) installs.push(i);
    }
    store.currentState = await store.keepNewest(CKPT_PREFIX, ckpts);
    store.pending = await store.keepNewest(INSTALL_PREFIX, installs);
    await syncDir(root);
    logger.info(
      { dir: root, checkpoint: store.instanceId(), pendingInstall: store.pending?.instanceId ?? null },
      "opened the checkpoint store",
    );
    return store;
  }

  /** Of the `<prefix><n>` folders, returns the newest usable one; removes broken and older ones. */
  private async keepNewest(prefix: string, instances: number[]): Promise<StoredCheckpoint | null> {
    let kept: StoredCheckpoint | null = null;
    for (const n of instances.sort((a, b) => b - a)) {
      const folder = path.join(this.dir, `${prefix}${n}`);
      if (kept === null) {
        try {
          kept = await loadFolder(folder, n);
          continue;
        } catch (err) {
          this.logger.warn({ dir: folder, err }, "removing a broken checkpoint folder");
        }
      }
      await rm(folder, { recursive: true, force: true });
    }
    return kept;
  }

  /** Highest instance reflected in the current checkpoint; -1 when there is none. */
  instanceId(): number {
    return this.currentState?.instanceId ?? -1;
  }

  current(): StoredCheckpoint | null {
    return this.currentState;
  }

  /** A checkpoint received from a peer that the next start installs, or null. */
  pendingInstall(): StoredCheckpoint | null {
    return this.pending;
  }

  /** Keeps the current checkpoint's folder from being deleted until unlock(); throws when there is none. */
  async lock(): Promise<StoredCheckpoint> {
    this.assertOpen("lock");
    const state = this.currentState;
    if (state === null)
      throw new Error(`no checkpoint to lock in ${this.dir}: none has been made or received yet`);
    this.locks.set(state.dir, (this.locks.get(state.dir) ?? 0) + 1);
    return state;
  }

  /** Releases one lock; the last lock of a superseded checkpoint deletes its folder. */
  unlock(state: CheckpointState): void {
    const count = this.locks.get(state.dir);
    if (count === undefined)
      throw new Error(`unlock of checkpoint ${state.instanceId} (${state.dir}), which is not locked`);
    if (count > 1) {
      this.locks.set(state.dir, count - 1);
      return;
    }
    this.locks.delete(state.dir);
    if (state.dir !== this.currentState?.dir && !this.closed) this.removeInBackground(state);
  }

  /** A fresh, empty `tmp-<random>` folder inside the store, for a maker or a transfer receiver. */
  async tempDir(): Promise<string> {
    this.assertOpen("tempDir");
    return mkdtemp(path.join(this.dir, TMP_PREFIX));
  }

  /**
   * Makes the data files in `tmpDir` the current checkpoint: writes the manifest, fsyncs, renames
   * to `ckpt-<n>`, fsyncs the store folder, then deletes the previous checkpoint unless locked.
   */
  publish(tmpDir: string, manifest: CheckpointManifest): Promise<StoredCheckpoint> {
    return this.exclusive(async () => {
      this.assertOpen("publish");
      const source = this.ownTempDir(tmpDir, "publish");
      const checked = parseManifest(manifest, `manifest of checkpoint ${manifest.instanceId}`);
      const n = checked.instanceId;
      if (this.pending !== null)
        throw new Error(
          `refusing to publish checkpoint ${n}: a checkpoint received from a peer (instance ${this.pending.instanceId}) waits to be installed at the next start`,
        );
      if (n <= this.instanceId())
        throw new Error(
          `refusing to publish checkpoint ${n}: not above the current checkpoint ${this.instanceId()}`,
        );
      await checkFileSizes(stateOf(source, checked));
      await writeManifest(source, checked);
      const target = path.join(this.dir, `${CKPT_PREFIX}${n}`);
      await this.renameInto(source, target);
      const previous = this.currentState;
      this.currentState = stateOf(target, checked);
      if (previous !== null) await this.removeIfUnlocked(previous);
      return this.currentState;
    });
  }

  /**
   * Marks a verified checkpoint received from a peer for installation at the next start: renames
   * `verifiedDir` (a folder from tempDir() holding the files and manifest.json) to
   * `install-<instanceId>` and fsyncs the store folder. This rename is the moment the node commits
   * to the new state; until then its old state is untouched.
   */
  install(verifiedDir: string, instanceId: number): Promise<StoredCheckpoint> {
    return this.exclusive(async () => {
      this.assertOpen("install");
      const source = this.ownTempDir(verifiedDir, "install");
      if (this.pending !== null)
        throw new Error(
          `refusing to install checkpoint ${instanceId}: checkpoint ${this.pending.instanceId} already waits to be installed at the next start`,
        );
      if (instanceId <= this.instanceId())
        throw new Error(
          `refusing to install checkpoint ${instanceId}: not above the local checkpoint ${this.instanceId()}`,
        );
      const state = await loadFolder(source, instanceId);
      const target = path.join(this.dir, `${INSTALL_PREFIX}${instanceId}`);
      await this.renameInto(source, target);
      this.pending = { ...state, dir: target };
      this.logger.info(
        { instanceId, dir: target },
        "a received checkpoint waits to be installed at the next start",
      );
      return this.pending;
    });
  }

  /**
   * The last step of applyPendingInstall: `install-<n>` becomes `ckpt-<n>`, the local checkpoint
   * (servable to peers); every other checkpoint folder is deleted.
   */
  completeInstall(instanceId: number): Promise<StoredCheckpoint> {
    return this.exclusive(async () => {
      this.assertOpen("completeInstall");
      const pending = this.pending;
      if (pending === null || pending.instanceId !== instanceId)
        throw new Error(
          `no checkpoint ${instanceId} waits to be installed (pending: ${pending?.instanceId ?? "none"})`,
        );
      const target = path.join(this.dir, `${CKPT_PREFIX}${instanceId}`);
      const previous = this.currentState;
      // A crash between this removal and the rename leaves install-<n>, so the install repeats.
      await rm(target, { recursive: true, force: true });
      await this.renameInto(pending.dir, target);
      this.pending = null;
      this.currentState = { ...pending, dir: target };
      if (previous !== null && previous.dir !== target) await this.removeIfUnlocked(previous);
      return this.currentState;
    });
  }

  /** Waits for running publishes and deletions; later calls fail. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue.catch(() => {});
    await Promise.allSettled([...this.removals]);
  }

  private assertOpen(what: string): void {
    if (this.closed) throw new Error(`checkpoint store ${this.dir} is closed (${what})`);
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /** `dir` must be a `tmp-*` folder directly inside the store, so the rename stays on one file system. */
  private ownTempDir(dir: string, what: string): string {
    const resolved = path.resolve(dir);
    if (path.dirname(resolved) !== this.dir || !path.basename(resolved).startsWith(TMP_PREFIX))
      throw new Error(`${what}: ${dir} is not a folder made by tempDir() in ${this.dir}`);
    return resolved;
  }

  private async renameInto(source: string, target: string): Promise<void> {
    // Left over by an earlier run that died before recording it; never the current checkpoint.
    await rm(target, { recursive: true, force: true });
    await rename(source, target);
    await syncDir(this.dir);
  }

  private async removeIfUnlocked(state: CheckpointState): Promise<void> {
    if (this.locks.has(state.dir)) return;
    await this.remove(state);
  }

  private removeInBackground(state: CheckpointState): void {
    const p = this.remove(state);
    this.removals.add(p);
    p.finally(() => this.removals.delete(p));
  }

  /** Deleting an old folder is housekeeping: a failure is logged, and the next open() retries it. */
  private async remove(state: CheckpointState): Promise<void> {
    try {
      await rm(state.dir, { recursive: true, force: true });
      this.logger.info({ instanceId: state.instanceId, dir: state.dir }, "deleted a superseded checkpoint");
    } catch (err) {
      this.logger.warn(
        { instanceId: state.instanceId, dir: state.dir, err },
        "could not delete a superseded checkpoint",
      );
    }
  }
}
