import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { pino } from "pino";
import {
  CleanerInputError,
  type CleanerUpdate,
  LogCleaner,
  type LogCleanerOptions,
  parseCleanerUpdate,
} from "../../src/checkpoint/cleaner.js";
import { parseRfc3339 } from "../../src/checkpoint/cleaner-state.js";
import type { Ballot, LogRecord } from "../../src/paxos/types.js";
import { PaxosLog } from "../../src/storage/paxos-log.js";
import { RocksStore } from "../../src/storage/rocks.js";

const tempRoots: string[] = [];
after(async () => {
  for (const dir of tempRoots) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "cleaner-test-"));
  tempRoots.push(dir);
  return dir;
}

const BALLOT: Ballot = { counter: 1, member: "n1" };

function record(instance: number, chosen: boolean, payload: Uint8Array): LogRecord {
  return {
    instance,
    ballot: BALLOT,
    chosen,
    value: { kind: "commands", id: `v${instance}`, commands: [payload] },
  };
}

/** Chosen records from..to with payloads of `size` bytes (random, so compression cannot hide them). */
async function writeChosen(log: PaxosLog, from: number, to: number, size = 16): Promise<void> {
  for (let start = from; start <= to; start += 500) {
    const end = Math.min(to, start + 499);
    const records: LogRecord[] = [];
    for (let i = start; i <= end; i++) records.push(record(i, true, randomBytes(size)));
    await log.persist({ promised: BALLOT, records, chosenUpTo: end });
  }
}

/** Instances present in the closed log at `dir`, read straight from RocksDB. */
async function presentInstances(dir: string): Promise<number[]> {
  const store = await RocksStore.open(dir);
  try {
    const out: number[] = [];
    for await (const key of store.keys({ gte: Buffer.from("L"), lt: Buffer.from("M") })) {
      out.push(Number(key.readBigUInt64BE(1)));
    }
    return out;
  } finally {
    await store.close();
  }
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

interface LogLine {
  level: number;
  msg: string;
}

/** A fresh data dir with a recovered log holding chosen instances 0..to. */
async function setup(to: number, size = 16) {
  const dataDir = await tempDir();
  const logDir = path.join(dataDir, "log");
  const log = await PaxosLog.open(logDir);
  await log.recover();
  if (to >= 0) await writeChosen(log, 0, to, size);
  return { dataDir, logDir, log, stateFile: path.join(dataDir, "cleaner.json") };
}

class Clock {
  constructor(public ms = Date.parse("2026-01-01T00:00:00Z")) {}
  readonly now = () => this.ms;
}

async function openCleaner(
  o: Partial<LogCleanerOptions> & Pick<LogCleanerOptions, "log" | "stateFile">,
  lines: LogLine[] = [],
) {
  const cleaner = await LogCleaner.open({
    logger: pino(
      { level: "debug" },
      { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
    ),
    checkpointInstanceId: () => -1,
    chosenUpTo: () => -1,
    flagHoldCount: 100,
    ...o,
  });
  return cleaner;
}

/** runOnce() until a run deletes nothing; the number of records deleted in all. */
async function drain(cleaner: LogCleaner): Promise<number> {
  let total = 0;
  for (let i = 0; i < 10_000; i++) {
    const n = await cleaner.runOnce();
    if (n === 0) return total;
    total += n;
  }
  throw new Error("the cleaner never ran out of work");
}

async function readState(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
}

async function sstBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) {
    if (name.endsWith(".sst")) total += (await stat(path.join(dir, name))).size;
  }
  return total;
}

describe("PaxosLog deletion primitives", () => {
  test("minKept is unknown before recover()", async () => {
    const dir = await tempDir();
    const log = await PaxosLog.open(dir);
    try {
      assert.throws(() => log.minKept(), /before recover/);
    } finally {
      await log.close();
    }
  });

  test("deleteBelow deletes lowest first, at most maxCount, and keeps the meta keys", async () => {
    const { logDir, log } = await setup(99);
    assert.equal(log.minKept(), 0);
    assert.deepEqual(await log.deleteBelow(50, 20), { deleted: 20, minKept: 20 });
    assert.deepEqual(await log.deleteBelow(50, 100, { sync: true }), { deleted: 30, minKept: 50 });
    assert.deepEqual(await log.deleteBelow(50, 100), { deleted: 0, minKept: 50 });
    assert.deepEqual(await log.deleteBelow(10, 100), { deleted: 0, minKept: 50 });
    assert.deepEqual(await log.readChosen(49, 10, 1 << 20), []);
    assert.equal((await log.readChosen(50, 100, 1 << 20)).length, 50);
    await log.close();

    assert.deepEqual(await presentInstances(logDir), range(50, 99));
    const reopened = await PaxosLog.open(logDir);
    try {
      const state = await reopened.recover();
      assert.deepEqual(state.promised, BALLOT);
      assert.equal(state.chosenUpTo, 99);
      assert.equal(state.minInstance, 50);
      assert.equal(reopened.minKept(), 50);
    } finally {
      await reopened.close();
    }
  });

  test("deleting everything leaves minKept at the bound; a rewrite below minKept lowers it", async () => {
    const { log } = await setup(9);
    try {
      assert.deepEqual(await log.deleteBelow(20, 100), { deleted: 10, minKept: 20 });
      await log.persist({ records: [record(5, true, new Uint8Array([1]))] });
      assert.equal(log.minKept(), 5);
      assert.deepEqual(await log.deleteBelow(20, 100), { deleted: 1, minKept: 20 });
    } finally {
      await log.close();
    }
  });

  test("invalid arguments are refused", async () => {
    const { log } = await setup(9);
    try {
      await assert.rejects(log.deleteBelow(-1, 10), RangeError);
      await assert.rejects(log.deleteBelow(5, 0), RangeError);
      await assert.rejects(log.deleteBelow(1.5, 10), RangeError);
      await assert.rejects(log.compactLog(-1, 5), RangeError);
      assert.equal(log.minKept(), 0);
    } finally {
      await log.close();
    }
  });
});

describe("LogCleaner deletion", () => {
  test("a running cleaner deletes exactly the entries below checkpoint - holdCount, in batches", async () => {
    const { logDir, log, stateFile } = await setup(999);
    // Accepted but not chosen: above chosenUpTo, never the cleaner's business.
    await log.persist({ records: [record(1000, false, new Uint8Array([1]))] });
    const deletedEvents: number[] = [];
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 100,
      checkpointInstanceId: () => 900,
      chosenUpTo: () => 999,
      batchSize: 300,
      events: { deleted: (n) => deletedEvents.push(n) },
    });
    assert.deepEqual(cleaner.settings(), { state: "running", until: null, holdCount: 100 });
    assert.deepEqual(
      [await cleaner.runOnce(), await cleaner.runOnce(), await cleaner.runOnce(), await cleaner.runOnce()],
      [300, 300, 200, 0],
    );
    assert.deepEqual(deletedEvents, [300, 300, 200]);
    assert.equal(cleaner.minKept(), 800);
    let replayed = 0;
    for await (const e of log.replay(800, 999)) assert.equal(e.instance, 800 + replayed++);
    assert.equal(replayed, 200);
    await cleaner.close();
    await log.close();
    assert.deepEqual(await presentInstances(logDir), range(800, 1000));
  });

  test("nothing is deleted without a checkpoint, and never above chosenUpTo", async () => {
    const { logDir, log, stateFile } = await setup(99);
    await log.persist({ records: [record(101, true, new Uint8Array([1]))] });
    let checkpoint = -1;
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 0,
      checkpointInstanceId: () => checkpoint,
      chosenUpTo: () => 99,
    });
    assert.equal(await drain(cleaner), 0);
    // A checkpoint beyond chosenUpTo cannot happen, but the bound would still stop at chosenUpTo.
    checkpoint = 500;
    assert.equal(await drain(cleaner), 100);
    await cleaner.close();
    await log.close();
    assert.deepEqual(await presentInstances(logDir), [101]);
  });

  test("disk use shrinks once the deleted range is compacted", async () => {
    // About 24 MB of incompressible values.
    const { logDir, log, stateFile } = await setup(2399, 10_000);
    // Flush the memtable so the size estimate sees everything.
    await log.compactLog(0, 2400);
    const before = await log.approximateLogBytes();
    const sstBefore = await sstBytes(logDir);
    assert.ok(before > 20_000_000, `the log should take > 20 MB, takes ${before}`);
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 100,
      checkpointInstanceId: () => 2399,
      chosenUpTo: () => 2399,
      batchSize: 1000,
    });
    assert.equal(await drain(cleaner), 2299);
    const afterBytes = await log.approximateLogBytes();
    const sstAfter = await sstBytes(logDir);
    assert.ok(afterBytes < before / 5, `approximateLogBytes ${before} -> ${afterBytes}`);
    assert.ok(sstAfter < sstBefore / 5, `SST files ${sstBefore} -> ${sstAfter} bytes`);
    await cleaner.close();
    await log.close();
    assert.deepEqual(await presentInstances(logDir), range(2299, 2399));
  });

  test("a paused cleaner deletes nothing; continue() resumes", async () => {
    const { logDir, log, stateFile } = await setup(199);
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 10,
      checkpointInstanceId: () => 199,
      chosenUpTo: () => 199,
    });
    assert.deepEqual(await cleaner.pause(), { state: "paused", until: null, holdCount: 10 });
    assert.equal(await drain(cleaner), 0);
    assert.equal(cleaner.minKept(), 0);
    await cleaner.continue();
    assert.equal(await drain(cleaner), 189);
    await cleaner.close();
    await log.close();
    assert.deepEqual(await presentInstances(logDir), range(189, 199));
  });

  test("a holdCount changed at run time takes effect at the next run", async () => {
    const { log, stateFile } = await setup(999);
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 500,
      checkpointInstanceId: () => 999,
      chosenUpTo: () => 999,
    });
    try {
      assert.equal(await drain(cleaner), 499);
      assert.deepEqual(await cleaner.setHoldCount(100), { state: "running", until: null, holdCount: 100 });
      assert.equal(await drain(cleaner), 400);
      assert.equal(cleaner.minKept(), 899);
      await assert.rejects(cleaner.setHoldCount(-1), RangeError);
      assert.equal(cleaner.settings().holdCount, 100);
    } finally {
      await cleaner.close();
      await log.close();
    }
  });

  test("start() cleans in the background until close()", async () => {
    const { log, stateFile } = await setup(999);
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 0,
      checkpointInstanceId: () => 999,
      chosenUpTo: () => 999,
      batchSize: 100,
      intervalMs: 5,
    });
    try {
      cleaner.start();
      const deadline = Date.now() + 20_000;
      while (cleaner.minKept() < 999 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(cleaner.minKept(), 999);
    } finally {
      await cleaner.close();
      await log.close();
    }
  });
});

describe("LogCleaner until", () => {
  test("running with an until in the past ends paused and deletes nothing", async () => {
    const { log, stateFile } = await setup(99);
    const clock = new Clock();
    const cleaner = await openCleaner({
      log,
      stateFile,
      now: clock.now,
      flagHoldCount: 0,
      checkpointInstanceId: () => 99,
      chosenUpTo: () => 99,
    });
    try {
      const update = parseCleanerUpdate({ state: "running", until: "2025-12-31T23:00:00Z" });
      assert.deepEqual(await cleaner.update(update), { state: "paused", until: null, holdCount: 0 });
      assert.equal(await drain(cleaner), 0);
      assert.equal((await readState(stateFile)).state, "paused");
    } finally {
      await cleaner.close();
      await log.close();
    }
  });

  test("a running cleaner pauses itself at until, persisted across a reopen", async () => {
    const { log, stateFile } = await setup(999);
    const clock = new Clock();
    let chosen = 499;
    const options = {
      log,
      stateFile,
      now: clock.now,
      flagHoldCount: 0,
      checkpointInstanceId: () => chosen,
      chosenUpTo: () => chosen,
    };
    const cleaner = await openCleaner(options);
    const until = "2026-01-01T01:00:00.000Z";
    assert.deepEqual(
      await cleaner.update(parseCleanerUpdate({ state: "running", until: "2026-01-01T02:00:00+01:00" })),
      {
        state: "running",
        until,
        holdCount: 0,
      },
    );
    assert.equal(await drain(cleaner), 499);
    clock.ms = Date.parse(until);
    chosen = 999;
    // Status shows it at once; the next run persists it and deletes nothing.
    assert.equal(cleaner.settings().state, "paused");
    assert.equal(await cleaner.runOnce(), 0);
    assert.deepEqual(await readState(stateFile), {
      format: 1,
      state: "paused",
      until: null,
      holdCount: 0,
      flagHoldCount: 0,
    });
    await cleaner.close();

    const reopened = await openCleaner(options);
    try {
      assert.deepEqual(reopened.settings(), { state: "paused", until: null, holdCount: 0 });
      assert.equal(await drain(reopened), 0);
    } finally {
      await reopened.close();
      await log.close();
    }
  });

  test("an until that passed while the node was down pauses it at open", async () => {
    const { log, stateFile } = await setup(99);
    const clock = new Clock();
    const options = {
      log,
      stateFile,
      now: clock.now,
      flagHoldCount: 0,
      checkpointInstanceId: () => 99,
      chosenUpTo: () => 99,
    };
    const cleaner = await openCleaner(options);
    await cleaner.continue(new Date(clock.ms + 60_000));
    await cleaner.close();
    clock.ms += 120_000;
    const lines: LogLine[] = [];
    const reopened = await openCleaner(options, lines);
    try {
      assert.deepEqual(reopened.settings(), { state: "paused", until: null, holdCount: 0 });
      assert.equal((await readState(stateFile)).state, "paused");
      assert.ok(lines.some((l) => /until passed/.test(l.msg)));
      assert.equal(await drain(reopened), 0);
    } finally {
      await reopened.close();
      await log.close();
    }
  });
});

describe("LogCleaner state file", () => {
  test("state and holdCount survive a reopen", async () => {
    const { log, stateFile } = await setup(-1);
    const options = { log, stateFile, flagHoldCount: 100 };
    const cleaner = await openCleaner(options);
    await cleaner.pause();
    await cleaner.setHoldCount(7);
    await cleaner.close();
    const reopened = await openCleaner(options);
    assert.deepEqual(reopened.settings(), { state: "paused", until: null, holdCount: 7 });
    await reopened.continue(new Date("2030-01-01T00:00:00Z"));
    await reopened.close();
    const third = await openCleaner(options);
    try {
      assert.deepEqual(third.settings(), {
        state: "running",
        until: "2030-01-01T00:00:00.000Z",
        holdCount: 7,
      });
    } finally {
      await third.close();
      await log.close();
    }
  });

  test("a changed --hold-count flag wins over a holdCount set at run time; an unchanged one does not", async () => {
    const { log, stateFile } = await setup(-1);
    const first = await openCleaner({ log, stateFile, flagHoldCount: 100 });
    assert.equal(first.settings().holdCount, 100);
    await first.setHoldCount(7);
    await first.close();

    const sameFlag = await openCleaner({ log, stateFile, flagHoldCount: 100 });
    assert.equal(sameFlag.settings().holdCount, 7);
    await sameFlag.close();

    const newFlag = await openCleaner({ log, stateFile, flagHoldCount: 200 });
    assert.equal(newFlag.settings().holdCount, 200);
    assert.equal((await readState(stateFile)).flagHoldCount, 200);
    await newFlag.setHoldCount(9);
    await newFlag.close();

    const again = await openCleaner({ log, stateFile, flagHoldCount: 200 });
    try {
      assert.equal(again.settings().holdCount, 9);
    } finally {
      await again.close();
      await log.close();
    }
  });

  test("a damaged state file is kept aside and the cleaner starts paused", async () => {
    const { log, stateFile } = await setup(-1);
    await writeFile(stateFile, "{not json");
    const lines: LogLine[] = [];
    const cleaner = await openCleaner({ log, stateFile, flagHoldCount: 100 }, lines);
    try {
      assert.deepEqual(cleaner.settings(), { state: "paused", until: null, holdCount: 100 });
      assert.equal(await readFile(`${stateFile}.bad`, "utf8"), "{not json");
      assert.equal((await readState(stateFile)).state, "paused");
      assert.ok(lines.some((l) => l.level === 50 && /damaged/.test(l.msg)));
    } finally {
      await cleaner.close();
      await log.close();
    }
  });
});

describe("LogCleaner maxLogBytes safety valve", () => {
  test("past maxLogBytes a paused cleaner cleans up to the checkpoint bound, with one warning", async () => {
    // About 4 MB of incompressible values.
    const { logDir, log, stateFile } = await setup(399, 10_000);
    await log.compactLog(0, 400);
    const clock = new Clock();
    const lines: LogLine[] = [];
    let forced = 0;
    const cleaner = await openCleaner(
      {
        log,
        stateFile,
        now: clock.now,
        flagHoldCount: 50,
        checkpointInstanceId: () => 300,
        chosenUpTo: () => 399,
        batchSize: 100,
        maxLogBytes: 2_500_000,
        events: { forced: () => forced++ },
      },
      lines,
    );
    await cleaner.pause();
    assert.equal(cleaner.lastForcedAt, null);
    const episodeStart = new Date(clock.ms).toISOString();
    assert.equal(await drain(cleaner), 250);
    assert.equal(cleaner.forcedCleaning, true);
    assert.equal(cleaner.lastForcedAt, episodeStart);
    assert.equal(forced, 1);
    const warnings = lines.filter((l) => l.level === 40 && /maxLogBytes/.test(l.msg));
    assert.equal(warnings.length, 1);
    assert.deepEqual(cleaner.settings(), { state: "paused", until: null, holdCount: 50 });

    // The next size check sees the compacted log under the limit and ends the episode.
    clock.ms += 10_000;
    assert.equal(await cleaner.runOnce(), 0);
    assert.equal(cleaner.forcedCleaning, false);
    assert.equal(cleaner.lastForcedAt, episodeStart, "the episode stays reported after it ended");
    assert.ok(lines.some((l) => /back under maxLogBytes/.test(l.msg)));
    await cleaner.close();
    await log.close();
    assert.deepEqual(await presentInstances(logDir), range(250, 399));
  });

  test("under maxLogBytes a paused cleaner stays idle", async () => {
    const { log, stateFile } = await setup(99);
    const cleaner = await openCleaner({
      log,
      stateFile,
      flagHoldCount: 0,
      checkpointInstanceId: () => 99,
      chosenUpTo: () => 99,
      maxLogBytes: 1 << 30,
    });
    try {
      await cleaner.pause();
      assert.equal(await drain(cleaner), 0);
      assert.equal(cleaner.forcedCleaning, false);
    } finally {
      await cleaner.close();
      await log.close();
    }
  });
});

describe("parseCleanerUpdate", () => {
  const good: [unknown, CleanerUpdate][] = [
    [{ state: "running" }, { state: "running" }],
    [{ state: "paused" }, { state: "paused" }],
    [
      { state: "paused", until: null },
      { state: "paused", until: null },
    ],
    [
      { state: "running", until: "2026-11-28T10:00:00Z" },
      { state: "running", until: new Date("2026-11-28T10:00:00Z") },
    ],
    [
      { state: "running", until: "2026-11-28T12:00:00.5+02:00", holdCount: 300 },
      { state: "running", until: new Date("2026-11-28T10:00:00.500Z"), holdCount: 300 },
    ],
    [
      { state: "running", until: "2024-02-29t23:59:59.123456789-05:30" },
      { state: "running", until: new Date("2024-03-01T05:29:59.123Z") },
    ],
    [
      { state: "paused", holdCount: 0 },
      { state: "paused", holdCount: 0 },
    ],
    [
      { state: "running", holdCount: Number.MAX_SAFE_INTEGER },
      { state: "running", holdCount: Number.MAX_SAFE_INTEGER },
    ],
  ];
  for (const [body, expected] of good) {
    test(`accepts ${JSON.stringify(body)}`, () => {
      assert.deepEqual(parseCleanerUpdate(body), expected);
    });
  }

  const bad: [unknown, string][] = [
    [null, "body"],
    ["running", "body"],
    [[{ state: "running" }], "body"],
    [{}, "state"],
    [{ state: "stopped" }, "state"],
    [{ state: "RUNNING" }, "state"],
    [{ state: 1 }, "state"],
    [{ state: "running", extra: 1 }, "extra"],
    [{ state: "running", until: "tomorrow" }, "until"],
    [{ state: "running", until: "2026-11-28T10:00:00" }, "until"],
    [{ state: "running", until: "2026-11-28" }, "until"],
    [{ state: "running", until: "2026-11-28 10:00:00Z" }, "until"],
    [{ state: "running", until: "2026-02-30T10:00:00Z" }, "until"],
    [{ state: "running", until: "2026-13-01T10:00:00Z" }, "until"],
    [{ state: "running", until: "2026-11-28T24:00:00Z" }, "until"],
    [{ state: "running", until: "2026-11-28T10:00:60Z" }, "until"],
    [{ state: "running", until: "2026-11-28T10:00:00+24:00" }, "until"],
    [{ state: "running", until: "9999-12-31T23:00:00-02:00" }, "until"],
    [{ state: "running", until: 1764324000000 }, "until"],
    [{ state: "paused", until: "2026-11-28T10:00:00Z" }, "until"],
    [{ state: "running", holdCount: -1 }, "holdCount"],
    [{ state: "running", holdCount: 1.5 }, "holdCount"],
    [{ state: "running", holdCount: "300" }, "holdCount"],
    [{ state: "running", holdCount: Number.MAX_SAFE_INTEGER + 1 }, "holdCount"],
    [{ state: "running", holdCount: null }, "holdCount"],
  ];
  for (const [body, field] of bad) {
    test(`refuses ${JSON.stringify(body)} naming ${field}`, () => {
      assert.throws(
        () => parseCleanerUpdate(body),
        (err: unknown) =>
          err instanceof CleanerInputError && err.field === field && err.message.includes(field),
      );
    });
  }

  test("parseRfc3339 keeps four-digit years at the edges", () => {
    assert.equal(parseRfc3339("0000-01-01T00:00:00Z"), Date.parse("0000-01-01T00:00:00Z"));
    assert.equal(parseRfc3339("0000-01-01T00:30:00+01:00"), undefined);
    assert.equal(parseRfc3339("9999-12-31T23:59:59Z"), Date.parse("9999-12-31T23:59:59Z"));
  });
});
