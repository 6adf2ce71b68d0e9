// A binary WebSocket message holds one frame:
//
//   [version u8 = 1][type u8][crc32 u32, big-endian][payload]
//
// The CRC-32 (zlib polynomial) covers the version and type bytes as well as the payload: with the
// payload alone, a flipped bit in the type byte could turn one message into another of the same
// shape (forwardReply and readIndexReply are byte-compatible) and still pass the check.
//
// A frame of type BATCH_TYPE carries several messages, so that what a member sends one peer in one
// event-loop turn costs one socket write: its payload is a sequence of [length u32][frame], each
// inner frame an ordinary frame with its own checksum. Batches do not nest.

import { crc32 } from "node:zlib";
import { CodecError, Reader, Writer } from "../paxos/codec.js";
import {
  isKnownTypeCode,
  type PeerMessage,
  peerMessageTypeCode,
  readPeerMessageBody,
  writePeerMessageBody,
} from "./peer-message.js";

export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 6;
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;

/** Type code of a batch frame; outside both message ranges so it can never be a message's. */
export const BATCH_TYPE = 127;
/** What each inner frame adds to a batch: its length prefix. */
export const BATCH_ENTRY_OVERHEAD_BYTES = 4;

const CHECKSUM_OFFSET = 2;

export type FrameErrorReason = "version" | "type" | "checksum" | "truncated" | "body" | "too_large";

export class FrameError extends Error {
  override readonly name = "FrameError";

  constructor(
    readonly reason: FrameErrorReason,
    message: string,
  ) {
    super(message);
  }
}

function frameChecksum(frame: Uint8Array): number {
  return crc32(frame.subarray(FRAME_HEADER_BYTES), crc32(frame.subarray(0, CHECKSUM_OFFSET)));
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The header checks every frame goes through; returns the type code. */
function checkHeader(bytes: Uint8Array, maxFrameBytes: number): number {
  if (bytes.length > maxFrameBytes) {
    throw new FrameError("too_large", `frame of ${bytes.length} bytes exceeds ${maxFrameBytes}`);
  }
  if (bytes.length < FRAME_HEADER_BYTES) {
    throw new FrameError("truncated", `frame of ${bytes.length} bytes is shorter than its header`);
  }
  const version = bytes[0]!;
  if (version !== FRAME_VERSION) throw new FrameError("version", `unsupported frame version ${version}`);
  const type = bytes[1]!;
  if (type !== BATCH_TYPE && !isKnownTypeCode(type)) {
    throw new FrameError("type", `unknown message type ${type}`);
  }
  if (frameChecksum(bytes) !== view(bytes).getUint32(CHECKSUM_OFFSET)) {
    throw new FrameError("checksum", "frame checksum mismatch");
  }
  return type;
}

/**
 * Encodes `m` as one frame. Throws FrameError("too_large") past `maxFrameBytes`, and CodecError
 * when a field cannot be encoded (a negative or unsafe integer, an over-long string).
 */
export function encodeFrame(m: PeerMessage, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Uint8Array {
  const w = new Writer(256);
  // The checksum is patched in once the payload is known, which saves copying the payload.
  w.u8(FRAME_VERSION).u8(peerMessageTypeCode(m)).u32(0);
  writePeerMessageBody(w, m);
  const frame = w.finish();
  if (frame.length > maxFrameBytes) {
    throw new FrameError("too_large", `${m.type} frame of ${frame.length} bytes exceeds ${maxFrameBytes}`);
  }
  view(frame).setUint32(CHECKSUM_OFFSET, frameChecksum(frame));
  return frame;
}

/** Size of the batch holding frames of these sizes. */
export function batchBytes(frameBytes: number, frameCount: number): number {
  return FRAME_HEADER_BYTES + frameBytes + frameCount * BATCH_ENTRY_OVERHEAD_BYTES;
}

/**
 * Packs frames made by encodeFrame into one batch frame. The caller keeps it within the peer's
 * maxFrameBytes (see batchBytes): the receiver refuses a larger one whole.
 */
export function encodeBatch(frames: readonly Uint8Array[]): Uint8Array {
  let size = 0;
  for (const frame of frames) size += frame.length;
  // Every byte is written below, so the pooled, unzeroed allocation is safe and the fastest. The
  // plain view keeps decoded byte fields plain Uint8Arrays, as everywhere else.
  const pooled = Buffer.allocUnsafe(batchBytes(size, frames.length));
  const batch = new Uint8Array(pooled.buffer, pooled.byteOffset, pooled.byteLength);
  const dv = view(batch);
  batch[0] = FRAME_VERSION;
  batch[1] = BATCH_TYPE;
  let at = FRAME_HEADER_BYTES;
  for (const frame of frames) {
    dv.setUint32(at, frame.length);
    batch.set(frame, at + BATCH_ENTRY_OVERHEAD_BYTES);
    at += BATCH_ENTRY_OVERHEAD_BYTES + frame.length;
  }
  dv.setUint32(CHECKSUM_OFFSET, frameChecksum(batch));
  return batch;
}

/**
 * Decodes one frame holding one message (not a batch); anything malformed throws FrameError and
 * nothing else.
 */
export function decodeFrame(bytes: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): PeerMessage {
  const type = checkHeader(bytes, maxFrameBytes);
  if (type === BATCH_TYPE) throw new FrameError("type", "batch frame where a single message was expected");
  return readBody(type, bytes);
}

function readBody(type: number, frame: Uint8Array): PeerMessage {
  try {
    return readPeerMessageBody(type, new Reader(frame.subarray(FRAME_HEADER_BYTES)));
  } catch (e) {
    if (e instanceof CodecError) throw new FrameError("body", `malformed body of type ${type}: ${e.message}`);
    throw e;
  }
}

export interface DecodedMessages {
  /** The messages decoded, in the order they were sent. */
  readonly messages: PeerMessage[];
  /** Why decoding stopped early, or null when the whole WebSocket message was well-formed. */
  readonly error: FrameError | null;
}

/**
 * Decodes one WebSocket message: a single frame or a batch. Never throws. A malformed batch
 * header or checksum yields no message at all. Within a batch whose checksum holds, a malformed
 * inner frame (a sender bug, or a newer sender's message type) ends decoding there: the messages
 * before it are returned with the error, the rest are dropped with it, since a broken length
 * prefix would make whatever follows unreliable anyway.
 */
export function decodeMessages(bytes: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): DecodedMessages {
  const messages: PeerMessage[] = [];
  try {
    const type = checkHeader(bytes, maxFrameBytes);
    if (type !== BATCH_TYPE) {
      messages.push(readBody(type, bytes));
      return { messages, error: null };
    }
    if (bytes.length === FRAME_HEADER_BYTES) throw new FrameError("body", "empty batch");
    const dv = view(bytes);
    let at = FRAME_HEADER_BYTES;
    while (at < bytes.length) {
      const entry = messages.length;
      if (bytes.length - at < BATCH_ENTRY_OVERHEAD_BYTES) {
        throw new FrameError("truncated", `batch entry ${entry} has a cut-off length`);
      }
      const length = dv.getUint32(at);
      at += BATCH_ENTRY_OVERHEAD_BYTES;
      if (length > bytes.length - at) {
        throw new FrameError("truncated", `batch entry ${entry} of ${length} bytes overruns the batch`);
      }
      const inner = bytes.subarray(at, at + length);
      at += length;
      try {
        messages.push(decodeFrame(inner, maxFrameBytes));
      } catch (e) {
        if (e instanceof FrameError) throw new FrameError(e.reason, `batch entry ${entry}: ${e.message}`);
        throw e;
      }
    }
    return { messages, error: null };
  } catch (e) {
    if (e instanceof FrameError) return { messages, error: e };
    // Anything else is a decoder bug; it must still cost only this WebSocket message's remainder.
    return { messages, error: new FrameError("body", `frame decoder failed: ${String(e)}`) };
  }
}
