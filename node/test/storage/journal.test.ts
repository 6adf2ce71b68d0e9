import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import fc from "fast-check";
import { CorruptRecordError } from "../../src/storage/framing.js";
import { type JournalPosition, VoteJournal } from "../../src/storage/journal.js";

const tempRoots: string[] = [];
after(async () => {
  for (const dir of tempRoots) await rm(dir, { recursive: true, force: true });
});

async function journalPath(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "vote-journal-test-"));
  tempRoots.push(dir);
  return path.join(dir, "votes.journal");
}

function payload(i: number, size = 40): Uint8Array {
  return new Uint8Array(size).fill(i & 0xff);
}

/** Reopens the journal from `from` and returns what it reads, closing it again. */
function readBack(file: string, from: JournalPosition | undefined): Uint8Array[] {
  const { journal, records } = VoteJournal.open(file, 0, from);
  journal.close();
  return records;
}

describe("VoteJournal", () => {
  test("a new journal is preallocated and reads back what was appended, in order", async () => {
    const file = await journalPath();
    const { journal, records } = VoteJournal.open(file, 64 * 1024, undefined);
    assert.deepEqual(records, []);
    assert.equal(readFileSync(file).length, 64 * 1024);
    const start = journal.head();
    for (let i = 0; i < 10; i++) assert.ok(journal.append(payload(i), i % 2 === 0));
    await journal.syncInBackground();
    journal.close();
    assert.deepEqual(
      readBack(file, start),
      Array.from({ length: 10 }, (_, i) => payload(i)),
    );
  });

  test("reading starts at the given position and stops at a torn record", async () => {
    const file = await journalPath();
    const { journal } = VoteJournal.open(file, 64 * 1024, undefined);
    journal.append(payload(1), true);
    const second = journal.head();
    journal.append(payload(2), true);
    const third = journal.head();
    journal.append(payload(3), true);
    journal.append(payload(4), true);
    journal.close();
    assert.deepEqual(readBack(file, second), [payload(2), payload(3), payload(4)]);

    // Damage one byte of the third record's payload: the reader keeps what precedes it only.
    const bytes = readFileSync(file);
    bytes[third.offset + 24 + 5]! ^= 0xff;
    writeFileSync(file, bytes);
    assert.deepEqual(readBack(file, undefined), [payload(1), payload(2)]);
  });

  test("the ring wraps, never overwrites what is not released, and reads across the wrap", async () => {
    const file = await journalPath();
    const capacity = 4096;
    const { journal } = VoteJournal.open(file, capacity, undefined);
    let released = journal.head();
    let expected: Uint8Array[] = [];
    let refused = 0;
    for (let i = 0; i < 400; i++) {
      const p = payload(i, 50 + (i % 7) * 13);
      if (!journal.append(p, false)) {
        refused++;
        // Full: release everything so far, as the PaxosLog does once RocksDB has it synced.
        released = journal.head();
        journal.release(released);
        expected = [];
        assert.ok(journal.append(p, false), `record ${i} fits once the ring is released`);
      }
      expected.push(p);
      assert.ok(journal.pendingBytes < capacity);
    }
    assert.ok(refused > 5, `the ring should have filled several times, it did ${refused} times`);
    journal.close();
    assert.deepEqual(readBack(file, released), expected);
  });

  test("a payload over a quarter of the ring is refused", async () => {
    const file = await journalPath();
    const { journal } = VoteJournal.open(file, 8192, undefined);
    assert.equal(journal.append(new Uint8Array(journal.maxPayloadBytes + 1), true), false);
    assert.ok(journal.append(new Uint8Array(journal.maxPayloadBytes), true));
    journal.close();
  });

  test("after skipAhead, bytes left by records never read back cannot pass for new ones", async () => {
    const file = await journalPath();
    const first = VoteJournal.open(file, 64 * 1024, undefined).journal;
    const start = first.head();
    for (let i = 0; i < 5; i++) first.append(payload(i), true);
    first.close();
    // A crash tore record 1: the reader stops there, and records 2..4 stay in the file.
    const bytes = readFileSync(file);
    const secondOffset = 24 + 40;
    bytes[secondOffset + 30]! ^= 0xff;
    writeFileSync(file, bytes);

    const reopened = VoteJournal.open(file, 0, start);
    assert.deepEqual(reopened.records, [payload(0)]);
    const fresh = reopened.journal.skipAhead();
    // One new record: it ends exactly where the stale record 2 begins.
    reopened.journal.append(payload(9), true);
    reopened.journal.close();
    assert.deepEqual(readBack(file, fresh), [payload(9)]);
  });

  test("a missing journal that should hold records is an error, not an empty log", async () => {
    const file = await journalPath();
    assert.throws(() => VoteJournal.open(file, 4096, { seq: 7, offset: 100 }), CorruptRecordError);
  });

  test("random appends and releases: a reopen from the last release reads exactly what followed it", async () => {
    const file = await journalPath();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 700 }), fc.boolean()), { minLength: 1, maxLength: 120 }),
        async (steps) => {
          await rm(file, { force: true });
          const { journal } = VoteJournal.open(file, 4096, undefined);
          let released = journal.head();
          let expected: Uint8Array[] = [];
          steps.forEach(([size, release], i) => {
            if (release) {
              released = journal.head();
              journal.release(released);
              expected = [];
            }
            const p = payload(i, size);
            if (journal.append(p, false)) expected.push(p);
          });
          journal.close();
          assert.deepEqual(readBack(file, released), expected);
        },
      ),
      { numRuns: 200 },
    );
  });
});
