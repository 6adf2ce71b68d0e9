// The built-in key-value state machine, kept in a RocksDB database of its own (not the log's).
//
// Layout: "d" + UTF-8 key -> framed value bytes; "m" -> framed 8-byte big-endian last executed
// instance. Both use the PaxosLog's CRC framing, verified on every read.

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

const DATA_PREFIX = "d";
const META_LAST_EXECUTED = Buffer.from("m");
const CHECKPOINTS_UNAVAILABLE = "checkpoints are not available in this version";

function dataKey(key: string): Buffer {
  return Buffer.from(DATA_PREFIX + key, "utf8");
}

/** Executed batches waiting for RocksDB; past this many, execute() waits for the disk. */
const MAX_UNWRITTEN_BATCHES = 1024;

export class KvStateMachine implements StateMachine {
  /** Highest instance reflected in the visible state (RocksDB plus the unwritten overlay). */
  private lastExecuted: number;
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

  private constructor(
    private readonly store: RocksStore,
    lastExecuted: number,
    private readonly observer: KvStateMachineObserver,
  ) {
    this.lastExecuted = lastExecuted;
  }

  static async open(dir: string, observer: KvStateMachineObserver = {}): Promise<KvStateMachine> {
    const store = await RocksStore.open(dir);
    try {
      const stored = await store.get(META_LAST_EXECUTED);
      const what = "KV state machine meta lastExecuted";
      const lastExecuted = stored === undefined ? -1 : decodeInstance(unframe(stored, what), what);
      return new KvStateMachine(store, lastExecuted, observer);
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
        this.observer.onMalformedCommand?.(
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
    ops.push({ type: "put", key: META_LAST_EXECUTED, value: frame(encodeInstance(instance)) });
    this.lastExecuted = instance;
    this.unwritten.push({ instance, ops, keys });
    this.startWriting();
    if (this.unwritten.length < MAX_UNWRITTEN_BATCHES) return Promise.resolve();
    return new Promise((resolve) => this.drained.push(resolve));
  }

  /** Writes everything queued as one RocksDB batch at a time, in order. */
  private startWriting(): void {
    if (this.writing !== null || this.unwritten.length === 0 || this.failure) return;
    const batches = this.unwritten;
    this.unwritten = [];
    const ops = batches.flatMap((b) => b.ops);
    this.writing = this.store.batch(ops, { sync: false }).then(
      () => {
        this.writing = null;
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
        this.observer.onWriteFailure?.(this.failure);
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

  /** No checkpoint exists in this version: the whole log is replayed on start. */
  getCheckpointInstanceId(): number {
    return -1;
  }

  /** Nothing to do: this version keeps no separate checkpoint store to feed. */
  async executeForCheckpoint(_instance: number, _commands: readonly Uint8Array[]): Promise<void> {}

  async lockCheckpointState(): Promise<void> {
    throw new Error(CHECKPOINTS_UNAVAILABLE);
  }

  async getCheckpointState(): Promise<CheckpointState> {
    throw new Error(CHECKPOINTS_UNAVAILABLE);
  }

  /** Nothing to release: lockCheckpointState() never succeeds in this version. */
  unlockCheckpointState(): void {}

  async loadCheckpointState(_state: CheckpointState): Promise<void> {
    throw new Error(CHECKPOINTS_UNAVAILABLE);
  }

  /** Writes every executed batch, then closes RocksDB. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.writing !== null) await this.writing;
      await this.store.close();
    })();
    return this.closing;
  }
}
