// The built-in key-value state machine, kept in a RocksDB database of its own (not the log's).
//
// Layout: "d" + UTF-8 key -> framed value bytes; "m" -> framed 8-byte big-endian last executed
// instance; "c" + 8-byte big-endian instance -> framed membership configuration chosen there (the
// last two, so a checkpoint carries the membership as of its instance). All use the PaxosLog's CRC
// framing, verified on every read.

import { rm } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import type { CheckpointStore } from "../checkpoint/checkpoint-store.js";
import { KvDumpWriter } from "../checkpoint/kv-dump.js";
import { Reader, readConfiguration, Writer, writeConfiguration } from "../paxos/codec.js";
import type { Configuration } from "../paxos/types.js";
import { decodeInstance, encodeInstance, frame, unframe } from "../storage/framing.js";
import { RocksStore, type StoreOp } from "../storage/rocks.js";
import { decodeKvCommand } from "./kv-command.js";
import type { CheckpointState, StateMachine } from "./state-machine.js";

export interface KvStateMachineObserver {
  /**
   * A command of a chosen value did not decode and was skipped. Every member decodes the same
   * bytes the same way, so they all skip it and their states stay identical; the instance still
   * counts as executed.
   */
  onMalformedCommand?(instance: number, index: number, error: Error): void;
  /** A background RocksDB write failed: the state machine refuses further work. */
  onWriteFailure?(error: Error): void;
}

export interface KvStateMachineOptions extends KvStateMachineObserver {
  /** Where checkpoints live; without it the state machine has none and cannot make one. */
  readonly checkpoints?: CheckpointStore;
  /** Size limit of one checkpoint data file (default 256 MiB). */
  readonly checkpointFileBytes?: number;
}

/** What makeCheckpoint() did. */
export interface CheckpointMade {
  readonly instanceId: number;
  /** How long execute() and every other caller were held up: the synchronous creation of the snapshot iterator. */
  readonly pauseMs: number;
  readonly durationMs: number;
  /** Size of the data files. */
  readonly bytes: number;
  /** Key-value pairs in the dump, the marker included. */
  readonly entries: number;
}

const DATA_PREFIX = "d";
const CONFIG_PREFIX = 0x63; // "c": sorts before the data, so the marker still comes last
/** Configurations kept: the core needs the one in force and a pending one. */
const CONFIGS_KEPT = 2;
/** Sorts after every "d" key, so a full scan reads it last, from the same snapshot as the data. */
export const KV_META_LAST_EXECUTED = Buffer.from("m");
/**
 * Never present: a synced delete of it is the cheapest synced write, and it makes every earlier
 * write of the database durable (RocksDB syncs the whole write-ahead log up to it).
 */
const SYNC_KEY = Buffer.from("s");

/** The last executed instance recorded in a KV database (-1 when none). */
export async function readKvLastExecuted(store: RocksStore): Promise<number> {
  const stored = await store.get(KV_META_LAST_EXECUTED);
  const what = "KV state machine meta lastExecuted";
  return stored === undefined ? -1 : decodeInstance(unframe(stored, what), what);
}

/** Makes every write already applied to the KV database durable. */
export function syncKvDatabase(store: RocksStore): Promise<void> {
  return store.batch([{ type: "del", key: SYNC_KEY }], { sync: true });
}

function configKey(instance: number): Buffer {
  return Buffer.concat([Buffer.from([CONFIG_PREFIX]), encodeInstance(instance)]);
}

export interface RecordedConfiguration {
  readonly instance: number;
  readonly config: Configuration;
}

function dataKey(key: string): Buffer {
  return Buffer.from(DATA_PREFIX + key, "utf8");
}

/** Per trip of the checkpoint scan to RocksDB's thread pool: far fewer trips than the default 16 KiB. */
const SCAN_READ_AHEAD_BYTES = 256 * 1024;

/** Executed batches waiting for RocksDB; past this many, execute() waits for the disk. */
const MAX_UNWRITTEN_BATCHES = 1024;
/**
 * How long an executed batch waits before it is written, so that the batches of several writes
 * share one hand-off to RocksDB's thread pool (at one client write at a time, a hand-off per write
 * costs more CPU than the rest of the write). Reads never wait: the overlay has the data.
 */
const WRITE_DELAY_MS = 5;

export class KvStateMachine implements StateMachine {
  /** Highest instance reflected in the visible state (RocksDB plus the unwritten overlay). */
  private lastExecuted: number;
  /** Highest instance whose batch RocksDB has applied (not necessarily synced). */
  private writtenUpTo: number;
  /**
   * Executed but not yet written: key -> value (null = deleted) and the instance that set it.
   * Reads consult it first, so a write is visible the moment it is executed, without waiting
   * for a round trip through RocksDB's thread pool on the critical path of every client write.
   */
  private readonly overlay = new Map<string, { value: Uint8Array | null; instance: number }>();
  /** Batches not yet handed to RocksDB, in instance order. */
  private unwritten: { instance: number; ops: StoreOp[]; keys: string[] }[] = [];
  private writing: Promise<void> | null = null;
  /** Resolvers waiting for the unwritten queue to drain below the bound (or to empty, on close). */
  private drained: (() => void)[] = [];
  /** A failed write leaves RocksDB behind the visible state, so every later execute() must fail too. */
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;
  /** The running makeCheckpoint(); a second call joins it. */
  private making: Promise<CheckpointMade | null> | null = null;
  private makerPaused = false;
  /** Membership configurations recorded, oldest first. */
  private configs: RecordedConfiguration[];

  private constructor(
    private readonly store: RocksStore,
    lastExecuted: number,
    configs: RecordedConfiguration[],
    private readonly options: KvStateMachineOptions,
  ) {
    this.lastExecuted = lastExecuted;
    this.writtenUpTo = lastExecuted;
    this.configs = configs;
  }

  static async open(dir: string, options: KvStateMachineOptions = {}): Promise<KvStateMachine> {
    const store = await RocksStore.open(dir);
    try {
      const configs: RecordedConfiguration[] = [];
      for await (const [key, value] of store.iterate({
        gte: Buffer.from([CONFIG_PREFIX]),
        lt: Buffer.from([CONFIG_PREFIX + 1]),
      })) {
        const instance = decodeInstance(key.subarray(1), "KV state machine configuration key");
        const r = new Reader(unframe(value, `KV state machine configuration of instance ${instance}`));
        const config = readConfiguration(r);
        r.end();
        configs.push({ instance, config });
      }
      return new KvStateMachine(store, await readKvLastExecuted(store), configs, options);
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  lastExecutedInstance(): number {
    return this.lastExecuted;
  }

  /**
   * Applies the commands to the visible state at once and queues one RocksDB batch (data plus
   * the executed marker, unsynced: the PaxosLog is synced and the marker is atomic with the data,
   * so a crash only loses a suffix that is replayed). Resolves when the state is visible; waits
   * for the disk only when too many batches are unwritten.
   */
  execute(instance: number, commands: readonly Uint8Array[]): Promise<void> {
    return this.apply(instance, commands, []);
  }

  /**
   * Executes an instance that chose a membership configuration: no commands, but the configuration
   * is recorded with the instance's marker, so a start or a checkpoint knows the membership.
   */
  executeConfiguration(instance: number, config: Configuration): Promise<void> {
    const w = new Writer(64);
    writeConfiguration(w, config);
    const ops: StoreOp[] = [{ type: "put", key: configKey(instance), value: frame(w.finish()) }];
    const configs = [...this.configs, { instance, config }];
    for (const old of configs.splice(0, Math.max(0, configs.length - CONFIGS_KEPT))) {
      ops.push({ type: "del", key: configKey(old.instance) });
    }
    const applied = this.apply(instance, [], ops);
    if (this.lastExecuted === instance) this.configs = configs;
    return applied;
  }

  /** The last membership configurations executed, oldest first. */
  configurations(): readonly RecordedConfiguration[] {
    return this.configs;
  }

  private apply(instance: number, commands: readonly Uint8Array[], extraOps: StoreOp[]): Promise<void> {
    if (this.closing)
      return Promise.reject(new Error("KV state machine is closed: execute() called after close()"));
    if (this.failure) {
      return Promise.reject(
        new Error(`KV state machine is unusable after a failed write: ${this.failure.message}`, {
          cause: this.failure,
        }),
      );
    }
    if (instance !== this.lastExecuted + 1) {
      return Promise.reject(
        new Error(
          `KV state machine: instance ${instance} executed out of order, expected ${this.lastExecuted + 1}`,
        ),
      );
    }
    const ops: StoreOp[] = [];
    const keys: string[] = [];
    commands.forEach((bytes, index) => {
      let command: ReturnType<typeof decodeKvCommand>;
      try {
        command = decodeKvCommand(bytes);
      } catch (err) {
        this.options.onMalformedCommand?.(
          instance,
          index,
          err instanceof Error ? err : new Error(String(err)),
        );
        return;
      }
      keys.push(command.key);
      if (command.op === "put") {
        this.overlay.set(command.key, { value: command.value, instance });
        ops.push({ type: "put", key: dataKey(command.key), value: frame(command.value) });
      } else {
        this.overlay.set(command.key, { value: null, instance });
        ops.push({ type: "del", key: dataKey(command.key) });
      }
    });
    ops.push(...extraOps);
    ops.push({ type: "put", key: KV_META_LAST_EXECUTED, value: frame(encodeInstance(instance)) });
    this.lastExecuted = instance;
    this.unwritten.push({ instance, ops, keys });
    this.startWriting();
    if (this.unwritten.length < MAX_UNWRITTEN_BATCHES) return Promise.resolve();
    return new Promise((resolve) => this.drained.push(resolve));
  }

  /** Writes everything queued as one RocksDB batch at a time, in order. */
  private startWriting(): void {
    if (this.writing !== null || this.unwritten.length === 0 || this.failure) return;
    // Started a little later: the answers waiting for this execution (which need the state
    // visible, not written) leave first instead of queueing behind the hand-off to RocksDB's
    // threads, and batches executed meanwhile join the same write.
    this.writing = new Promise<void>((resolve) => setTimeout(resolve, WRITE_DELAY_MS)).then(() =>
      this.writeUnwritten(),
    );
  }

  private writeUnwritten(): Promise<void> {
    const batches = this.unwritten;
    this.unwritten = [];
    const ops = batches.flatMap((b) => b.ops);
    return this.store.batch(ops, { sync: false }).then(
      () => {
        this.writing = null;
        this.writtenUpTo = batches.at(-1)!.instance;
        for (const b of batches) {
          for (const key of b.keys)
            if (this.overlay.get(key)?.instance === b.instance) this.overlay.delete(key);
        }
        this.startWriting();
        if (this.unwritten.length < MAX_UNWRITTEN_BATCHES) for (const r of this.drained.splice(0)) r();
      },
      (err: unknown) => {
        this.writing = null;
        this.failure ??= err instanceof Error ? err : new Error(String(err));
        this.options.onWriteFailure?.(this.failure);
        for (const r of this.drained.splice(0)) r();
      },
    );
  }

  /** The value of `key` as of the last executed instance, or undefined when absent. */
  async get(key: string): Promise<Uint8Array | undefined> {
    if (this.closing) throw new Error("KV state machine is closed: get() called after close()");
    const pending = this.overlay.get(key);
    if (pending !== undefined) return pending.value ?? undefined;
    const stored = await this.store.get(dataKey(key));
    // A write may have landed (and left the overlay) while we read: the overlay wins if it has
    // a newer value again, otherwise what we read is current.
    const raced = this.overlay.get(key);
    if (raced !== undefined) return raced.value ?? undefined;
    return stored === undefined ? undefined : unframe(stored, `KV value of key ${JSON.stringify(key)}`);
  }

  getCheckpointInstanceId(): number {
    return this.options.checkpoints?.instanceId() ?? -1;
  }

  /** Nothing to feed: checkpoints are snapshots of the live database, not a second copy. */
  async executeForCheckpoint(_instance: number, _commands: readonly Uint8Array[]): Promise<void> {}

  async lockCheckpointState(): Promise<CheckpointState> {
    return this.checkpointStore("lockCheckpointState").lock();
  }

  getCheckpointState(): CheckpointState | null {
    return this.options.checkpoints?.current() ?? null;
  }

  unlockCheckpointState(state: CheckpointState): void {
    this.checkpointStore("unlockCheckpointState").unlock(state);
  }

  /**
   * Commits to a verified checkpoint received from a peer (`state.dir` from the store's tempDir(),
   * holding the files and manifest.json). The live state is replaced at the next start, by
   * applyPendingInstall; until then nothing of the old state changes.
   */
  async loadCheckpointState(state: CheckpointState): Promise<void> {
    await this.checkpointStore("loadCheckpointState").install(state.dir, state.instanceId);
  }

  /** While paused, makeCheckpoint() makes none (a running one finishes). */
  pauseCheckpointMaker(): void {
    this.makerPaused = true;
  }

  continueCheckpointMaker(): void {
    this.makerPaused = false;
  }

  isCheckpointMakerPaused(): boolean {
    return this.makerPaused;
  }

  /**
   * Dumps the database as of one moment into a new checkpoint. Resolves to null, making none,
   * when the maker is paused, when the database holds no instance above the current checkpoint,
   * or when close() interrupted it. A call while one runs joins it.
   */
  makeCheckpoint(): Promise<CheckpointMade | null> {
    if (this.closing)
      return Promise.reject(new Error("KV state machine is closed: makeCheckpoint() called after close()"));
    if (this.making !== null) return this.making;
    if (this.makerPaused) return Promise.resolve(null);
    let store: CheckpointStore;
    try {
      store = this.checkpointStore("makeCheckpoint");
    } catch (err) {
      return Promise.reject(err);
    }
    const making = this.dumpCheckpoint(store).finally(() => {
      this.making = null;
    });
    this.making = making;
    return making;
  }

  private async dumpCheckpoint(checkpoints: CheckpointStore): Promise<CheckpointMade | null> {
    const started = performance.now();
    const target = this.lastExecuted;
    if (target <= checkpoints.instanceId()) return null;
    // A checkpoint made now should hold everything executed before this call, so wait until
    // RocksDB has it (execute() goes on meanwhile; the snapshot below may include even more).
    while (this.writtenUpTo < target && this.writing !== null && !this.closing) await this.writing;
    if (this.failure)
      throw new Error(
        `KV state machine: cannot make a checkpoint after a failed write: ${this.failure.message}`,
      );
    if (this.closing) return null;
    const tmpDir = await checkpoints.tempDir();
    let writer: KvDumpWriter | null = null;
    try {
      writer = await KvDumpWriter.create(tmpDir, {
        ...(this.options.checkpointFileBytes !== undefined
          ? { maxFileBytes: this.options.checkpointFileBytes }
          : {}),
      });
      const scan = this.store.iterate({ readAheadBytes: SCAN_READ_AHEAD_BYTES });
      // The native iterator (and with it RocksDB's snapshot) is created synchronously inside this
      // first next(); that is the only moment this maker holds up the event loop on its own.
      const snapshotAt = performance.now();
      let step = scan.next();
      const pauseMs = performance.now() - snapshotAt;
      let last: [Buffer, Buffer] | undefined;
      try {
        for (let entry = await step; !entry.done; entry = await step) {
          if (this.closing) return null;
          last = entry.value;
          const wait = writer.add(entry.value[0], entry.value[1]);
          if (wait !== undefined) await wait;
          step = scan.next();
        }
      } finally {
        await scan.return(undefined);
      }
      if (last === undefined || !last[0].equals(KV_META_LAST_EXECUTED))
        throw new Error(
          "KV database snapshot has no last-executed marker as its last key; cannot make a checkpoint",
        );
      const what = "KV state machine meta lastExecuted (checkpoint snapshot)";
      const instanceId = decodeInstance(unframe(last[1], what), what);
      const dump = await writer.finish();
      writer = null;
      if (instanceId <= checkpoints.instanceId() || this.closing) return null;
      // The cleaner may delete the log below this checkpoint once it is published, so the
      // database must not lose anything up to its instance in a crash.
      await syncKvDatabase(this.store);
      await checkpoints.publish(tmpDir, {
        format: 1,
        instanceId,
        createdAt: new Date().toISOString(),
        entries: dump.entries,
        files: dump.files,
      });
      return {
        instanceId,
        pauseMs,
        durationMs: performance.now() - started,
        bytes: dump.bytes,
        entries: dump.entries,
      };
    } finally {
      await writer?.abort();
      // publish() renamed the folder when it succeeded; otherwise this removes the partial dump.
      await rm(tmpDir, { recursive: true, force: true });
    }
  }

  private checkpointStore(what: string): CheckpointStore {
    const store = this.options.checkpoints;
    if (store === undefined)
      throw new Error(`KV state machine: ${what}() needs a checkpoint store, and none was configured`);
    return store;
  }

  /**
   * Stops a running makeCheckpoint() (its partial dump is removed), writes every executed batch,
   * then closes RocksDB. Idempotent. The checkpoint store belongs to the caller and stays open.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.making?.catch(() => {});
      while (this.writing !== null) await this.writing;
      await this.store.close();
    })();
    return this.closing;
  }
}
