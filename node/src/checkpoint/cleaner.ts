// The PaxosLog cleaner (PhxPaxos: PausePaxosLogCleaner, ContinuePaxosLogCleaner,
// SetHoldPaxosLogCount).
//
// It deletes the log records below `checkpointInstanceId - holdCount`: the checkpoint already
// reflects them, and holdCount keeps some log behind the checkpoint for peers that lag a little
// (they learn from the log instead of needing a checkpoint transfer). Deletion runs in small
// batches, one per interval, so its disk I/O stays bounded; compaction of the deleted range then
// gives the space back.
//
// Operators pause it during peak hours: `running` with an `until` makes it pause itself at that
// time, so a stopped operator never leaves it running past a window, and a restart never resumes
// cleaning that should have stopped. Its settings live in `<data>/cleaner.json`.
//
// The optional maxLogBytes safety valve cleans even while paused once the log's disk use passes
// it. It never deletes above the same checkpoint bound: that bound is what keeps the log able to
// rebuild the state machine, so the valve cannot help while no newer checkpoint exists.

import { rename } from "node:fs/promises";
import type { Logger } from "pino";
import type { PaxosLog } from "../storage/paxos-log.js";
import {
  type CleanerSettings,
  type CleanerState,
  CleanerStateFileError,
  type CleanerUpdate,
  readCleanerState,
  type StoredCleanerState,
  writeCleanerState,
} from "./cleaner-state.js";

export {
  CleanerInputError,
  type CleanerSettings,
  type CleanerState,
  type CleanerUpdate,
  parseCleanerUpdate,
} from "./cleaner-state.js";

export interface LogCleanerEvents {
  /** One batch deleted n log records. */
  deleted?(n: number): void;
  /** A forced episode began: the log passed maxLogBytes while the cleaner was paused. */
  forced?(): void;
}

export interface LogCleanerOptions {
  /** A recovered log (recover() has run), so that its minKept() is known. */
  log: PaxosLog;
  /** Normally `<data>/cleaner.json`. */
  stateFile: string;
  logger: Logger;
  /** The current checkpoint's instance ID; -1 when there is no checkpoint (nothing is deleted). */
  checkpointInstanceId: () => number;
  /** Highest instance such that every instance <= it is chosen here. */
  chosenUpTo: () => number;
  /** The `--hold-count` flag. */
  flagHoldCount: number;
  /** Milliseconds since the epoch; injectable for tests. */
  now?: () => number;
  /** Most log records deleted per run. Default 2000. */
  batchSize?: number;
  /**
   * Pause between runs of start()'s loop while they delete. Default 100 ms. After a run that deleted
   * nothing the loop waits at least IDLE_INTERVAL_MS.
   */
  intervalMs?: number;
  /** Records deleted between two compactions; a run of deletions that ends is compacted too. Default 50 000. */
  compactEvery?: number;
  /** Safety valve: past this many bytes of log on disk, clean even while paused. */
  maxLogBytes?: number;
  events?: LogCleanerEvents;
}

const DEFAULT_BATCH_SIZE = 2000;
const DEFAULT_INTERVAL_MS = 100;
const DEFAULT_COMPACT_EVERY = 50_000;
/** Asking RocksDB for the log's size is cheap but not free: the valve looks at most this often. */
const SIZE_CHECK_INTERVAL_MS = 5000;
/**
 * Between runs with nothing to delete. The bound moves when a checkpoint is made, seconds or minutes
 * apart, so an idle member need not wake ten times a second to find it unchanged.
 */
const IDLE_INTERVAL_MS = 1000;
/** After a failed run the loop waits this long, so that a lasting failure does not flood the log. */
const RETRY_AFTER_FAILURE_MS = 5000;

function checkCount(name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min)
    throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
}

function publicSettings(s: StoredCleanerState): CleanerSettings {
  return {
    state: s.state,
    until: s.until === null ? null : new Date(s.until).toISOString(),
    holdCount: s.holdCount,
  };
}

function sameState(a: StoredCleanerState, b: StoredCleanerState): boolean {
  return (
    a.state === b.state &&
    a.until === b.until &&
    a.holdCount === b.holdCount &&
    a.flagHoldCount === b.flagHoldCount
  );
}

/** A deleted range not yet compacted: instances from..to-1, count records. */
interface PendingCompaction {
  from: number;
  to: number;
  count: number;
}

export class LogCleaner {
  private readonly log: PaxosLog;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly batchSize: number;
  private readonly intervalMs: number;
  private readonly compactEvery: number;
  private readonly maxLogBytes: number | undefined;
  private readonly events: LogCleanerEvents;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** runOnce() calls run one after another. */
  private runs: Promise<unknown> = Promise.resolve();
  /** State file writes run one after another, each from the state the previous one left. */
  private stateWrites: Promise<unknown> = Promise.resolve();
  private pending: PendingCompaction | undefined;
  private forcing = false;
  /** When the latest forced episode began (clock ms), so the operator can report it after it ended. */
  private lastForced: number | null = null;
  private lastSizeCheck = Number.NEGATIVE_INFINITY;

  private constructor(
    private readonly opts: LogCleanerOptions,
    private current: StoredCleanerState,
  ) {
    this.log = opts.log;
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.batchSize = opts.batchSize ?? DEFAULT_BATCH_SIZE;
    this.intervalMs = opts.intervalMs ?? DEFAULT_INTERVAL_MS;
    this.compactEvery = opts.compactEvery ?? DEFAULT_COMPACT_EVERY;
    this.maxLogBytes = opts.maxLogBytes;
    this.events = opts.events ?? {};
  }

  /**
   * Loads the persisted settings. A holdCount set at run time survives a restart unless the
   * `--hold-count` flag changed since: then the operator changed the configuration and the flag
   * wins. A running cleaner whose `until` has passed starts paused.
   */
  static async open(opts: LogCleanerOptions): Promise<LogCleaner> {
    checkCount("flagHoldCount", opts.flagHoldCount, 0);
    checkCount("batchSize", opts.batchSize ?? DEFAULT_BATCH_SIZE, 1);
    checkCount("intervalMs", opts.intervalMs ?? DEFAULT_INTERVAL_MS, 0);
    checkCount("compactEvery", opts.compactEvery ?? DEFAULT_COMPACT_EVERY, 1);
    if (opts.maxLogBytes !== undefined) checkCount("maxLogBytes", opts.maxLogBytes, 0);
    const flag = opts.flagHoldCount;
    const now = (opts.now ?? Date.now)();

    let stored: StoredCleanerState | undefined;
    let damaged = false;
    try {
      stored = await readCleanerState(opts.stateFile);
    } catch (err) {
      if (!(err instanceof CleanerStateFileError)) throw err;
      // Deleting less than allowed is always safe, and a node that refuses to start over this file
      // would need someone to reach its volume: start paused, keep the file for inspection.
      damaged = true;
      const kept = `${opts.stateFile}.bad`;
      await rename(opts.stateFile, kept);
      opts.logger.error(
        { err, kept },
        "the cleaner state file is damaged: the cleaner starts paused until PUT /v1/admin/cleaner",
      );
    }
    let s: StoredCleanerState = stored ?? {
      state: damaged ? "paused" : "running",
      until: null,
      holdCount: flag,
      flagHoldCount: flag,
    };
    if (s.flagHoldCount !== flag) {
      opts.logger.info(
        { previousFlag: s.flagHoldCount, flag, replacedHoldCount: s.holdCount },
        "--hold-count changed since the cleaner's holdCount was set: the flag wins",
      );
      s = { ...s, holdCount: flag, flagHoldCount: flag };
    }
    if (s.state === "running" && s.until !== null && now >= s.until) {
      opts.logger.info(
        { until: new Date(s.until).toISOString() },
        "the cleaner's until passed while the node was down: it starts paused",
      );
      s = { ...s, state: "paused", until: null };
    }
    if (damaged || (stored !== undefined && !sameState(s, stored)))
      await writeCleanerState(opts.stateFile, s);
    const cleaner = new LogCleaner(opts, s);
    // Fails here, clearly, rather than in the first run when the log was not recovered.
    cleaner.log.minKept();
    return cleaner;
  }

  /** What `/v1/status` shows. A running cleaner past its `until` shows as paused already. */
  settings(): CleanerSettings {
    return publicSettings(this.expired(this.current) ?? this.current);
  }

  /** Lowest instance still in the PaxosLog: every instance below it is deleted. */
  minKept(): number {
    return this.log.minKept();
  }

  /** Whether the log is over maxLogBytes and being cleaned although the cleaner is paused. */
  get forcedCleaning(): boolean {
    return this.forcing;
  }

  /** RFC 3339 start of the latest maxLogBytes episode since this process started; null when none. */
  get lastForcedAt(): string | null {
    return this.lastForced === null ? null : new Date(this.lastForced).toISOString();
  }

  /** PhxPaxos PausePaxosLogCleaner. */
  pause(): Promise<CleanerSettings> {
    return this.update({ state: "paused" });
  }

  /** PhxPaxos ContinuePaxosLogCleaner; with `until`, the cleaner pauses itself at that time. */
  continue(until?: Date | null): Promise<CleanerSettings> {
    return this.update({ state: "running", until: until ?? null });
  }

  /** PhxPaxos SetHoldPaxosLogCount: takes effect at the next run, and survives restarts. */
  async setHoldCount(holdCount: number): Promise<CleanerSettings> {
    checkCount("holdCount", holdCount, 0);
    return this.mutate("holdCount set", (s) => ({ ...s, holdCount, flagHoldCount: this.opts.flagHoldCount }));
  }

  /**
   * `PUT /v1/admin/cleaner`: state and until are replaced together (no `until` means no end);
   * holdCount changes only when given. A `running` whose `until` has passed ends paused.
   */
  async update(u: CleanerUpdate): Promise<CleanerSettings> {
    if (u.holdCount !== undefined) checkCount("holdCount", u.holdCount, 0);
    const until = u.until ?? null;
    if (until !== null && u.state !== "running")
      throw new RangeError('until is only allowed with state "running"');
    if (until !== null && Number.isNaN(until.getTime())) throw new RangeError("until is an invalid date");
    return this.mutate("settings updated", (s) => {
      const next: StoredCleanerState = {
        state: u.state,
        until: until === null ? null : until.getTime(),
        holdCount: u.holdCount ?? s.holdCount,
        flagHoldCount: u.holdCount === undefined ? s.flagHoldCount : this.opts.flagHoldCount,
      };
      return this.expired(next) ?? next;
    });
  }

  /**
   * Runs runOnce() until close(), intervalMs after a run that deleted and IDLE_INTERVAL_MS after one
   * that did not (each counted from the end of the previous run).
   */
  start(): void {
    if (this.closed) throw new Error("LogCleaner.start() called after close()");
    if (this.timer === undefined) this.schedule(this.intervalMs);
  }

  private schedule(delay: number): void {
    this.timer = setTimeout(() => {
      this.runOnce().then(
        (deleted) =>
          this.closed ||
          this.schedule(deleted > 0 ? this.intervalMs : Math.max(this.intervalMs, IDLE_INTERVAL_MS)),
        (err: unknown) => {
          if (this.closed) return;
          this.logger.error({ err }, "log cleaner run failed; retrying");
          this.schedule(Math.max(this.intervalMs, RETRY_AFTER_FAILURE_MS));
        },
      );
    }, delay);
    // The cleaner alone must not keep the process alive.
    this.timer.unref();
  }

  /**
   * One run: pauses the cleaner if its `until` has passed, deletes at most batchSize records below
   * the bound when running (or forced by maxLogBytes), and compacts when enough was deleted or the
   * deletions ran out. Resolves to the number of records deleted. Runs never overlap.
   */
  runOnce(): Promise<number> {
    const run = this.runs.then(() => (this.closed ? 0 : this.runNow()));
    this.runs = run.catch(() => undefined);
    return run;
  }

  /** Stops the loop and waits for the run and state write in flight. The log stays open. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.runs;
    await this.stateWrites;
  }

  /** Instances below it may be deleted now (0: none). */
  private bound(): number {
    const checkpoint = this.opts.checkpointInstanceId();
    if (checkpoint < 0) return 0;
    return Math.max(0, Math.min(checkpoint - this.current.holdCount, this.opts.chosenUpTo() + 1));
  }

  private async runNow(): Promise<number> {
    if (this.expired(this.current) !== undefined) {
      await this.mutate("until reached", (s) => this.expired(s) ?? s);
    }
    if (this.current.state === "paused") {
      // Paused means no disk I/O from the cleaner: a pending compaction waits for the next run.
      if (!(await this.overLimit())) return 0;
    } else {
      // A later pause starts a new episode with a fresh size check.
      this.forcing = false;
      this.lastSizeCheck = Number.NEGATIVE_INFINITY;
    }

    const bound = this.bound();
    const before = this.log.minKept();
    let deleted = 0;
    if (bound > before) {
      const result = await this.log.deleteBelow(bound, this.batchSize);
      deleted = result.deleted;
      if (deleted > 0) {
        const p = this.pending;
        this.pending = {
          from: p === undefined ? before : Math.min(p.from, before),
          to: p === undefined ? result.minKept : Math.max(p.to, result.minKept),
          count: (p?.count ?? 0) + deleted,
        };
        this.logger.debug({ deleted, bound, minKept: result.minKept }, "deleted PaxosLog records");
        this.events.deleted?.(deleted);
      }
    }
    if (this.pending !== undefined && (this.pending.count >= this.compactEvery || deleted < this.batchSize)) {
      await this.compact(this.pending);
    }
    return deleted;
  }

  private async compact(p: PendingCompaction): Promise<void> {
    this.pending = undefined;
    const started = performance.now();
    try {
      await this.log.compactLog(p.from, p.to);
    } catch (err) {
      // Deletions since then join the range, so the retry covers everything.
      const q = this.pending as PendingCompaction | undefined;
      this.pending =
        q === undefined
          ? p
          : { from: Math.min(p.from, q.from), to: Math.max(p.to, q.to), count: p.count + q.count };
      throw err;
    }
    this.logger.info(
      {
        deleted: p.count,
        from: p.from,
        to: p.to,
        minKept: this.log.minKept(),
        seconds: (performance.now() - started) / 1000,
      },
      "compacted the cleaned PaxosLog range",
    );
  }

  /** Paused: whether the maxLogBytes valve forces cleaning, looking at the size at most every few seconds. */
  private async overLimit(): Promise<boolean> {
    if (this.maxLogBytes === undefined) return false;
    const now = this.now();
    if (now - this.lastSizeCheck < SIZE_CHECK_INTERVAL_MS) return this.forcing;
    this.lastSizeCheck = now;
    const bytes = await this.log.approximateLogBytes();
    const over = bytes > this.maxLogBytes;
    if (over && !this.forcing) {
      this.logger.warn(
        {
          bytes,
          maxLogBytes: this.maxLogBytes,
          checkpoint: this.opts.checkpointInstanceId(),
          holdCount: this.current.holdCount,
        },
        "the PaxosLog is larger than maxLogBytes: cleaning although the cleaner is paused",
      );
      this.lastForced = now;
      this.events.forced?.();
    } else if (!over && this.forcing) {
      this.logger.info(
        { bytes, maxLogBytes: this.maxLogBytes },
        "the PaxosLog is back under maxLogBytes: the paused cleaner stops cleaning",
      );
    }
    this.forcing = over;
    return over;
  }

  /** The paused state when `s` is running past its until; undefined otherwise. */
  private expired(s: StoredCleanerState): StoredCleanerState | undefined {
    if (s.state !== "running" || s.until === null || this.now() < s.until) return undefined;
    return { ...s, state: "paused" as CleanerState, until: null };
  }

  /** Applies a change to the settings: persisted first, so a failed write changes nothing. */
  private mutate(
    what: string,
    change: (s: StoredCleanerState) => StoredCleanerState,
  ): Promise<CleanerSettings> {
    const run = this.stateWrites.then(async () => {
      const previous = this.current;
      const next = change(previous);
      if (!sameState(next, previous)) {
        await writeCleanerState(this.opts.stateFile, next);
        this.current = next;
        this.logger.info(
          { previous: publicSettings(previous), settings: publicSettings(next) },
          `cleaner ${what}`,
        );
      }
      return this.settings();
    });
    this.stateWrites = run.catch(() => undefined);
    return run;
  }
}
