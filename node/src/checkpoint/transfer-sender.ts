// The sending side of a checkpoint transfer (protocol in transfer-protocol.ts): one session per
// connection, each holding the checkpoint lock from the manifest until the session ends.

import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { Logger } from "pino";
import WebSocket, { type RawData } from "ws";
import {
  CHUNK_HEADER_BYTES,
  type CheckpointSource,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_IDLE_TIMEOUT_MS,
  errorText,
  MAX_CHUNK_BYTES,
  MAX_WINDOW,
  type ManifestMessage,
  PROTOCOL_VERSION,
  parseReceiverMessage,
  rawBuffer,
  skipBytes,
  type TransferableCheckpoint,
  type TransferProgress,
  writeChunkHeader,
} from "./transfer-protocol.js";

export interface CheckpointSenderOptions {
  source: CheckpointSource;
  logger: Logger;
  /** Data bytes per chunk; default 1 MiB, at most MAX_CHUNK_BYTES. */
  chunkBytes?: number;
  /** A session with no message from its receiver for this long ends; default 30 s. */
  idleTimeoutMs?: number;
  /**
   * Test hook, off by default: the 0-based index, within a transfer, of one chunk whose data is
   * corrupted after its CRC is computed. It fires once per process, so the retry that follows the
   * failed transfer goes through.
   */
  corruptChunkForTest?: number;
  /** Test hook, off by default: wait this long before each chunk, so tests can act mid-stream. */
  chunkDelayMsForTest?: number;
  onProgress?: (p: TransferProgress) => void;
}

/** Close codes: 1000 done, 1008 the receiver broke the protocol, 1011 this side failed. */
const CLOSE_DONE = 1000;
const CLOSE_PROTOCOL = 1008;
const CLOSE_FAILED = 1011;
/** A WebSocket close reason is at most 123 bytes. */
const MAX_CLOSE_REASON_CHARS = 60;

/** Chunks read by one readv at most. */
const MAX_READ_CHUNKS = 8;

/** Per process, not per sender: see corruptChunkForTest. */
let corruptionFired = false;

interface SenderContext {
  readonly source: CheckpointSource;
  readonly log: Logger;
  readonly chunkBytes: number;
  readonly idleTimeoutMs: number;
  readonly corruptChunk: number | undefined;
  readonly chunkDelayMs: number;
  progress(p: TransferProgress): void;
}

export class CheckpointSender {
  private readonly ctx: SenderContext;
  private readonly sessions = new Set<SendSession>();
  private closed = false;

  constructor(opts: CheckpointSenderOptions) {
    const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1 || chunkBytes > MAX_CHUNK_BYTES) {
      throw new RangeError(`chunkBytes must be an integer in 1..${MAX_CHUNK_BYTES}, not ${chunkBytes}`);
    }
    const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    if (!(idleTimeoutMs > 0)) throw new RangeError(`idleTimeoutMs must be positive, not ${idleTimeoutMs}`);
    const log = opts.logger.child({ component: "checkpoint-sender" });
    const onProgress = opts.onProgress;
    this.ctx = {
      source: opts.source,
      log,
      chunkBytes,
      idleTimeoutMs,
      corruptChunk: opts.corruptChunkForTest,
      chunkDelayMs: opts.chunkDelayMsForTest ?? 0,
      progress: (p) => {
        if (onProgress === undefined) return;
        // Called from socket and file callbacks, where a throw would escape as an uncaught error.
        try {
          onProgress(p);
        } catch (err) {
          log.error({ err }, "checkpoint progress callback threw");
        }
      },
    };
  }

  /** Serves one already-authenticated connection from `member` (the peer transport checked token + member header). */
  serve(ws: WebSocket, member: string): void {
    if (this.closed) {
      ws.terminate();
      return;
    }
    const session = new SendSession(this.ctx, ws, member);
    this.sessions.add(session);
    void session.ended.then(() => this.sessions.delete(session));
    session.start();
  }

  /** Active outgoing transfers' progress. */
  active(): TransferProgress[] {
    const out: TransferProgress[] = [];
    for (const session of this.sessions) {
      const p = session.progress();
      if (p !== null) out.push(p);
    }
    return out;
  }

  /** Terminates active transfers (unlocking). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.sessions].map((s) => s.stop()));
  }
}

interface Failure {
  readonly message: string;
  readonly code: number;
  /** Whether to tell the receiver why (not when the receiver itself reported the error). */
  readonly tell: boolean;
}

class SendSession {
  /** Resolves once the session is over: file closed and checkpoint unlocked. */
  readonly ended: Promise<void>;
  private endedResolve!: () => void;
  private readonly log: Logger;
  private state: TransferableCheckpoint | null = null;
  private unlocked = false;
  private manifestSent = false;
  private endSent = false;
  private finishing = false;
  private credit = 0;
  private fileIndex = 0;
  private offset = 0;
  private fh: FileHandle | null = null;
  private loop: Promise<void> | null = null;
  private chunkIndex = 0;
  private bytes = 0;
  private totalBytes = 0;
  private filesDone = 0;
  private startedAt = 0;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly ctx: SenderContext,
    private readonly ws: WebSocket,
    private readonly member: string,
  ) {
    this.log = ctx.log.child({ member });
    this.ended = new Promise((resolve) => {
      this.endedResolve = resolve;
    });
  }

  start(): void {
    this.startedAt = performance.now();
    this.armIdle();
    this.ws.on("message", (data, isBinary) => this.onMessage(data, isBinary));
    this.ws.on("error", (err) => this.log.debug({ err }, "checkpoint transfer socket error"));
    this.ws.on("close", (code) =>
      this.finish({ message: `connection closed by the receiver (code ${code})`, code, tell: false }),
    );
    void this.lockAndSendManifest().catch((err: unknown) =>
      this.finish({ message: `cannot send the manifest: ${errorText(err)}`, code: CLOSE_FAILED, tell: true }),
    );
  }

  progress(): TransferProgress | null {
    const state = this.state;
    if (state === null || this.finishing) return null;
    return {
      member: this.member,
      instanceId: state.instanceId,
      files: state.files.length,
      filesDone: this.filesDone,
      bytes: this.bytes,
      totalBytes: this.totalBytes,
    };
  }

  stop(): Promise<void> {
    this.finish({ message: "checkpoint sender closing", code: CLOSE_FAILED, tell: false });
    this.ws.terminate();
    return this.ended;
  }

  private async lockAndSendManifest(): Promise<void> {
    let state: TransferableCheckpoint;
    try {
      state = await this.ctx.source.lock();
    } catch (err) {
      this.finish({ message: `no checkpoint to send: ${errorText(err)}`, code: CLOSE_FAILED, tell: true });
      return;
    }
    this.state = state;
    if (this.finishing) {
      // The session ended while the lock was being taken; whoever gets here last unlocks.
      this.unlockOnce();
      return;
    }
    this.totalBytes = state.files.reduce((sum, f) => sum + f.size, 0);
    const manifest: ManifestMessage = {
      type: "manifest",
      version: PROTOCOL_VERSION,
      instanceId: state.instanceId,
      chunkBytes: this.ctx.chunkBytes,
      files: state.files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 })),
      ...(state.entries === undefined ? {} : { entries: state.entries }),
      ...(state.createdAt === undefined ? {} : { createdAt: state.createdAt }),
    };
    this.log.info(
      { instanceId: state.instanceId, files: state.files.length, bytes: this.totalBytes },
      "sending checkpoint",
    );
    this.ws.send(JSON.stringify(manifest));
    this.manifestSent = true;
    this.report();
    this.pump();
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.finishing) return;
    this.armIdle();
    if (isBinary) {
      this.finish({ message: "binary message from the receiver", code: CLOSE_PROTOCOL, tell: true });
      return;
    }
    let m: ReturnType<typeof parseReceiverMessage>;
    try {
      m = parseReceiverMessage(rawBuffer(data).toString("utf8"));
    } catch (err) {
      this.finish({ message: errorText(err), code: CLOSE_PROTOCOL, tell: true });
      return;
    }
    switch (m.type) {
      case "credit":
        if (!this.manifestSent) {
          this.finish({ message: "credit before the manifest", code: CLOSE_PROTOCOL, tell: true });
        } else if (this.credit + m.chunks > MAX_WINDOW) {
          this.finish({
            message: `credit for ${this.credit + m.chunks} chunks, more than the maximum window of ${MAX_WINDOW}`,
            code: CLOSE_PROTOCOL,
            tell: true,
          });
        } else {
          this.credit += m.chunks;
          this.pump();
        }
        return;
      case "done":
        if (!this.endSent) {
          this.finish({ message: "done before the end of the transfer", code: CLOSE_PROTOCOL, tell: true });
          return;
        }
        this.succeed();
        return;
      case "error":
        this.finish({ message: `receiver failed: ${m.message}`, code: CLOSE_FAILED, tell: false });
        return;
    }
  }

  /** Runs the send loop unless it is running or has nothing it may do. */
  private pump(): void {
    if (this.loop !== null || this.finishing || this.endSent) return;
    this.loop = this.sendLoop()
      .catch((err: unknown) => {
        const file = this.state?.files[this.fileIndex]?.path;
        this.finish({
          message: `cannot read checkpoint file "${file}": ${errorText(err)}`,
          code: CLOSE_FAILED,
          tell: true,
        });
      })
      .finally(() => {
        this.loop = null;
      });
  }

  private async sendLoop(): Promise<void> {
    const state = this.state!;
    while (!this.finishing && !this.endSent) {
      const file = state.files[this.fileIndex];
      if (file === undefined) {
        this.ws.send(JSON.stringify({ type: "end" }));
        this.endSent = true;
        return;
      }
      if (this.offset === file.size) {
        await this.closeFile();
        this.fileIndex++;
        this.offset = 0;
        this.filesDone++;
        this.report();
        continue;
      }
      if (this.credit === 0) return;
      this.fh ??= await open(join(state.dir, file.path), "r");
      // Fresh buffers, one per chunk, read straight in after the header by one readv for as many
      // chunks as there is credit for: ws then sends each without a copy, and a slow disk or a
      // busy thread pool costs one round trip per batch rather than per chunk.
      const chunks: Buffer[] = [];
      for (let at = this.offset; at < file.size && chunks.length < Math.min(this.credit, MAX_READ_CHUNKS); ) {
        const n = Math.min(this.ctx.chunkBytes, file.size - at);
        chunks.push(Buffer.allocUnsafe(CHUNK_HEADER_BYTES + n));
        at += n;
      }
      const want = chunks.reduce((sum, c) => sum + c.length - CHUNK_HEADER_BYTES, 0);
      const got = await readFully(
        this.fh,
        chunks.map((c) => c.subarray(CHUNK_HEADER_BYTES)),
        this.offset,
      );
      if (got < want) {
        throw new Error(`it ends at ${this.offset + got} bytes, short of the ${file.size} in its manifest`);
      }
      if (this.finishing) return;
      for (const chunk of chunks) {
        if (this.ctx.chunkDelayMs > 0) {
          await new Promise((r) => setTimeout(r, this.ctx.chunkDelayMs));
          if (this.finishing) return;
        }
        this.sendChunk(chunk, file.path);
      }
      this.report();
    }
  }

  private sendChunk(chunk: Buffer, path: string): void {
    const data = chunk.subarray(CHUNK_HEADER_BYTES);
    writeChunkHeader(chunk, this.fileIndex, this.offset, crc32(data));
    if (this.chunkIndex === this.ctx.corruptChunk && !corruptionFired) {
      corruptionFired = true;
      data[0] = data[0]! ^ 0xff;
      this.log.warn({ chunk: this.chunkIndex, file: path }, "test hook: corrupted a checkpoint chunk");
    }
    this.ws.send(chunk);
    this.credit--;
    this.chunkIndex++;
    this.offset += data.length;
    this.bytes += data.length;
  }

  private succeed(): void {
    const seconds = (performance.now() - this.startedAt) / 1000;
    this.log.info(
      {
        instanceId: this.state?.instanceId,
        bytes: this.bytes,
        seconds: Number(seconds.toFixed(3)),
        mbPerSecond: Number((this.bytes / 1e6 / seconds).toFixed(1)),
      },
      "checkpoint sent",
    );
    this.end();
    this.ws.close(CLOSE_DONE);
  }

  /** Ends the session on any failure; later calls change nothing. */
  private finish(failure: Failure): void {
    if (this.finishing) return;
    this.log.warn(
      { instanceId: this.state?.instanceId, bytes: this.bytes, reason: failure.message },
      "checkpoint transfer failed",
    );
    if (failure.tell && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "error", message: failure.message }));
    }
    this.end();
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(failure.code, failure.message.slice(0, MAX_CLOSE_REASON_CHARS));
    }
  }

  private end(): void {
    this.finishing = true;
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    void this.release().then(this.endedResolve);
  }

  /** Waits out a read in flight, closes the file and unlocks; never throws. */
  private async release(): Promise<void> {
    await this.loop;
    await this.closeFile().catch((err: unknown) =>
      this.log.warn({ err }, "cannot close a checkpoint file after sending it"),
    );
    this.unlockOnce();
  }

  private async closeFile(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }

  private unlockOnce(): void {
    if (this.state === null || this.unlocked) return;
    this.unlocked = true;
    try {
      this.ctx.source.unlock(this.state);
    } catch (err) {
      this.log.error({ err, instanceId: this.state.instanceId }, "cannot unlock the checkpoint");
    }
  }

  private armIdle(): void {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      this.finish({
        message: `no credit from ${this.member} for ${this.ctx.idleTimeoutMs} ms`,
        code: CLOSE_FAILED,
        tell: true,
      });
    }, this.ctx.idleTimeoutMs);
  }

  private report(): void {
    const p = this.progress();
    if (p !== null) this.ctx.progress(p);
  }
}

/** Fills `buffers` from `position` on; returns how many bytes there were, short only at the end of the file. */
async function readFully(fh: FileHandle, buffers: Buffer[], position: number): Promise<number> {
  let pending = buffers;
  let at = position;
  while (pending.length > 0) {
    const { bytesRead } = await fh.readv(pending, at);
    if (bytesRead === 0) break;
    at += bytesRead;
    pending = skipBytes(pending, bytesRead);
  }
  return at - position;
}
