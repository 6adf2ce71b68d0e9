// Checksum framing shared by every value this node stores in RocksDB: a 4-byte big-endian CRC32
// of the payload, then the payload. RocksDB checks its own blocks, but a value can still be damaged
// between our encoder and its block checksum (or be written by a buggy older version); this check
// makes such damage a clear error instead of a wrong vote or wrong data.

import { crc32 } from "node:zlib";

export class CorruptRecordError extends Error {
  override readonly name = "CorruptRecordError";
}

export function frame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + payload.length);
  out.writeUInt32BE(crc32(payload), 0);
  out.set(payload, 4);
  return out;
}

/**
 * The payload of a framed value, as a plain Uint8Array view (callers see the same type whether the
 * bytes came from RocksDB or from the network); throws CorruptRecordError naming `what` when the
 * CRC does not match.
 */
export function unframe(stored: Uint8Array, what: string): Uint8Array {
  if (stored.length < 4) {
    throw new CorruptRecordError(`${what}: stored value is ${stored.length} bytes, too short`);
  }
  const payload = new Uint8Array(stored.buffer, stored.byteOffset + 4, stored.length - 4);
  const expected = Buffer.from(stored.buffer, stored.byteOffset, 4).readUInt32BE(0);
  const actual = crc32(payload);
  if (actual !== expected) {
    throw new CorruptRecordError(
      `${what}: checksum mismatch (stored ${expected.toString(16)}, computed ${actual.toString(16)})`,
    );
  }
  return payload;
}

/** A non-negative instance number as 8 big-endian bytes, so that byte order is numeric order. */
export function encodeInstance(instance: number): Buffer {
  if (!Number.isSafeInteger(instance) || instance < 0) {
    throw new RangeError(`instance must be a non-negative safe integer, got ${instance}`);
  }
  const out = Buffer.allocUnsafe(8);
  out.writeBigUInt64BE(BigInt(instance), 0);
  return out;
}

export function decodeInstance(bytes: Uint8Array, what: string): number {
  if (bytes.length !== 8) throw new CorruptRecordError(`${what}: expected 8 bytes, found ${bytes.length}`);
  const v = Buffer.from(bytes.buffer, bytes.byteOffset, 8).readBigUInt64BE(0);
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new CorruptRecordError(`${what}: instance ${v} out of range`);
  return Number(v);
}
