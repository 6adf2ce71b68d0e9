import assert from "node:assert/strict";
import { test } from "node:test";
import { crc32 } from "node:zlib";
import fc from "fast-check";
import { CodecError } from "../../src/paxos/codec.js";
import type { Ballot, Message, Value } from "../../src/paxos/types.js";
import {
  BATCH_TYPE,
  batchBytes,
  decodeFrame,
  decodeMessages,
  encodeBatch,
  encodeFrame,
  FRAME_HEADER_BYTES,
  FrameError,
} from "../../src/transport/frame.js";
import {
  decodePeerMessage,
  encodePeerMessage,
  isCoreMessage,
  PEER_MESSAGE_TYPE_CODES,
  type PeerMessage,
  peerMessageTypeCode,
  type RuntimeMessage,
} from "../../src/transport/peer-message.js";

// Decoded messages are plain objects, so generated ones must not have a null prototype.
function rec<T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }): fc.Arbitrary<T> {
  return fc.record(model, { noNullPrototype: true });
}

const nat = fc.maxSafeNat();
/** A log position that may be -1 ("none yet"). */
const point = fc.integer({ min: -1, max: Number.MAX_SAFE_INTEGER - 1 });
const name = fc.string({ unit: "grapheme", maxLength: 12 });
const nonEmptyName = fc.string({ unit: "grapheme", minLength: 1, maxLength: 12 });
const ballot: fc.Arbitrary<Ballot> = rec({ counter: nat, member: name });
const value: fc.Arbitrary<Value> = fc.oneof(
  rec({ kind: fc.constant("noop" as const), id: name }),
  rec({
    kind: fc.constant("commands" as const),
    id: name,
    commands: fc.array(fc.uint8Array({ maxLength: 48 }), { maxLength: 4 }),
  }),
  rec({
    kind: fc.constant("config" as const),
    id: name,
    config: rec({
      members: fc.array(
        rec({
          name: nonEmptyName,
          address: name,
          role: fc.constantFrom("voter" as const, "learner" as const),
        }),
        { maxLength: 5 },
      ),
    }),
  }),
);
const chosenEntries = fc.array(rec({ instance: nat, value }), { maxLength: 4 });

const coreMessage: fc.Arbitrary<Message> = fc.oneof(
  rec({ type: fc.constant("prepare" as const), ballot, from: nat }),
  rec({
    type: fc.constant("promise" as const),
    ballot,
    chosenUpTo: point,
    accepted: fc.array(rec({ instance: nat, ballot, value }), { maxLength: 4 }),
  }),
  rec({ type: fc.constant("accept" as const), ballot, entries: chosenEntries }),
  rec({ type: fc.constant("accepted" as const), ballot, instances: fc.array(nat, { maxLength: 8 }) }),
  rec({
    type: fc.constant("reject" as const),
    ballot,
    promised: ballot,
    master: fc.option(nonEmptyName, { nil: null }),
  }),
  rec({ type: fc.constant("commit" as const), ballot, from: nat, to: point, readSeq: nat }),
  rec({
    type: fc.constant("commitAck" as const),
    ballot,
    ok: fc.boolean(),
    readSeq: nat,
    chosenUpTo: point,
  }),
  rec({ type: fc.constant("learnRequest" as const), from: nat }),
  rec({ type: fc.constant("learnReply" as const), entries: chosenEntries, chosenUpTo: point }),
  rec({ type: fc.constant("handover" as const), ballot, to: nonEmptyName }),
);

const runtimeMessage: fc.Arbitrary<RuntimeMessage> = fc.oneof(
  rec({
    type: fc.constant("forward" as const),
    requestId: nat,
    command: fc.uint8Array({ maxLength: 256 }),
  }),
  rec({
    type: fc.constant("forwardReply" as const),
    requestId: nat,
    outcome: fc.constantFrom("ok", "not_master", "no_quorum", "overloaded", "timeout"),
    instance: point,
  }),
  rec({ type: fc.constant("readIndex" as const), requestId: nat }),
  rec({
    type: fc.constant("readIndexReply" as const),
    requestId: nat,
    outcome: fc.constantFrom("ok", "not_master", "timeout"),
    index: point,
  }),
  rec({ type: fc.constant("learnCompacted" as const), from: nat, minKept: nat, checkpoint: point }),
);

const peerMessage: fc.Arbitrary<PeerMessage> = fc.oneof(coreMessage, runtimeMessage);
const typeCodes = Object.values(PEER_MESSAGE_TYPE_CODES);

/** Decodes, failing the property on any exception other than FrameError. */
function decodeOrFrameError(bytes: Uint8Array): PeerMessage | FrameError {
  try {
    return decodeFrame(bytes);
  } catch (e) {
    if (e instanceof FrameError) return e;
    throw e;
  }
}

/** A frame with a valid checksum around an arbitrary payload. */
function frameWith(type: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  frame[0] = 1;
  frame[1] = type;
  frame.set(payload, FRAME_HEADER_BYTES);
  const crc = crc32(payload, crc32(frame.subarray(0, 2)));
  new DataView(frame.buffer).setUint32(2, crc);
  return frame;
}

test("every peer message round-trips through a frame", () => {
  fc.assert(
    fc.property(peerMessage, (m) => {
      const frame = encodeFrame(m);
      assert.equal(frame[0], 1);
      assert.equal(frame[1], peerMessageTypeCode(m));
      assert.deepStrictEqual(decodeFrame(frame), m);
    }),
    { numRuns: 500 },
  );
});

test("every message body round-trips on its own, and isCoreMessage tells the two families apart", () => {
  fc.assert(
    fc.property(coreMessage, runtimeMessage, (core, runtime) => {
      assert.equal(isCoreMessage(core), true);
      assert.equal(isCoreMessage(runtime), false);
      for (const m of [core, runtime]) {
        assert.deepStrictEqual(decodePeerMessage(peerMessageTypeCode(m), encodePeerMessage(m)), m);
      }
    }),
  );
});

test("runtime messages use type codes from 64 up, distinct from the core's", () => {
  assert.deepStrictEqual(
    [
      PEER_MESSAGE_TYPE_CODES.forward,
      PEER_MESSAGE_TYPE_CODES.forwardReply,
      PEER_MESSAGE_TYPE_CODES.readIndex,
      PEER_MESSAGE_TYPE_CODES.readIndexReply,
      PEER_MESSAGE_TYPE_CODES.learnCompacted,
    ],
    [64, 65, 66, 67, 68],
  );
  assert.equal(new Set(typeCodes).size, 15);
});

test("random bytes only ever produce FrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      decodeOrFrameError(bytes);
    }),
    { numRuns: 2000 },
  );
});

test("random bytes behind a valid header fail the checksum", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(...typeCodes),
      fc.uint8Array({ minLength: 4, maxLength: 300 }),
      (type, rest) => {
        const bytes = new Uint8Array([1, type, ...rest]);
        const result = decodeOrFrameError(bytes);
        // A random 32-bit checksum matches once in 2^32; anything else must be refused as "checksum".
        if (result instanceof FrameError) assert.equal(result.reason, "checksum");
      },
    ),
    { numRuns: 1000 },
  );
});

test("random payloads with a valid checksum only ever produce FrameError('body')", () => {
  fc.assert(
    fc.property(fc.constantFrom(...typeCodes), fc.uint8Array({ maxLength: 200 }), (type, payload) => {
      const result = decodeOrFrameError(frameWith(type, payload));
      if (result instanceof FrameError) assert.equal(result.reason, "body");
    }),
    { numRuns: 2000 },
  );
});

test("valid frames cut short or extended only ever produce FrameError", () => {
  fc.assert(
    fc.property(peerMessage, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }), (m, cut, extra) => {
      const frame = encodeFrame(m);
      const payload = frame.subarray(FRAME_HEADER_BYTES);
      // Even with a recomputed checksum, a shortened or padded body must be refused.
      const shorter = frameWith(frame[1]!, payload.subarray(0, cut % payload.length));
      const longer = frameWith(frame[1]!, new Uint8Array([...payload, ...extra]));
      for (const bytes of [shorter, longer, frame.subarray(0, cut % frame.length)]) {
        assert.ok(decodeOrFrameError(bytes) instanceof FrameError);
      }
    }),
    { numRuns: 300 },
  );
});

test("any single-bit flip of a valid frame is refused with FrameError", () => {
  fc.assert(
    fc.property(peerMessage, fc.nat(), (m, bit) => {
      const frame = encodeFrame(m).slice();
      const at = bit % (frame.length * 8);
      frame[at >> 3]! ^= 1 << (at & 7);
      const result = decodeOrFrameError(frame);
      assert.ok(result instanceof FrameError, `flipping bit ${at} of ${m.type} was accepted`);
      const expected = at < 8 ? "version" : ["type", "checksum"];
      if (typeof expected === "string") assert.equal(result.reason, expected);
      else assert.ok(expected.includes(result.reason), result.reason);
    }),
    { numRuns: 2000 },
  );
});

test("each malformed-frame case has its own reason", () => {
  const good = encodeFrame({ type: "learnRequest", from: 7 });
  const reason = (bytes: Uint8Array, max?: number): string => {
    try {
      decodeFrame(bytes, max);
    } catch (e) {
      assert.ok(e instanceof FrameError);
      return e.reason;
    }
    return "accepted";
  };
  assert.equal(reason(good), "accepted");
  assert.equal(reason(good.subarray(0, 5)), "truncated");
  assert.equal(reason(new Uint8Array([2, ...good.subarray(1)])), "version");
  assert.equal(reason(new Uint8Array([1, 200, ...good.subarray(2)])), "type");
  assert.equal(reason(new Uint8Array([...good.subarray(0, 2), 0, 0, 0, 0, ...good.subarray(6)])), "checksum");
  assert.equal(reason(frameWith(PEER_MESSAGE_TYPE_CODES.learnRequest, new Uint8Array(3))), "body");
  assert.equal(reason(good, good.length - 1), "too_large");
});

test("encodeFrame enforces the frame size limit and refuses unencodable fields", () => {
  const big: PeerMessage = { type: "forward", requestId: 1, command: new Uint8Array(1000) };
  assert.throws(
    () => encodeFrame(big, 1000),
    (e: unknown) => e instanceof FrameError && e.reason === "too_large",
  );
  assert.equal(encodeFrame(big, 2000).length, FRAME_HEADER_BYTES + 8 + 4 + 1000);
  assert.throws(() => encodeFrame({ type: "readIndex", requestId: -1 }), CodecError);
  assert.throws(
    () => encodeFrame({ type: "readIndexReply", requestId: 1, outcome: "ok", index: -2 }),
    CodecError,
  );
});

/** decodeMessages never throws, and its error is always a FrameError. */
function decodeAll(bytes: Uint8Array): { messages: PeerMessage[]; error: FrameError | null } {
  const result = decodeMessages(bytes);
  assert.ok(result.error === null || result.error instanceof FrameError);
  return result;
}

function flipBit(bytes: Uint8Array, bit: number): { flipped: Uint8Array; at: number } {
  const flipped = bytes.slice();
  const at = bit % (flipped.length * 8);
  flipped[at >> 3]! ^= 1 << (at & 7);
  return { flipped, at };
}

const messages = fc.array(peerMessage, { minLength: 1, maxLength: 20 });

test("any list of peer messages round-trips through a batch, and a single frame through decodeMessages", () => {
  fc.assert(
    fc.property(messages, (ms) => {
      const frames = ms.map((m) => encodeFrame(m));
      const batch = encodeBatch(frames);
      assert.equal(batch[1], BATCH_TYPE);
      assert.equal(
        batch.length,
        batchBytes(
          frames.reduce((n, f) => n + f.length, 0),
          frames.length,
        ),
      );
      assert.deepStrictEqual(decodeAll(batch), { messages: ms, error: null });
      assert.deepStrictEqual(decodeAll(frames[0]!), { messages: [ms[0]], error: null });
    }),
    { numRuns: 300 },
  );
});

test("random bytes, as a batch or behind a valid batch header, only ever produce FrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      decodeAll(bytes);
      const { messages: got, error } = decodeAll(frameWith(BATCH_TYPE, bytes));
      // Any messages returned came out of well-formed inner frames, so the rest must be an error.
      if (error === null) assert.ok(got.length > 0);
    }),
    { numRuns: 2000 },
  );
});

test("any single-bit flip of a batch is refused whole with FrameError", () => {
  fc.assert(
    fc.property(messages, fc.nat(), (ms, bit) => {
      const { flipped, at } = flipBit(encodeBatch(ms.map((m) => encodeFrame(m))), bit);
      const { messages: got, error } = decodeAll(flipped);
      assert.ok(error !== null, `flipping bit ${at} of a batch was accepted`);
      assert.deepStrictEqual(got, []);
      assert.ok(["version", "type", "checksum"].includes(error.reason), error.reason);
    }),
    { numRuns: 1000 },
  );
});

test("a malformed inner frame ends the batch: the messages before it survive, one error is reported", () => {
  fc.assert(
    fc.property(messages, peerMessage, messages, fc.nat(), (before, bad, rest, bit) => {
      // The batch checksum is computed over the corrupted inner frame, so only the inner check fails.
      const { flipped } = flipBit(encodeFrame(bad), bit);
      const batch = encodeBatch([
        ...before.map((m) => encodeFrame(m)),
        flipped,
        ...rest.map((m) => encodeFrame(m)),
      ]);
      const { messages: got, error } = decodeAll(batch);
      assert.deepStrictEqual(got, before);
      assert.ok(error instanceof FrameError);
      assert.match(error.message, new RegExp(`^batch entry ${before.length}: `));
    }),
    { numRuns: 500 },
  );
});

test("each malformed-batch case has its own reason", () => {
  const frame = encodeFrame({ type: "learnRequest", from: 7 });
  const batch = encodeBatch([frame, frame]);
  const reason = (bytes: Uint8Array, max?: number): string | null =>
    decodeMessages(bytes, max).error?.reason ?? null;
  assert.equal(reason(batch), null);
  assert.equal(reason(frameWith(BATCH_TYPE, new Uint8Array(0))), "body");
  // A length prefix cut short, or one that claims more than is left.
  assert.equal(reason(frameWith(BATCH_TYPE, new Uint8Array([0, 0]))), "truncated");
  assert.equal(reason(frameWith(BATCH_TYPE, new Uint8Array([0, 0, 1, 0, 1, 2]))), "truncated");
  // Batches do not nest.
  assert.equal(reason(encodeBatch([batch])), "type");
  assert.equal(reason(batch, batch.length - 1), "too_large");
  assert.throws(
    () => decodeFrame(batch),
    (e: unknown) => e instanceof FrameError && e.reason === "type",
  );
});
