// Checkpoint transfer protocol, version 1: how a member that fell behind pulls a peer's checkpoint.
//
// The receiver dials ws://<peer>/paxos/checkpoint/v1 on the peer port with the same credentials as
// a peer link (`Authorization: Bearer <token>` when a token is set, `x-paxos-member: <self>`),
// without per-message deflate (checkpoint data is already dense and deflate would cost more CPU
// than the link saves). Control messages are JSON text messages; data travels in binary messages.
//
//   sender                                          receiver
//     lock()  — on failure: {"type":"error"}, close
//     {"type":"manifest","version":1,"instanceId","chunkBytes","files":[{"path","size","sha256"}],
//      "entries"?,"createdAt"?}                  ->  validates it; {"type":"credit","chunks":window}
//     chunk, chunk, ... (one per credit)          ->  checks each CRC, hashes, writes; checks a file's
//                                                     SHA-256 once its last byte is in, then fsyncs it
//                                                <-  {"type":"credit","chunks":k} once k chunks are WRITTEN
//     {"type":"end"}                              ->  checks every file is complete, waits for the
//                                                     fsyncs, writes and fsyncs manifest.json, fsyncs
//                                                     the folder
//                                                <-  {"type":"done"}
//     unlock(), close
//
// A chunk is one binary message: [u8 version = 1][u32 fileIndex][u64 offset][u32 crc32(data)][data],
// integers big-endian, the offset below 2^53, 1..chunkBytes data bytes. Files are sent in manifest
// order, each one's chunks in offset order with no gap, an empty file with no chunk at all: so the
// receiver always knows the one (fileIndex, offset) that may come next, and anything else is an
// error. Credit is granted only for chunks already written, which bounds what the receiver holds
// in memory to window × chunkBytes. Both sides batch their disk I/O (the sender reads as many
// chunks as it has credit for with one readv, the receiver writes what has queued up with one
// writev and grants credit for it in one message), so a busy disk or thread pool costs a round
// trip per batch, not per chunk.
//
// Either side may send {"type":"error","message"} and close; the other side then gives up too. The
// sender unlocks its checkpoint exactly once, whatever ends the transfer: done, an error from either
// side, the connection closing, no message from the receiver for idleTimeoutMs, or its own close().
// The receiver gives up when the sender is silent for idleTimeoutMs while it waits for data; the
// caller then removes the temporary folder and asks again later. Once the end has arrived, the
// receiver has every byte verified and only local work is left, so the sender closing or giving up
// then no longer matters.
//
// Why not PhxPaxos's protocol: its chunk CRC is computed but never checked, and its receiver clears
// its own state before the transfer has finished. Here both the CRC and each file's SHA-256 are
// verified before the receiver returns, and the receiver only ever writes into the folder it is given.

import { createHash } from "node:crypto";
import type { RawData } from "ws";
import type { CheckpointFile, CheckpointState } from "../sm/state-machine.js";

export const CHECKPOINT_PATH = "/paxos/checkpoint/v1";
export const PROTOCOL_VERSION = 1;
/** [u8 version][u32 fileIndex][u64 offset][u32 crc32]. */
export const CHUNK_HEADER_BYTES = 17;
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
/** The receiver's maxPayload is sized for this, so the sender may not use larger chunks. */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
export const DEFAULT_WINDOW = 8;
export const MAX_WINDOW = 64;
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
export const MAX_FILES = 100_000;
/** The name the receiver writes its own manifest under, so a data file may not use it. */
export const MANIFEST_FILE = "manifest.json";
/** Longest text quoted from the other side in an error or a log line. */
const MAX_QUOTED_CHARS = 300;

export const EMPTY_SHA256 = createHash("sha256").digest("hex");

export class TransferError extends Error {
  override readonly name = "TransferError";
}

/** What the sender needs from the checkpoint store (PhxPaxos LockCheckpointState/GetCheckpointState/UnLockCheckpointState). */
export interface CheckpointSource {
  /** Locks the current checkpoint (no change/move/delete until unlock) and returns it; throws if there is none. */
  lock(): Promise<TransferableCheckpoint>;
  unlock(state: CheckpointState): void;
}

/**
 * A checkpoint as sent and received. `entries` and `createdAt` are the manifest.json fields of the
 * same names; a store that knows them passes them on, so the receiver's manifest.json is complete.
 */
export interface TransferableCheckpoint extends CheckpointState {
  readonly entries?: number;
  readonly createdAt?: string;
}

export interface TransferProgress {
  /** The other side: the receiving member for a sender, the sending peer for a receiver. */
  member: string;
  instanceId: number;
  files: number;
  filesDone: number;
  /** Sent (sender) or written (receiver). */
  bytes: number;
  totalBytes: number;
}

export interface ManifestMessage {
  readonly type: "manifest";
  readonly version: number;
  readonly instanceId: number;
  readonly chunkBytes: number;
  readonly files: readonly CheckpointFile[];
  readonly entries?: number;
  readonly createdAt?: string;
}

export interface ErrorMessage {
  readonly type: "error";
  readonly message: string;
}

export type SenderMessage = ManifestMessage | { readonly type: "end" } | ErrorMessage;
export type ReceiverMessage =
  | { readonly type: "credit"; readonly chunks: number }
  | { readonly type: "done" }
  | ErrorMessage;

export interface ChunkHeader {
  readonly fileIndex: number;
  readonly offset: number;
  readonly crc: number;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
const MAX_FILE_NAME_BYTES = 255;

/** Text from the other side, cut to a length fit for an error message. */
export function quote(text: string): string {
  return text.length > MAX_QUOTED_CHARS ? `${text.slice(0, MAX_QUOTED_CHARS)}…` : text;
}

/**
 * Why `name` is not a plain file name inside the checkpoint folder, or null when it is one. Only
 * plain names are allowed, so a hostile manifest cannot make the receiver write anywhere else.
 */
export function fileNameProblem(name: string): string | null {
  if (name === "") return "is empty";
  if (name === "." || name === "..") return "is a directory reference";
  if (name.includes("/") || name.includes("\\")) return "contains a path separator";
  if (name.includes("\0")) return "contains a NUL character";
  if (Buffer.byteLength(name) > MAX_FILE_NAME_BYTES) return `is longer than ${MAX_FILE_NAME_BYTES} bytes`;
  if (name === MANIFEST_FILE) return `is reserved for the receiver's own ${MANIFEST_FILE}`;
  return null;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function parseObject(text: string, from: string): Record<string, unknown> & { type: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new TransferError(`malformed message from the ${from}: not JSON: ${quote(text)}`);
  }
  if (!isObject(parsed) || typeof parsed.type !== "string") {
    throw new TransferError(`malformed message from the ${from}: no "type": ${quote(text)}`);
  }
  return parsed as Record<string, unknown> & { type: string };
}

function parseError(m: Record<string, unknown>, from: string): ErrorMessage {
  if (typeof m.message !== "string") throw new TransferError(`malformed error message from the ${from}`);
  return { type: "error", message: quote(m.message) };
}

/** Parses and checks a text message from the sender; throws TransferError saying what is wrong. */
export function parseSenderMessage(text: string): SenderMessage {
  const m = parseObject(text, "sender");
  switch (m.type) {
    case "manifest":
      return parseManifest(m);
    case "end":
      return { type: "end" };
    case "error":
      return parseError(m, "sender");
    default:
      throw new TransferError(`unknown message type "${quote(m.type)}" from the sender`);
  }
}

/** Parses and checks a text message from the receiver; throws TransferError saying what is wrong. */
export function parseReceiverMessage(text: string): ReceiverMessage {
  const m = parseObject(text, "receiver");
  switch (m.type) {
    case "credit":
      if (!isCount(m.chunks) || m.chunks < 1) {
        throw new TransferError(`credit message with an invalid chunk count: ${quote(String(m.chunks))}`);
      }
      return { type: "credit", chunks: m.chunks };
    case "done":
      return { type: "done" };
    case "error":
      return parseError(m, "receiver");
    default:
      throw new TransferError(`unknown message type "${quote(m.type)}" from the receiver`);
  }
}

function parseManifest(m: Record<string, unknown>): ManifestMessage {
  const bad = (what: string): TransferError => new TransferError(`invalid manifest from the sender: ${what}`);
  if (m.version !== PROTOCOL_VERSION) throw bad(`unsupported protocol version ${quote(String(m.version))}`);
  if (!isCount(m.instanceId)) throw bad(`instanceId ${quote(String(m.instanceId))} is not an instance`);
  if (!isCount(m.chunkBytes) || m.chunkBytes < 1 || m.chunkBytes > MAX_CHUNK_BYTES) {
    throw bad(`chunkBytes ${quote(String(m.chunkBytes))} is outside 1..${MAX_CHUNK_BYTES}`);
  }
  if (m.entries !== undefined && !isCount(m.entries)) throw bad("entries is not a count");
  if (
    m.createdAt !== undefined &&
    (typeof m.createdAt !== "string" || Number.isNaN(Date.parse(m.createdAt)))
  ) {
    throw bad("createdAt is not a date");
  }
  if (!Array.isArray(m.files)) throw bad("files is not a list");
  if (m.files.length > MAX_FILES) throw bad(`${m.files.length} files, more than ${MAX_FILES}`);
  const files: CheckpointFile[] = [];
  const seen = new Set<string>();
  let total = 0;
  for (const [i, f] of m.files.entries()) {
    if (!isObject(f) || typeof f.path !== "string") throw bad(`file ${i} has no path`);
    const problem = fileNameProblem(f.path);
    if (problem !== null) throw bad(`file ${i} path "${quote(f.path)}" ${problem}`);
    if (seen.has(f.path)) throw bad(`file "${quote(f.path)}" is listed twice`);
    seen.add(f.path);
    if (!isCount(f.size)) throw bad(`file "${f.path}" has an invalid size`);
    if (typeof f.sha256 !== "string" || !SHA256_HEX.test(f.sha256)) {
      throw bad(`file "${f.path}" has an invalid sha256`);
    }
    total += f.size;
    if (!Number.isSafeInteger(total)) throw bad("the total size is too large");
    files.push({ path: f.path, size: f.size, sha256: f.sha256 });
  }
  const manifest: ManifestMessage = {
    type: "manifest",
    version: PROTOCOL_VERSION,
    instanceId: m.instanceId,
    chunkBytes: m.chunkBytes,
    files,
    ...(m.entries === undefined ? {} : { entries: m.entries }),
    ...(m.createdAt === undefined ? {} : { createdAt: m.createdAt as string }),
  };
  return manifest;
}

export function writeChunkHeader(chunk: Buffer, fileIndex: number, offset: number, crc: number): void {
  chunk.writeUInt8(PROTOCOL_VERSION, 0);
  chunk.writeUInt32BE(fileIndex, 1);
  // Two halves because a u64 as a bigint costs an allocation per chunk for nothing: offsets fit 53 bits.
  chunk.writeUInt32BE(Math.floor(offset / 2 ** 32), 5);
  chunk.writeUInt32BE(offset % 2 ** 32, 9);
  chunk.writeUInt32BE(crc, 13);
}

/** Reads a chunk's header; throws TransferError when it is cut short or of another version. */
export function readChunkHeader(chunk: Buffer): ChunkHeader {
  if (chunk.length <= CHUNK_HEADER_BYTES) {
    throw new TransferError(
      `chunk of ${chunk.length} bytes holds no data after its ${CHUNK_HEADER_BYTES}-byte header`,
    );
  }
  const version = chunk.readUInt8(0);
  if (version !== PROTOCOL_VERSION) throw new TransferError(`chunk of unsupported version ${version}`);
  const high = chunk.readUInt32BE(5);
  if (high >= 2 ** 21) throw new TransferError("chunk offset beyond 2^53");
  return {
    fileIndex: chunk.readUInt32BE(1),
    offset: high * 2 ** 32 + chunk.readUInt32BE(9),
    crc: chunk.readUInt32BE(13),
  };
}

/** A WebSocket message as one Buffer, copying only when ws delivered it in fragments. */
export function rawBuffer(data: RawData): Buffer {
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.isBuffer(data) ? data : Buffer.from(data);
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What is left of `buffers` after their first `n` bytes (for a readv or writev that did not do it all). */
export function skipBytes(buffers: Buffer[], n: number): Buffer[] {
  const rest: Buffer[] = [];
  let skip = n;
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
    } else {
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
  }
  return rest;
}
