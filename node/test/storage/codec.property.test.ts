import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  CodecError,
  decodeRecord,
  encodeRecord,
  MESSAGE_TYPE_CODES,
  Reader,
  readMessageBody,
  readValue,
} from "../../src/paxos/codec.js";
import type { Ballot, LogRecord, Value } from "../../src/paxos/types.js";

const safeUint = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
// "binary" yields whole code points only: a lone surrogate cannot be encoded as UTF-8 at all.
const text = fc.string({ unit: "binary", maxLength: 40 });

// Decoded objects have ordinary prototypes; fast-check's records default to null ones.
const plain = { noNullPrototype: true } as const;

const ballot: fc.Arbitrary<Ballot> = fc.record({ counter: safeUint, member: text }, plain);

const value: fc.Arbitrary<Value> = fc.oneof(
  fc.record({ kind: fc.constant("noop" as const), id: text }, plain),
  fc.record(
    {
      kind: fc.constant("commands" as const),
      id: text,
      commands: fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }),
    },
    plain,
  ),
);

const record: fc.Arbitrary<LogRecord> = fc.record(
  {
    instance: safeUint,
    ballot,
    chosen: fc.boolean(),
    value,
  },
  plain,
);

/** Runs a decoder on hostile input: it may succeed, or fail with CodecError, nothing else. */
function onlyCodecErrors(decode: () => unknown): void {
  try {
    decode();
  } catch (err) {
    if (!(err instanceof CodecError)) throw err;
  }
}

test("encodeRecord/decodeRecord round-trip every record", () => {
  fc.assert(
    fc.property(record, (rec) => {
      assert.deepEqual(decodeRecord(encodeRecord(rec)), rec);
    }),
    { numRuns: 500 },
  );
});

test("random bytes make decodeRecord, readValue and readMessageBody throw CodecError only", () => {
  const codes = [0, ...Object.values(MESSAGE_TYPE_CODES), 10, 255];
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 256 }), fc.constantFrom(...codes), (bytes, code) => {
      onlyCodecErrors(() => decodeRecord(bytes));
      onlyCodecErrors(() => readValue(new Reader(bytes)));
      onlyCodecErrors(() => readMessageBody(code, new Reader(bytes)));
    }),
    { numRuns: 2000 },
  );
});

test("damaged encodings of valid records throw CodecError or decode to some record", () => {
  // Random bytes rarely get past the first length prefix; mutating real records reaches deeper.
  fc.assert(
    fc.property(
      record,
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      fc.nat({ max: 8 }),
      (rec, at, xor, cut) => {
        const bytes = Uint8Array.from(encodeRecord(rec));
        const i = at % bytes.length;
        bytes[i] = bytes[i]! ^ xor;
        onlyCodecErrors(() => decodeRecord(bytes));
        onlyCodecErrors(() => decodeRecord(bytes.subarray(0, Math.max(0, bytes.length - cut))));
        onlyCodecErrors(() => readValue(new Reader(bytes.subarray(Math.min(bytes.length, 8)))));
      },
    ),
    { numRuns: 1000 },
  );
});
