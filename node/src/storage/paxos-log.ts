// The PaxosLog: the acceptor's durable state on RocksDB.
//
// Layout (one RocksDB database of its own):
//   "L" + 8-byte big-endian instance -> framed encodeRecord(record)   (byte order = instance order)
//   "Mpromised"                      -> framed writeBallot(promised)
//   "MchosenUpTo"                    -> framed 8-byte big-endian instance (absent = -1)
// Every value carries a CRC32 (framing.ts) that is checked on every read.
//
// Durability: persist() resolves only after a synced (fsync'ed WAL) write that contains its data.
// Calls that arrive while a synced write is running wait and then share the next synced batch
// (group commit), so one fsync covers many promises, votes and chosen marks. Unsynced data
// (chosen marks) is written at the next turn of the event loop and never holds up a synced write
// of other keys: each RocksDB write costs a hand-off to the binding's thread pool, and on a busy
// machine that hand-off, more than the write, is what a request on the critical path pays for.

import {
  CodecError,
  decodeRecord,
  encodeRecord,
  Reader,
  readBallot,
  valueSize,
  Writer,
  writeBallot,
} from "../paxos/codec.js";
import { type Ballot, type ChosenEntry, type LogRecord, ZERO_BALLOT } from "../paxos/types.js";
import { CorruptRecordError, decodeInstance, encodeInstance, frame, unframe } from "./framing.js";
import { asBuffer, RocksStore, type StoreOp } from "./rocks.js";

export { CorruptRecordError } from "./framing.js";

export interface PersistBatch {
  promised?: Ballot;
  records: readonly LogRecord[];
  chosenUpTo?: number;
}

export interface RecoveredLogState {
  /** ZERO_BALLOT when new. */
  promised: Ballot;
  /** Highest instance such that every instance <= it is chosen; -1 when none. */
  chosenUpTo: number;
  /** Lowest instance present in the log (chosenUpTo+1 when the log is empty). */
  minInstance: number;
  /** Every record above chosenUpTo, in instance order (chosen ones beyond a gap included). */
  unchosen: LogRecord[];
}

export interface DeleteBelowResult {
  /** Log records deleted by this call. */
  deleted: number;
  /** The log's minKept() after the call. */
  minKept: number;
}

export interface PaxosLogObserver {
  /** One synced batch was written: how long the write took and how many log records it held. */
  onSync?(seconds: number, records: number): void;
}

const LOG_PREFIX = 0x4c; // "L"
/** Exclusive upper bound of every log key: "M" sorts right after "L". */
const LOG_END = Buffer.from("M");
const META_PROMISED = Buffer.from("Mpromised");
const META_CHOSEN_UP_TO = Buffer.from("MchosenUpTo");

function logKey(instance: number): Buffer {
  const key = Buffer.allocUnsafe(9);
  key[0] = LOG_PREFIX;
  encodeInstance(instance).copy(key, 1);
  return key;
}

function checkInstance(name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min)
    throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
}

interface Waiter {
  readonly ops: readonly StoreOp[];
  readonly sync: boolean;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

export class PaxosLog {
  /** persist() calls waiting for the next synced batch. */
  private queue: Waiter[] = [];
  /**
   * The writes in flight: at most one synced write, and unsynced ones. Their keys, counted, so that
   * a write never overtakes an earlier one of the same key.
   */
  private readonly writes = new Set<Promise<void>>();
  private readonly keysInFlight = new Map<string, number>();
  private syncInFlight = false;
  private flushScheduled = false;
  private unsyncedFlushScheduled = false;
  /** Set when a write failed: whether any of it reached the disk is unknown, so stop. */
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;
  /**
   * Every instance below it is absent from the log (see minKept()). Unknown until recover() or
   * deleteBelow() has looked at the log.
   */
  private lowest: number | undefined;
  /** The deleteBelow() in flight: calls run one after another, and close() waits for them. */
  private deleting: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly store: RocksStore,
    private readonly observer: PaxosLogObserver,
  ) {}

  static async open(dir: string, observer: PaxosLogObserver = {}): Promise<PaxosLog> {
    return new PaxosLog(await RocksStore.open(dir), observer);
  }

  /**
   * Group commit: persist() calls that arrive while a synced write is in flight are merged into
   * ONE next synced RocksDB batch; each call's promise resolves only once its data is synced.
   */
  /**
   * `sync: false` is for data that may be lost in a crash because it can be rebuilt (chosen marks
   * are learned again). Such a write still lands in the WAL in order, so any later synced write
   * makes it durable too.
   */
  persist(batch: PersistBatch, options: { sync?: boolean } = {}): Promise<void> {
    const sync = options.sync ?? true;
    if (this.closing) return Promise.reject(new Error("PaxosLog is closed: persist() called after close()"));
    if (this.failure) {
      return Promise.reject(
        new Error(`PaxosLog is unusable after a failed synced write: ${this.failure.message}`, {
          cause: this.failure,
        }),
      );
    }
    let ops: StoreOp[];
    try {
      ops = encodeBatch(batch);
    } catch (err) {
      return Promise.reject(err);
    }
    // Rewriting an instance the cleaner already deleted brings it back: minKept() must not claim
    // it is gone.
    for (const rec of batch.records) {
      if (this.lowest !== undefined && rec.instance < this.lowest) this.lowest = rec.instance;
    }
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ops, sync, resolve, reject });
      // Deferred to a microtask (synced data), so every persist() of the current turn shares the
      // first write too, or to the next turn (unsynced data: chosen marks), so that it leaves the
      // critical path of what was just chosen and rides along with whatever else that turn brings.
      if (sync && !this.flushScheduled) {
        this.flushScheduled = true;
        queueMicrotask(() => {
          this.flushScheduled = false;
          this.startFlush();
        });
      } else if (!sync && !this.unsyncedFlushScheduled) {
        this.unsyncedFlushScheduled = true;
        setImmediate(() => {
          this.unsyncedFlushScheduled = false;
          this.startFlush();
        });
      }
    });
  }

  /**
   * Writes everything queued as one batch, synced if any of it must be. Group commit: while a synced
   * write is in flight, everything waits for it and then shares the next one. A synced write does
   * not wait for unsynced writes in flight (RocksDB orders them itself) unless it rewrites one of
   * their keys; unsynced data waits for any write in flight, whose completion starts the next.
   */
  private startFlush(): void {
    if (this.queue.length === 0 || this.syncInFlight) return;
    const sync = this.queue.some((w) => w.sync);
    if (this.writes.size > 0 && !sync) return;
    // Later writes of a key replace earlier ones, exactly as they would have applied in sequence.
    const merged = new Map<string, StoreOp>();
    for (const w of this.queue) {
      for (const op of w.ops) merged.set(asBuffer(op.key).toString("latin1"), op);
    }
    for (const key of merged.keys()) if (this.keysInFlight.has(key)) return;
    const waiters = this.queue;
    this.queue = [];
    const ops = [...merged.values()];
    if (ops.length === 0) {
      for (const w of waiters) w.resolve();
      return;
    }
    for (const key of merged.keys()) this.keysInFlight.set(key, (this.keysInFlight.get(key) ?? 0) + 1);
    this.syncInFlight = sync;
    const started = process.hrtime.bigint();
    const done = (): void => {
      this.writes.delete(write);
      if (sync) this.syncInFlight = false;
      for (const key of merged.keys()) {
        const n = this.keysInFlight.get(key)!;
        if (n === 1) this.keysInFlight.delete(key);
        else this.keysInFlight.set(key, n - 1);
      }
    };
    const write: Promise<void> = this.store.batch(ops, { sync }).then(
      () => {
        done();
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        for (const w of waiters) w.resolve();
        this.startFlush();
        if (sync) this.observer.onSync?.(seconds, ops.filter((op) => op.key[0] === LOG_PREFIX).length);
      },
      (err: unknown) => {
        done();
        const failure = err instanceof Error ? err : new Error(String(err));
        this.failure = failure;
        for (const w of [...waiters, ...this.queue]) w.reject(failure);
        this.queue = [];
      },
    );
    this.writes.add(write);
  }

  async recover(): Promise<RecoveredLogState> {
    this.assertOpen("recover");
    const promisedBytes = await this.readMeta(META_PROMISED);
    const promised =
      promisedBytes === undefined ? ZERO_BALLOT : decodeMeta("promised ballot", promisedBytes, readBallot);
    const chosenBytes = await this.readMeta(META_CHOSEN_UP_TO);
    let chosenUpTo = chosenBytes === undefined ? -1 : decodeInstance(chosenBytes, "PaxosLog meta chosenUpTo");

    // The stored chosenUpTo may lag the chosen marks written with the records: extend it over the
    // contiguous chosen records that follow, and keep everything after the first gap.
    const unchosen: LogRecord[] = [];
    for await (const [key, value] of this.store.iterate({ gte: logKey(chosenUpTo + 1), lt: LOG_END })) {
      const rec = decodeLogEntry(key, value);
      if (unchosen.length === 0 && rec.chosen && rec.instance === chosenUpTo + 1) chosenUpTo = rec.instance;
      else unchosen.push(rec);
    }

    let minInstance = chosenUpTo + 1;
    for await (const [key] of this.store.iterate({ gte: Buffer.from([LOG_PREFIX]), lt: LOG_END, limit: 1 })) {
      minInstance = decodeInstance(key.subarray(1), "PaxosLog key");
    }
    this.lowest = minInstance;
    return { promised, chosenUpTo, minInstance, unchosen };
  }

  /**
   * A lower bound of the instances in the log: every instance below it is absent (deleted by the
   * cleaner or never written). It is the lowest instance present, except when nothing at or above
   * it has been written yet (an empty log reports chosenUpTo+1, as recover() does). Known once
   * recover() or deleteBelow() has run.
   */
  minKept(): number {
    if (this.lowest === undefined) {
      throw new Error("PaxosLog.minKept() is unknown before recover() or deleteBelow() has read the log");
    }
    return this.lowest;
  }

  /**
   * Deletes the log records with instance < bound, lowest first, at most maxCount of them, in one
   * RocksDB batch. By default the batch is not synced: a deletion lost in a crash only means the
   * records are there again, and the next call deletes them again (`sync: true` is for callers that
   * must not see them again). Never touches the meta keys. Calls run one after another. The space
   * comes back only once compactLog() has run over the range.
   */
  async deleteBelow(
    bound: number,
    maxCount: number,
    options: { sync?: boolean } = {},
  ): Promise<DeleteBelowResult> {
    this.assertOpen("deleteBelow");
    checkInstance("deleteBelow bound", bound, 0);
    checkInstance("deleteBelow maxCount", maxCount, 1);
    if (this.failure) {
      throw new Error(`PaxosLog is unusable after a failed synced write: ${this.failure.message}`, {
        cause: this.failure,
      });
    }
    const run = this.deleting.then(() => this.deleteBelowNow(bound, maxCount, options.sync ?? false));
    this.deleting = run.catch(() => undefined);
    return run;
  }

  private async deleteBelowNow(bound: number, maxCount: number, sync: boolean): Promise<DeleteBelowResult> {
    const start = this.lowest;
    if (start !== undefined && start >= bound) return { deleted: 0, minKept: start };
    const keys: Buffer[] = [];
    // The first key at or above the bound (or past the count) becomes the new minKept; reading it
    // in the same scan saves a second seek over the fresh tombstones.
    let next: number | undefined;
    for await (const key of this.store.keys({
      gte: start === undefined ? Buffer.from([LOG_PREFIX]) : logKey(start),
      lt: LOG_END,
      // The binding takes a 32-bit limit; beyond it, the loop below stops by itself.
      ...(maxCount < 0x7fffffff ? { limit: maxCount + 1 } : {}),
    })) {
      const instance = decodeInstance(key.subarray(1), `PaxosLog key ${key.toString("hex")}`);
      if (instance >= bound || keys.length === maxCount) {
        next = instance;
        break;
      }
      keys.push(key);
    }
    if (keys.length > 0) {
      await this.store.batch(
        keys.map((key) => ({ type: "del", key })),
        { sync },
      );
    }
    // Nothing left at or above the scan's start: everything below the bound is gone.
    let lowest = next ?? bound;
    // A persist() during the scan may have written an instance below the new value.
    const current = this.lowest;
    if (current !== undefined && (start === undefined || current < start)) lowest = Math.min(lowest, current);
    this.lowest = lowest;
    return { deleted: keys.length, minKept: lowest };
  }

  /**
   * Compacts the keys of instances from..to-1 (normally a range deleteBelow() emptied), so that
   * RocksDB drops the deleted records and their tombstones and the disk space really comes back.
   */
  async compactLog(from: number, to: number): Promise<void> {
    this.assertOpen("compactLog");
    checkInstance("compactLog from", from, 0);
    checkInstance("compactLog to", to, 0);
    if (to <= from) return;
    await this.store.compactRange(logKey(from), logKey(to));
  }

  /** RocksDB's estimate of the disk bytes taken by log records (flushed files; not the memtable). */
  approximateLogBytes(): Promise<number> {
    this.assertOpen("approximateLogBytes");
    return this.store.approximateSize(Buffer.from([LOG_PREFIX]), LOG_END);
  }

  /**
   * Contiguous chosen entries starting exactly at `from`, stopping at the first missing/unchosen
   * instance, at most maxCount entries and about maxBytes (always at least one if available).
   */
  async readChosen(from: number, maxCount: number, maxBytes: number): Promise<ChosenEntry[]> {
    this.assertOpen("readChosen");
    checkInstance("readChosen from", from, 0);
    const out: ChosenEntry[] = [];
    if (maxCount < 1) return out;
    let bytes = 0;
    for await (const [key, value] of this.store.iterate({
      gte: logKey(from),
      lt: LOG_END,
      limit: maxCount,
    })) {
      const rec = decodeLogEntry(key, value);
      if (rec.instance !== from + out.length || !rec.chosen) break;
      const size = valueSize(rec.value);
      if (out.length > 0 && bytes + size > maxBytes) break;
      out.push({ instance: rec.instance, value: rec.value });
      bytes += size;
    }
    return out;
  }

  /**
   * Chosen entries from..to inclusive in order, for replaying into the state machine; throws if an
   * instance in the range is missing or not chosen.
   */
  async *replay(from: number, to: number): AsyncGenerator<ChosenEntry, void, undefined> {
    this.assertOpen("replay");
    checkInstance("replay from", from, 0);
    checkInstance("replay to", to, -1);
    if (to < from) return;
    let next = from;
    for await (const [key, value] of this.store.iterate({ gte: logKey(from), lte: logKey(to) })) {
      const rec = decodeLogEntry(key, value);
      if (rec.instance !== next) {
        throw new Error(
          `PaxosLog replay ${from}..${to}: instance ${next} is missing from the log (next present: ${rec.instance})`,
        );
      }
      if (!rec.chosen) throw new Error(`PaxosLog replay ${from}..${to}: instance ${next} is not chosen`);
      yield { instance: rec.instance, value: rec.value };
      next++;
    }
    if (next <= to) {
      throw new Error(
        `PaxosLog replay ${from}..${to}: instance ${next} is missing from the log (the log ends before it)`,
      );
    }
  }

  /** Waits for every accepted persist() to be synced (or fail), then closes RocksDB. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.writes.size > 0 || this.queue.length > 0) {
        this.startFlush();
        await Promise.all(this.writes);
      }
      await this.deleting;
      await this.store.close();
    })();
    return this.closing;
  }

  private assertOpen(what: string): void {
    if (this.closing) throw new Error(`PaxosLog is closed: ${what}() called after close()`);
  }

  private async readMeta(key: Buffer): Promise<Uint8Array | undefined> {
    const stored = await this.store.get(key);
    return stored === undefined ? undefined : unframe(stored, `PaxosLog meta ${key.subarray(1).toString()}`);
  }
}

function encodeBatch(batch: PersistBatch): StoreOp[] {
  const ops: StoreOp[] = [];
  if (batch.promised !== undefined) {
    const w = new Writer(32);
    writeBallot(w, batch.promised);
    ops.push({ type: "put", key: META_PROMISED, value: frame(w.finish()) });
  }
  for (const rec of batch.records) {
    ops.push({ type: "put", key: logKey(rec.instance), value: frame(encodeRecord(rec)) });
  }
  if (batch.chosenUpTo !== undefined) {
    checkInstance("chosenUpTo", batch.chosenUpTo, -1);
    ops.push(
      batch.chosenUpTo === -1
        ? { type: "del", key: META_CHOSEN_UP_TO }
        : { type: "put", key: META_CHOSEN_UP_TO, value: frame(encodeInstance(batch.chosenUpTo)) },
    );
  }
  return ops;
}

function decodeMeta<T>(what: string, payload: Uint8Array, read: (r: Reader) => T): T {
  try {
    const r = new Reader(payload);
    const v = read(r);
    r.end();
    return v;
  } catch (err) {
    if (err instanceof CodecError)
      throw new CorruptRecordError(`PaxosLog meta ${what}: ${err.message}`, { cause: err });
    throw err;
  }
}

function decodeLogEntry(key: Buffer, value: Buffer): LogRecord {
  const instance = decodeInstance(key.subarray(1), `PaxosLog key ${key.toString("hex")}`);
  const what = `PaxosLog record for instance ${instance}`;
  let rec: LogRecord;
  try {
    rec = decodeRecord(unframe(value, what));
  } catch (err) {
    if (err instanceof CodecError) throw new CorruptRecordError(`${what}: ${err.message}`, { cause: err });
    throw err;
  }
  if (rec.instance !== instance)
    throw new CorruptRecordError(`${what}: the record says instance ${rec.instance}`);
  return rec;
}
