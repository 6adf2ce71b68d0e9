// One peer message per binary WebSocket message:
//
//   [version u8 = 1][type u8][crc32 u32, big-endian][payload]
//
// The CRC-32 (zlib polynomial) covers the version and type bytes as well as the payload: with the
// payload alone, a flipped bit in the type byte could turn one message into another of the same
// shape (forwardReply and readIndexReply are byte-compatible) and still pass the check.

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
  new DataView(frame.buffer, frame.byteOffset, frame.byteLength).setUint32(
    CHECKSUM_OFFSET,
    frameChecksum(frame),
  );
  return frame;
}

/** Decodes one frame; anything malformed throws FrameError and nothing else. */
export function decodeFrame(bytes: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): PeerMessage {
  if (bytes.length > maxFrameBytes) {
    throw new FrameError("too_large", `frame of ${bytes.length} bytes exceeds ${maxFrameBytes}`);
  }
  if (bytes.length < FRAME_HEADER_BYTES) {
    throw new FrameError("truncated", `frame of ${bytes.length} bytes is shorter than its header`);
  }
  const version = bytes[0]!;
  if (version !== FRAME_VERSION) throw new FrameError("version", `unsupported frame version ${version}`);
  const type = bytes[1]!;
  if (!isKnownTypeCode(type)) throw new FrameError("type", `unknown message type ${type}`);
  const expected = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(CHECKSUM_OFFSET);
  if (frameChecksum(bytes) !== expected) throw new FrameError("checksum", "frame checksum mismatch");
  try {
    return readPeerMessageBody(type, new Reader(bytes.subarray(FRAME_HEADER_BYTES)));
  } catch (e) {
    if (e instanceof CodecError) throw new FrameError("body", `malformed body of type ${type}: ${e.message}`);
    throw e;
  }
}
