// The PaxosLog: the acceptor's durable state on RocksDB.
//
// Layout (one RocksDB database of its own):
//   "L" + 8-byte big-endian instance -> framed encodeRecord(record)   (byte order = instance order)
//   "Mpromised"                      -> framed writeBallot(promised)
//   "MchosenUpTo"                    -> framed 8-byte big-endian instance (absent = -1)
//   "MabstainUntil"                  -> framed 8-byte big-endian instance: see CoreOptions.abstainUntil
//   "MfencedBy"                      -> framed u32 count + member names: see CoreOptions.fencedBy
//   "MinitialConfiguration"          -> framed writeConfiguration(config): the configuration this
//                                       member started with, which holds until the log chooses one
//   "Mjournal"                       -> framed 8-byte seq + 8-byte offset: where the vote journal's
//                                       records not yet durable in RocksDB start
// Every value carries a CRC32 (framing.ts) that is checked on every read.
//
// Durability: every persist() is appended to the vote journal (journal.ts) first, and a synced one
// resolves once that append is fdatasync'ed: on this thread by default, with no hand-off to
// RocksDB's thread pool on a vote's critical path, or on the thread pool for a caller with other
// work meanwhile (see PersistOptions). Calls of one turn share one append and one fdatasync (group
// commit). Journaled batches are then applied to RocksDB unsynced, a few milliseconds later so that
// several share one hand-off; reads wait for what is journaled to be applied first. Once enough of
// the journal has piled up, one apply is synced and records where the journal now starts, and the
// space before that is reused. Opening the log replays what the journal holds past that point.
// A batch too large for the journal (a quarter of it) is written to RocksDB synced instead.

import {
  CodecError,
  decodeRecord,
  encodeRecord,
  Reader,
  readBallot,
  readConfiguration,
  valueSize,
  Writer,
  writeBallot,
  writeConfiguration,
} from "../paxos/codec.js";
import {
  type Ballot,
  type ChosenEntry,
  type Configuration,
  type LogRecord,
  ZERO_BALLOT,
} from "../paxos/types.js";
import { CorruptRecordError, decodeInstance, encodeInstance, frame, unframe } from "./framing.js";
import { type JournalPosition, VoteJournal } from "./journal.js";
import { asBuffer, RocksStore, type StoreOp } from "./rocks.js";

export { CorruptRecordError } from "./framing.js";

export interface PersistBatch {
  promised?: Ballot;
  records: readonly LogRecord[];
  chosenUpTo?: number;
  /** Written before the core starts by a member that rejoins without its state, raised by it later. */
  abstainUntil?: number;
  /** With abstainUntil: see CoreOptions.fencedBy. Null deletes it: the rejoin's checks are done. */
  fencedBy?: readonly string[] | null;
  /**
   * Written once, before the core starts: the founding configuration, or the one a joining member
   * found. A restart takes it instead of `--peers`, which changes with every scale step.
   */
  initialConfiguration?: Configuration;
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
  /** Set by a member that rejoined without its state (see CoreOptions.abstainUntil); -1 when none. */
  abstainUntil: number;
  /** See CoreOptions.fencedBy; null when none (also in a log written before it was recorded). */
  fencedBy: string[] | null;
  /** Null in a log written before it was recorded, or never persisted. */
  initialConfiguration: Configuration | null;
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

export interface PaxosLogOptions {
  /** Size of the vote journal when it is created (an existing one keeps its size). */
  journalBytes?: number;
}

const JOURNAL_FILE = "votes.journal";
const DEFAULT_JOURNAL_BYTES = 16 * 1024 * 1024;
/**
 * How long journaled data waits before it goes to RocksDB: each write there is a hand-off to the
 * binding's thread pool and back, and at one write per vote those hand-offs cost more than the
 * votes. Reads never see the delay: they apply what is pending first.
 */
const APPLY_DELAY_MS = 5;

const LOG_PREFIX = 0x4c; // "L"
/** Exclusive upper bound of every log key: "M" sorts right after "L". */
const LOG_END = Buffer.from("M");
const META_PROMISED = Buffer.from("Mpromised");
const META_CHOSEN_UP_TO = Buffer.from("MchosenUpTo");
const META_JOURNAL = Buffer.from("Mjournal");
const META_ABSTAIN_UNTIL = Buffer.from("MabstainUntil");
const META_FENCED_BY = Buffer.from("MfencedBy");
const META_INITIAL_CONFIGURATION = Buffer.from("MinitialConfiguration");

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

export interface PersistOptions {
  /** false: data that may be lost in a crash (see persist()). Default true. */
  sync?: boolean;
  /**
   * Where a synced write waits for the disk. Inline (the default), on this thread: the cheapest
   * way when nothing else needs the thread meanwhile, as on a follower, whose vote is all it is
   * doing. In the background, on the thread pool: a master keeps serving clients while its own
   * vote syncs, and its quorum may well be complete (two followers) before that sync is.
   */
  background?: boolean;
}

interface Waiter {
  readonly ops: readonly StoreOp[];
  readonly sync: boolean;
  readonly background: boolean;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

export class PaxosLog {
  /** persist() calls not yet journaled: the next append takes them all. */
  private queue: Waiter[] = [];
  /** Journaled operations not yet handed to RocksDB, by key: a later write of a key replaces an earlier one. */
  private unapplied = new Map<string, StoreOp>();
  /** The RocksDB write of journaled data in flight: one at a time, so they land in journal order. */
  private applying: Promise<void> | null = null;
  private applyTimer: NodeJS.Timeout | undefined;
  /** A batch too large for the journal, being written to RocksDB: later appends wait for it. */
  private direct: Promise<void> | null = null;
  /** The background fdatasync in flight, and the synced persists appended since it started. */
  private backgroundSync: Promise<void> | null = null;
  private awaitingSync: Waiter[] = [];
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
    private readonly journal: VoteJournal,
    private readonly observer: PaxosLogObserver,
  ) {}

  static async open(
    dir: string,
    observer: PaxosLogObserver = {},
    options: PaxosLogOptions = {},
  ): Promise<PaxosLog> {
    const store = await RocksStore.open(dir);
    let journal: VoteJournal | undefined;
    try {
      const stored = await store.get(META_JOURNAL);
      const from =
        stored === undefined
          ? undefined
          : decodeMeta("journal start", unframe(stored, "PaxosLog meta journal"), readPosition);
      const opened = VoteJournal.open(
        `${dir}/${JOURNAL_FILE}`,
        options.journalBytes ?? DEFAULT_JOURNAL_BYTES,
        from,
      );
      journal = opened.journal;
      // What the journal holds past its recorded start goes to RocksDB, synced, together with a new
      // start past a gap of sequence numbers: bytes a crash left after the last intact record can
      // then never be taken for records written from now on.
      const ops = opened.records.flatMap((payload) => decodeOps(payload, journal!.path));
      ops.push(journalStartOp(journal.skipAhead()));
      await store.batch(mergeOps([ops]), { sync: true });
      return new PaxosLog(store, journal, observer);
    } catch (err) {
      journal?.close();
      await store.close();
      throw err;
    }
  }

  /**
   * Group commit: persist() calls of one turn share one journal append and one fdatasync; each
   * call's promise resolves only once its data is synced.
   *
   * `sync: false` is for data that may be lost in a crash because it can be rebuilt (chosen marks
   * are learned again). Such a write is journaled without an fdatasync, in order, so any later
   * synced write makes it durable too.
   */
  persist(batch: PersistBatch, options: PersistOptions = {}): Promise<void> {
    const sync = options.sync ?? true;
    const background = options.background ?? false;
    if (this.closing) return Promise.reject(new Error("PaxosLog is closed: persist() called after close()"));
    if (this.failure) return Promise.reject(this.unusable());
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
      this.queue.push({ ops, sync, background, resolve, reject });
      // Deferred to a microtask (synced data), so every persist() of the current turn shares the
      // append too, or to the next turn (unsynced data: chosen marks), so that it leaves the
      // critical path of what was just chosen and rides along with whatever else that turn brings.
      if (sync && !this.flushScheduled) {
        this.flushScheduled = true;
        queueMicrotask(() => {
          this.flushScheduled = false;
          this.flushQueue();
        });
      } else if (!sync && !this.unsyncedFlushScheduled) {
        this.unsyncedFlushScheduled = true;
        setImmediate(() => {
          this.unsyncedFlushScheduled = false;
          this.flushQueue();
        });
      }
    });
  }

  private unusable(): Error {
    const message = this.failure?.message ?? "unknown failure";
    return new Error(`PaxosLog is unusable after a failed write: ${message}`, { cause: this.failure });
  }

  /** Journals everything queued as one record, synced if any of it must be. */
  private flushQueue(): void {
    if (this.queue.length === 0 || this.direct !== null || this.failure) return;
    const waiters = this.queue;
    this.queue = [];
    const sync = waiters.some((w) => w.sync);
    const ops = mergeOps(waiters.map((w) => w.ops));
    if (ops.length === 0) {
      for (const w of waiters) w.resolve();
      return;
    }
    const inline = sync && waiters.some((w) => w.sync && !w.background);
    const started = process.hrtime.bigint();
    let journaled: boolean;
    try {
      journaled = this.journal.append(encodeOps(ops), inline);
    } catch (err) {
      this.fail(err, waiters);
      return;
    }
    if (!journaled) {
      this.writeDirect(ops, waiters);
      return;
    }
    for (const op of ops) this.unapplied.set(keyOf(op), op);
    this.scheduleApply();
    if (inline) {
      // The fdatasync covered everything appended before, background waiters included.
      for (const w of this.awaitingSync.splice(0)) w.resolve();
      this.observer.onSync?.(Number(process.hrtime.bigint() - started) / 1e9, countRecords(ops));
    }
    if (!sync || inline) {
      for (const w of waiters) w.resolve();
      return;
    }
    this.awaitingSync.push(...waiters);
    this.startBackgroundSync();
  }

  /**
   * Group commit on the thread pool: one fdatasync at a time, covering every append made before it
   * started; persists appended meanwhile wait for the next one.
   */
  private startBackgroundSync(): void {
    if (this.backgroundSync !== null || this.awaitingSync.length === 0) return;
    const waiters = this.awaitingSync;
    this.awaitingSync = [];
    const started = process.hrtime.bigint();
    this.backgroundSync = this.journal.syncInBackground().then(
      () => {
        this.backgroundSync = null;
        for (const w of waiters) w.resolve();
        const records = waiters.reduce((n, w) => n + countRecords(w.ops), 0);
        this.observer.onSync?.(Number(process.hrtime.bigint() - started) / 1e9, records);
        this.startBackgroundSync();
      },
      (err: unknown) => {
        this.backgroundSync = null;
        this.fail(err, [...waiters, ...this.awaitingSync.splice(0)]);
      },
    );
  }

  /**
   * A batch the journal cannot take (too large, or the ring is full until RocksDB catches up):
   * written to RocksDB synced, after everything journaled before it, with the journal's start
   * moved past all of it.
   */
  private writeDirect(ops: StoreOp[], waiters: Waiter[]): void {
    const started = process.hrtime.bigint();
    this.direct = (async () => {
      await this.applyAll();
      const start = this.journal.head();
      await this.store.batch([...ops, journalStartOp(start)], { sync: true });
      this.journal.release(start);
    })().then(
      () => {
        this.direct = null;
        for (const w of waiters) w.resolve();
        this.observer.onSync?.(Number(process.hrtime.bigint() - started) / 1e9, countRecords(ops));
        this.flushQueue();
      },
      (err: unknown) => {
        this.direct = null;
        this.fail(err, waiters);
      },
    );
  }

  private fail(err: unknown, waiters: Waiter[]): void {
    this.failure ??= err instanceof Error ? err : new Error(String(err));
    for (const w of [...waiters, ...this.queue]) w.reject(this.unusable());
    this.queue = [];
  }

  private scheduleApply(): void {
    if (this.applying !== null || this.applyTimer !== undefined || this.unapplied.size === 0) return;
    this.applyTimer = setTimeout(() => {
      this.applyTimer = undefined;
      this.startApply();
    }, APPLY_DELAY_MS);
  }

  /**
   * Hands what is journaled to RocksDB in one batch. Once a quarter of the journal's room for one
   * batch has piled up, the batch is synced and moves the journal's start past it.
   */
  private startApply(): void {
    if (this.applying !== null || this.unapplied.size === 0 || this.failure) return;
    const ops = [...this.unapplied.values()];
    this.unapplied = new Map();
    const start = this.journal.pendingBytes >= this.journal.maxPayloadBytes ? this.journal.head() : undefined;
    if (start !== undefined) ops.push(journalStartOp(start));
    this.applying = this.store.batch(ops, { sync: start !== undefined }).then(
      () => {
        this.applying = null;
        if (start !== undefined) this.journal.release(start);
        this.scheduleApply();
      },
      (err: unknown) => {
        this.applying = null;
        this.fail(err, []);
      },
    );
  }

  /** Resolves once everything journaled so far is in RocksDB (readable, not necessarily synced). */
  private async applyAll(): Promise<void> {
    for (;;) {
      if (this.failure) throw this.unusable();
      if (this.applying !== null) {
        await this.applying;
        continue;
      }
      if (this.unapplied.size === 0) return;
      clearTimeout(this.applyTimer);
      this.applyTimer = undefined;
      this.startApply();
    }
  }

  async recover(): Promise<RecoveredLogState> {
    this.assertOpen("recover");
    await this.applyAll();
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

    const abstainBytes = await this.readMeta(META_ABSTAIN_UNTIL);
    const abstainUntil =
      abstainBytes === undefined ? -1 : decodeInstance(abstainBytes, "PaxosLog meta abstainUntil");
    const fencedBytes = await this.readMeta(META_FENCED_BY);
    const fencedBy = fencedBytes === undefined ? null : decodeMeta("fenced voters", fencedBytes, readNames);
    const initialBytes = await this.readMeta(META_INITIAL_CONFIGURATION);
    const initialConfiguration =
      initialBytes === undefined
        ? null
        : decodeMeta("initial configuration", initialBytes, readConfiguration);

    let minInstance = chosenUpTo + 1;
    for await (const [key] of this.store.iterate({ gte: Buffer.from([LOG_PREFIX]), lt: LOG_END, limit: 1 })) {
      minInstance = decodeInstance(key.subarray(1), "PaxosLog key");
    }
    this.lowest = minInstance;
    return { promised, chosenUpTo, minInstance, unchosen, abstainUntil, fencedBy, initialConfiguration };
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
    // A record still on its way to RocksDB would come back after the deletion.
    await this.applyAll();
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
    await this.applyAll();
    await this.store.compactRange(logKey(from), logKey(to));
  }

  /** RocksDB's estimate of the disk bytes taken by log records (flushed files; not the memtable). */
  async approximateLogBytes(): Promise<number> {
    this.assertOpen("approximateLogBytes");
    await this.applyAll();
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
    await this.applyAll();
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
    await this.applyAll();
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

  /**
   * Waits for every accepted persist() to be synced (or fail), writes everything journaled to
   * RocksDB, synced, so that the next open has nothing to replay, then closes. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.queue.length > 0 || this.direct !== null || this.backgroundSync !== null) {
        this.flushQueue();
        if (this.direct !== null) await this.direct;
        if (this.backgroundSync !== null) await this.backgroundSync.catch(() => undefined);
        if (this.failure) break;
      }
      await this.deleting;
      if (!this.failure) {
        await this.applyAll().catch(() => undefined);
        const start = this.journal.head();
        await this.store.batch([journalStartOp(start)], { sync: true }).catch(() => undefined);
      }
      clearTimeout(this.applyTimer);
      this.journal.close();
      await this.store.close();
    })();
    return this.closing;
  }

  private assertOpen(what: string): void {
    if (this.closing) throw new Error(`PaxosLog is closed: ${what}() called after close()`);
  }

  private async readMeta(key: Buffer): Promise<Uint8Array | undefined> {
    await this.applyAll();
    const stored = await this.store.get(key);
    return stored === undefined ? undefined : unframe(stored, `PaxosLog meta ${key.subarray(1).toString()}`);
  }
}

function keyOf(op: StoreOp): string {
  return asBuffer(op.key).toString("latin1");
}

/** The operations of several batches as one, in order; a later write of a key replaces an earlier one. */
function mergeOps(batches: readonly (readonly StoreOp[])[]): StoreOp[] {
  const merged = new Map<string, StoreOp>();
  for (const ops of batches) for (const op of ops) merged.set(keyOf(op), op);
  return [...merged.values()];
}

function countRecords(ops: readonly StoreOp[]): number {
  return ops.filter((op) => op.key[0] === LOG_PREFIX).length;
}

function journalStartOp(start: JournalPosition): StoreOp {
  const w = new Writer(16);
  w.uint(start.seq);
  w.uint(start.offset);
  return { type: "put", key: META_JOURNAL, value: frame(w.finish()) };
}

function readPosition(r: Reader): JournalPosition {
  return { seq: r.uint(), offset: r.uint() };
}

/** A journal record's payload: [u32 count] then per operation [u8 put=1/del=2][bytes key][bytes value if put]. */
function encodeOps(ops: readonly StoreOp[]): Uint8Array {
  const w = new Writer(64);
  w.u32(ops.length);
  for (const op of ops) {
    w.u8(op.type === "put" ? 1 : 2);
    w.bytes(op.key);
    if (op.type === "put") w.bytes(op.value!);
  }
  return w.finish();
}

function decodeOps(payload: Uint8Array, where: string): StoreOp[] {
  return decoding(`vote journal ${where}`, () => {
    const r = new Reader(payload);
    const count = r.u32();
    const ops: StoreOp[] = [];
    for (let i = 0; i < count; i++) {
      const type = r.u8();
      const key = r.bytes();
      if (type === 1) ops.push({ type: "put", key, value: r.bytes() });
      else if (type === 2) ops.push({ type: "del", key });
      else throw new CodecError(`unknown operation type ${type}`);
    }
    r.end();
    return ops;
  });
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
  if (batch.abstainUntil !== undefined) {
    checkInstance("abstainUntil", batch.abstainUntil, 0);
    ops.push({ type: "put", key: META_ABSTAIN_UNTIL, value: frame(encodeInstance(batch.abstainUntil)) });
  }
  if (batch.fencedBy === null) ops.push({ type: "del", key: META_FENCED_BY });
  else if (batch.fencedBy !== undefined) {
    const w = new Writer(64);
    w.u32(batch.fencedBy.length);
    for (const name of batch.fencedBy) w.string(name);
    ops.push({ type: "put", key: META_FENCED_BY, value: frame(w.finish()) });
  }
  if (batch.initialConfiguration !== undefined) {
    const w = new Writer(256);
    writeConfiguration(w, batch.initialConfiguration);
    ops.push({ type: "put", key: META_INITIAL_CONFIGURATION, value: frame(w.finish()) });
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

function readNames(r: Reader): string[] {
  const names: string[] = [];
  for (let n = r.listLength(); n > 0; n--) names.push(r.string());
  return names;
}

function decodeMeta<T>(what: string, payload: Uint8Array, read: (r: Reader) => T): T {
  return decoding(`PaxosLog meta ${what}`, () => {
    const r = new Reader(payload);
    const v = read(r);
    r.end();
    return v;
  });
}

/** Runs a decoder over stored bytes: malformed bytes are a CorruptRecordError naming what was read. */
function decoding<T>(what: string, decode: () => T): T {
  try {
    return decode();
  } catch (err) {
    if (err instanceof CodecError) throw new CorruptRecordError(`${what}: ${err.message}`, { cause: err });
    throw err;
  }
}

function decodeLogEntry(key: Buffer, value: Buffer): LogRecord {
  const instance = decodeInstance(key.subarray(1), `PaxosLog key ${key.toString("hex")}`);
  const what = `PaxosLog record for instance ${instance}`;
  const rec = decoding(what, () => decodeRecord(unframe(value, what)));
  if (rec.instance !== instance)
    throw new CorruptRecordError(`${what}: the record says instance ${rec.instance}`);
  return rec;
}
