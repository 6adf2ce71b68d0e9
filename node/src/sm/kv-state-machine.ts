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
}

const DATA_PREFIX = "d";
const META_LAST_EXECUTED = Buffer.from("m");
const CHECKPOINTS_UNAVAILABLE = "checkpoints are not available in this version";

function dataKey(key: string): Buffer {
  return Buffer.from(DATA_PREFIX + key, "utf8");
}

export class KvStateMachine implements StateMachine {
  /** Highest instance whose batch RocksDB has applied. */
  private lastExecuted: number;
  /** The instance execute() accepts next; advanced when the call is accepted, before its write runs. */
  private nextInstance: number;
  /** Batches are written strictly one after another: two instances may touch the same key. */
  private writes: Promise<void> = Promise.resolve();
  /** A failed write leaves the state behind nextInstance, so every later execute() must fail too. */
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly store: RocksStore,
    lastExecuted: number,
    private readonly observer: KvStateMachineObserver,
  ) {
    this.lastExecuted = lastExecuted;
    this.nextInstance = lastExecuted + 1;
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
    if (instance !== this.nextInstance) {
      return Promise.reject(
        new Error(
          `KV state machine: instance ${instance} executed out of order, expected ${this.nextInstance}`,
        ),
      );
    }
    const ops: StoreOp[] = [];
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
      if (command.op === "put")
        ops.push({ type: "put", key: dataKey(command.key), value: frame(command.value) });
      else ops.push({ type: "del", key: dataKey(command.key) });
    });
    ops.push({ type: "put", key: META_LAST_EXECUTED, value: frame(encodeInstance(instance)) });
    this.nextInstance = instance + 1;

    // sync: false is safe here. Every executed instance is already chosen and synced in the
    // PaxosLog, and the marker is written in the same atomic batch as the data, so after a crash
    // RocksDB holds some prefix of the executed instances together with the marker that names
    // exactly that prefix; the runtime replays the lost suffix from the log. Syncing here would
    // only add a second fsync to every instance.
    const write = this.writes.then(async () => {
      if (this.failure) throw this.failure;
      try {
        await this.store.batch(ops, { sync: false });
      } catch (err) {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
        throw err;
      }
      this.lastExecuted = instance;
    });
    this.writes = write.catch(() => undefined);
    return write;
  }

  /** The value stored under `key`, or undefined when absent. Reflects every completed execute(). */
  async get(key: string): Promise<Uint8Array | undefined> {
    if (this.closing) throw new Error("KV state machine is closed: get() called after close()");
    const stored = await this.store.get(dataKey(key));
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

  /** Lets accepted execute() calls finish, then closes RocksDB. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.writes;
      await this.store.close();
    })();
    return this.closing;
  }
}
