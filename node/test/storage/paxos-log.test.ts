import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import type { Ballot, ChosenEntry, LogRecord, Value } from "../../src/paxos/types.js";
import { ZERO_BALLOT } from "../../src/paxos/types.js";
import { CorruptRecordError, PaxosLog } from "../../src/storage/paxos-log.js";
import { RocksStore } from "../../src/storage/rocks.js";

const tempRoots: string[] = [];
after(async () => {
  for (const dir of tempRoots) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "paxos-log-test-"));
  tempRoots.push(dir);
  return dir;
}

const B1: Ballot = { counter: 1, member: "n1" };
const B2: Ballot = { counter: 2, member: "n2" };

function value(i: number): Value {
  return { kind: "commands", id: `v${i}`, commands: [new Uint8Array([i & 0xff, 1, 2, 3])] };
}

function rec(instance: number, chosen: boolean, ballot: Ballot = B1): LogRecord {
  return { instance, ballot, chosen, value: value(instance) };
}

function logKey(instance: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = 0x4c;
  key.writeBigUInt64BE(BigInt(instance), 1);
  return key;
}

async function collect(it: AsyncIterable<ChosenEntry>): Promise<ChosenEntry[]> {
  const out: ChosenEntry[] = [];
  for await (const e of it) out.push(e);
  return out;
}

async function withLog(dir: string, fn: (log: PaxosLog) => Promise<void>): Promise<void> {
  const log = await PaxosLog.open(dir);
  try {
    await fn(log);
  } finally {
    await log.close();
  }
}

describe("PaxosLog persist and recover", () => {
  test("a new log recovers as empty", async () => {
    await withLog(await tempDir(), async (log) => {
      assert.deepEqual(await log.recover(), {
        promised: ZERO_BALLOT,
        chosenUpTo: -1,
        minInstance: 0,
        unchosen: [],
        abstainUntil: -1,
        fencedBy: null,
        initialConfiguration: null,
      });
    });
  });

  test("promised, chosenUpTo and the records above it survive a reopen, gaps included", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({ promised: B1, records: [rec(0, true), rec(1, true), rec(2, true)], chosenUpTo: 2 });
      // 3 accepted but not chosen, 4 missing, 5 chosen beyond the gap.
      await log.persist({ promised: B2, records: [rec(3, false, B2), rec(5, true, B2)] });
    });
    await withLog(dir, async (log) => {
      const state = await log.recover();
      assert.deepEqual(state.promised, B2);
      assert.equal(state.chosenUpTo, 2);
      assert.equal(state.minInstance, 0);
      assert.deepEqual(state.unchosen, [rec(3, false, B2), rec(5, true, B2)]);
    });
  });

  test("recover extends a stored chosenUpTo over the contiguous chosen records after it", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({ records: [rec(0, true), rec(1, true), rec(2, true), rec(3, true)], chosenUpTo: 1 });
      await log.persist({ records: [rec(4, false), rec(6, true)] });
    });
    await withLog(dir, async (log) => {
      const state = await log.recover();
      assert.equal(state.chosenUpTo, 3);
      assert.deepEqual(state.unchosen, [rec(4, false), rec(6, true)]);
    });
  });

  test("a record rewritten as chosen replaces the accepted one", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({ records: [rec(0, false)] });
      await log.persist({ records: [rec(0, true, B2)], chosenUpTo: 0 });
      assert.deepEqual(await log.recover(), {
        promised: ZERO_BALLOT,
        chosenUpTo: 0,
        minInstance: 0,
        unchosen: [],
        abstainUntil: -1,
        fencedBy: null,
        initialConfiguration: null,
      });
      assert.deepEqual(await log.readChosen(0, 10, 1 << 20), [{ instance: 0, value: value(0) }]);
    });
  });

  test("minInstance is the lowest instance present", async () => {
    await withLog(await tempDir(), async (log) => {
      await log.persist({ records: [rec(7, false), rec(9, true)] });
      const state = await log.recover();
      assert.equal(state.chosenUpTo, -1);
      assert.equal(state.minInstance, 7);
      assert.deepEqual(
        state.unchosen.map((r) => r.instance),
        [7, 9],
      );
    });
  });

  test("instances far apart scan in numeric order", async () => {
    await withLog(await tempDir(), async (log) => {
      const instances = [2 ** 40, 256, 255, 65536, 1];
      await log.persist({ records: instances.map((i) => rec(i, false)) });
      const state = await log.recover();
      assert.deepEqual(
        state.unchosen.map((r) => r.instance),
        [...instances].sort((a, b) => a - b),
      );
    });
  });

  test("invalid input is refused and writes nothing", async () => {
    await withLog(await tempDir(), async (log) => {
      await assert.rejects(
        log.persist({ records: [], chosenUpTo: -2 }),
        /chosenUpTo must be an integer >= -1/,
      );
      await assert.rejects(log.persist({ records: [rec(-1, true)] }), /non-negative safe integer/);
      await assert.rejects(log.persist({ records: [rec(1.5, true)] }), /non-negative safe integer/);
      assert.deepEqual(await log.recover(), {
        promised: ZERO_BALLOT,
        chosenUpTo: -1,
        minInstance: 0,
        unchosen: [],
        abstainUntil: -1,
        fencedBy: null,
        initialConfiguration: null,
      });
    });
  });
});

describe("PaxosLog reads", () => {
  async function filledLog(): Promise<PaxosLog> {
    const log = await PaxosLog.open(await tempDir());
    // 0..9 chosen, 10 accepted only, 11 chosen, 12 missing, 13 chosen.
    const records = Array.from({ length: 10 }, (_, i) => rec(i, true));
    await log.persist({ records: [...records, rec(10, false), rec(11, true), rec(13, true)], chosenUpTo: 9 });
    return log;
  }

  test("readChosen honours maxCount and maxBytes and always returns one entry if available", async () => {
    const log = await filledLog();
    try {
      assert.deepEqual(
        (await log.readChosen(2, 3, 1 << 20)).map((e) => e.instance),
        [2, 3, 4],
      );
      assert.deepEqual(await log.readChosen(4, 1, 1 << 20), [{ instance: 4, value: value(4) }]);
      // Each value is a few dozen bytes: a zero byte budget still yields one entry.
      assert.deepEqual(
        (await log.readChosen(0, 100, 0)).map((e) => e.instance),
        [0],
      );
      const two = await log.readChosen(0, 100, 50);
      assert.ok(two.length >= 1 && two.length < 10, `expected a byte-bounded batch, got ${two.length}`);
      assert.deepEqual(await log.readChosen(0, 0, 1 << 20), []);
    } finally {
      await log.close();
    }
  });

  test("readChosen stops at the first unchosen or missing instance", async () => {
    const log = await filledLog();
    try {
      assert.deepEqual(
        (await log.readChosen(5, 100, 1 << 20)).map((e) => e.instance),
        [5, 6, 7, 8, 9],
      );
      assert.deepEqual(await log.readChosen(10, 100, 1 << 20), []);
      assert.deepEqual(
        (await log.readChosen(11, 100, 1 << 20)).map((e) => e.instance),
        [11],
      );
      assert.deepEqual(await log.readChosen(12, 100, 1 << 20), []);
      assert.deepEqual(await log.readChosen(1000, 100, 1 << 20), []);
    } finally {
      await log.close();
    }
  });

  test("replay yields every chosen entry of the range in order", async () => {
    const log = await filledLog();
    try {
      const entries = await collect(log.replay(3, 9));
      assert.deepEqual(
        entries,
        [3, 4, 5, 6, 7, 8, 9].map((i) => ({ instance: i, value: value(i) })),
      );
      assert.deepEqual(await collect(log.replay(5, 4)), []);
    } finally {
      await log.close();
    }
  });

  test("replay throws on an unchosen instance, a gap and a range past the end", async () => {
    const log = await filledLog();
    try {
      await assert.rejects(collect(log.replay(8, 11)), /instance 10 is not chosen/);
      await assert.rejects(collect(log.replay(11, 13)), /instance 12 is missing/);
      await assert.rejects(collect(log.replay(13, 20)), /instance 14 is missing/);
      await assert.rejects(collect(log.replay(100, 101)), /instance 100 is missing/);
    } finally {
      await log.close();
    }
  });
});

describe("PaxosLog group commit", () => {
  test("50 persists issued together share far fewer than 50 synced writes", async () => {
    const syncs: number[] = [];
    const log = await PaxosLog.open(await tempDir(), { onSync: (_seconds, records) => syncs.push(records) });
    try {
      const pending = Array.from({ length: 50 }, (_, i) =>
        log.persist({ promised: { counter: i + 1, member: "n1" }, records: [rec(i, true)], chosenUpTo: i }),
      );
      await Promise.all(pending);
      assert.ok(syncs.length >= 1 && syncs.length <= 5, `expected a handful of syncs, saw ${syncs.length}`);
      assert.equal(
        syncs.reduce((a, b) => a + b, 0),
        50,
      );
      const state = await log.recover();
      assert.deepEqual(state.promised, { counter: 50, member: "n1" });
      assert.equal(state.chosenUpTo, 49);
    } finally {
      await log.close();
    }
  });

  test("persists arriving during a synced write are merged into the next one", async () => {
    const syncs: number[] = [];
    const log = await PaxosLog.open(await tempDir(), { onSync: (_seconds, records) => syncs.push(records) });
    try {
      const first = log.persist({ records: [rec(0, true)], chosenUpTo: 0 });
      // Let the first write start, then queue 49 more behind it.
      await new Promise((resolve) => setImmediate(resolve));
      const rest = Array.from({ length: 49 }, (_, i) =>
        log.persist({ records: [rec(i + 1, true)], chosenUpTo: i + 1 }),
      );
      await Promise.all([first, ...rest]);
      assert.ok(syncs.length <= 5, `expected a handful of syncs, saw ${syncs.length}`);
      assert.equal((await log.recover()).chosenUpTo, 49);
    } finally {
      await log.close();
    }
  });

  test("within one merged batch the last write of a key wins", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await Promise.all([
        log.persist({ promised: B2, records: [rec(0, false, B1)] }),
        log.persist({ promised: B1, records: [rec(0, true, B2)], chosenUpTo: 0 }),
        log.persist({ records: [rec(1, false)], chosenUpTo: 0 }),
      ]);
    });
    await withLog(dir, async (log) => {
      const state = await log.recover();
      assert.deepEqual(state.promised, B1);
      assert.equal(state.chosenUpTo, 0);
      assert.deepEqual(await log.readChosen(0, 1, 1 << 20), [{ instance: 0, value: value(0) }]);
      assert.deepEqual(state.unchosen, [rec(1, false)]);
    });
  });

  test("the abstain bound and fenced voters of a member that rejoined without its state survive a reopen", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({ promised: B2, records: [], abstainUntil: 41, fencedBy: ["b", "c"] });
    });
    await withLog(dir, async (log) => {
      const state = await log.recover();
      assert.equal(state.abstainUntil, 41);
      assert.deepEqual(state.fencedBy, ["b", "c"]);
      assert.deepEqual(state.promised, B2);
      await log.persist({ records: [], fencedBy: null });
    });
    await withLog(dir, async (log) => {
      const state = await log.recover();
      assert.equal(state.fencedBy, null, "done with the rejoin's checks, for good");
      assert.equal(state.abstainUntil, 41);
    });
  });

  test("the configuration a member started with survives a reopen, with its promise in one batch", async () => {
    const dir = await tempDir();
    const initialConfiguration = {
      members: [
        { name: "a", address: "10.0.0.1:7000", role: "voter" as const },
        { name: "b", address: "10.0.0.2:7000", role: "voter" as const },
        { name: "c", address: "", role: "learner" as const },
      ],
    };
    await withLog(dir, async (log) => {
      await log.persist({ promised: B2, records: [], initialConfiguration });
    });
    await withLog(dir, async (log) => {
      const state = await log.recover();
      assert.deepEqual(state.initialConfiguration, initialConfiguration);
      assert.deepEqual(state.promised, B2);
    });
  });

  test("an empty persist resolves", async () => {
    await withLog(await tempDir(), async (log) => {
      await log.persist({ records: [] });
    });
  });
});

describe("PaxosLog checksums", () => {
  async function corrupt(dir: string, key: Buffer): Promise<void> {
    const store = await RocksStore.open(dir);
    try {
      const stored = await store.get(key);
      assert.ok(stored, "the record to corrupt exists");
      const damaged = Buffer.from(stored);
      const last = damaged.length - 1;
      damaged[last] = damaged[last]! ^ 0x01;
      await store.batch([{ type: "put", key, value: damaged }], { sync: true });
    } finally {
      await store.close();
    }
  }

  test("a flipped byte in a record is reported with its instance by every read path", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({
        records: [rec(0, true), rec(1, true), rec(2, true), rec(3, false)],
        chosenUpTo: 0,
      });
    });
    await corrupt(dir, logKey(2));
    await withLog(dir, async (log) => {
      const expected = (err: unknown) =>
        err instanceof CorruptRecordError && /instance 2/.test(err.message) && /checksum/.test(err.message);
      await assert.rejects(log.recover(), expected);
      await assert.rejects(log.readChosen(0, 10, 1 << 20), expected);
      await assert.rejects(collect(log.replay(0, 3)), expected);
      // Reads that do not touch the damaged record still work.
      assert.equal((await log.readChosen(0, 2, 1 << 20)).length, 2);
    });
  });

  test("a flipped byte in the promised ballot is detected", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({ promised: B2, records: [] });
    });
    await corrupt(dir, Buffer.from("Mpromised"));
    await withLog(dir, async (log) => {
      await assert.rejects(
        log.recover(),
        (err: unknown) => err instanceof CorruptRecordError && /promised/.test(err.message),
      );
    });
  });
});

describe("PaxosLog close", () => {
  test("close waits for writes in flight and refuses later calls", async () => {
    const log = await PaxosLog.open(await tempDir());
    let resolved = false;
    const write = log.persist({ records: [rec(0, true)], chosenUpTo: 0 }).then(() => {
      resolved = true;
    });
    await log.close();
    assert.equal(resolved, true, "the persist() issued before close() resolved first");
    await write;
    await assert.rejects(
      log.persist({ records: [rec(1, true)] }),
      /PaxosLog is closed: persist\(\) called after close\(\)/,
    );
    await assert.rejects(log.recover(), /PaxosLog is closed/);
    await assert.rejects(log.readChosen(0, 1, 1), /PaxosLog is closed/);
    await log.close();
  });

  test("what was persisted before close is there after reopening", async () => {
    const dir = await tempDir();
    const log = await PaxosLog.open(dir);
    const writes = Array.from({ length: 20 }, (_, i) =>
      log.persist({ records: [rec(i, true)], chosenUpTo: i }),
    );
    await log.close();
    await Promise.all(writes);
    await withLog(dir, async (reopened) => {
      assert.equal((await reopened.recover()).chosenUpTo, 19);
    });
  });
});

describe("PaxosLog vote journal", () => {
  function bigRecord(instance: number, bytes: number): LogRecord {
    return {
      instance,
      ballot: B1,
      chosen: true,
      value: {
        kind: "commands",
        id: `big${instance}`,
        commands: [new Uint8Array(bytes).fill(instance & 0xff)],
      },
    };
  }

  test("a small journal wraps and is released many times; a batch too large for it goes to RocksDB", async () => {
    const dir = await tempDir();
    const syncs: number[] = [];
    const log = await PaxosLog.open(
      dir,
      { onSync: (_s, records) => syncs.push(records) },
      { journalBytes: 16 * 1024 },
    );
    try {
      for (let i = 0; i < 300; i++) {
        await log.persist({
          promised: { counter: i + 1, member: "n1" },
          records: [rec(i, true)],
          chosenUpTo: i,
        });
      }
      // 10 KiB: more than a quarter of the journal.
      await log.persist({ records: [bigRecord(300, 10 * 1024)], chosenUpTo: 300 });
      await log.persist({ records: [rec(301, false)] });
      assert.equal(syncs.length, 302);
    } finally {
      await log.close();
    }
    await withLog(dir, async (reopened) => {
      const state = await reopened.recover();
      assert.deepEqual(state.promised, { counter: 300, member: "n1" });
      assert.equal(state.chosenUpTo, 300);
      assert.deepEqual(state.unchosen, [rec(301, false)]);
      const entries = await collect(reopened.replay(0, 300));
      assert.equal(entries.length, 301);
      assert.deepEqual(entries[300], { instance: 300, value: bigRecord(300, 10 * 1024).value });
    });
  });

  test("synced persists in the background share fdatasyncs and are readable at once", async () => {
    const dir = await tempDir();
    const syncs: number[] = [];
    await withLog(dir, async () => {});
    const log = await PaxosLog.open(dir, { onSync: (_s, records) => syncs.push(records) });
    try {
      const first = log.persist({ records: [rec(0, true)], chosenUpTo: 0 }, { background: true });
      await new Promise((resolve) => setImmediate(resolve));
      const rest = Array.from({ length: 40 }, (_, i) =>
        log.persist({ records: [rec(i + 1, true)], chosenUpTo: i + 1 }, { background: true }),
      );
      await Promise.all([first, ...rest]);
      assert.ok(syncs.length <= 5, `expected a handful of background syncs, saw ${syncs.length}`);
      assert.equal(
        syncs.reduce((a, b) => a + b, 0),
        41,
      );
      assert.equal((await log.readChosen(0, 100, 1 << 20)).length, 41);
    } finally {
      await log.close();
    }
  });

  test("a log whose journal file disappeared refuses to open", async () => {
    const dir = await tempDir();
    await withLog(dir, async (log) => {
      await log.persist({ records: [rec(0, true)], chosenUpTo: 0 });
    });
    await rm(path.join(dir, "votes.journal"));
    await assert.rejects(PaxosLog.open(dir), CorruptRecordError);
  });
});
