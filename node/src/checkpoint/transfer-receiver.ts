// The receiving side of a checkpoint transfer (protocol in transfer-protocol.ts). It writes only
// into the folder it is given and returns only once everything there is verified and durable.

import { createHash, type Hash } from "node:crypto";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { Logger } from "pino";
import WebSocket, { type RawData } from "ws";
import { MEMBER_HEADER } from "../transport/peer-transport.js";
import {
  CHECKPOINT_PATH,
  CHUNK_HEADER_BYTES,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_WINDOW,
  EMPTY_SHA256,
  errorText,
  MANIFEST_FILE,
  MAX_CHUNK_BYTES,
  MAX_WINDOW,
  type ManifestMessage,
  parseSenderMessage,
  quote,
  rawBuffer,
  readChunkHeader,
  skipBytes,
  type TransferableCheckpoint,
  TransferError,
  type TransferProgress,
} from "./transfer-protocol.js";

export interface ReceiveCheckpointOptions {
  /** The sender's peer address, host:port. */
  address: string;
  /** This member's name, sent in the member header. */
  self: string;
  token?: string;
  /** An existing empty directory; the caller created it and removes it on failure. */
  tmpDir: string;
  /** The sender's member name, for logs and progress; defaults to the address. */
  peer?: string;
  /** Chunks in flight, 1..MAX_WINDOW; default 8. */
  window?: number;
  /** Give up when the sender is silent this long while we wait for it; default 30 s. */
  idleTimeoutMs?: number;
  /** Refuse a checkpoint whose files add up to more than this. */
  maxTotalBytes?: number;
  signal?: AbortSignal;
  onProgress?: (p: TransferProgress) => void;
  logger: Logger;
}

/** The error message sent before it says what failed. */
const CLOSE_FAILED = 1011;
const MAX_CLOSE_REASON_CHARS = 60;
/** How much of a refused upgrade's response body is quoted in the error. */
const MAX_REFUSAL_BODY_BYTES = 512;

/**
 * Pulls the checkpoint from `address` into `tmpDir`. Resolves only when every file's size and
 * SHA-256 match the manifest, every chunk's CRC matched, and all files, the manifest.json written
 * into tmpDir (format 1, as in the checkpoint store) and tmpDir itself are fsynced. Rejects with
 * TransferError on any problem with the transfer (RangeError for invalid options); by then no
 * file handle is open and nothing is being written, so the caller may remove tmpDir at once.
 */
export async function receiveCheckpoint(opts: ReceiveCheckpointOptions): Promise<TransferableCheckpoint> {
  const window = opts.window ?? DEFAULT_WINDOW;
  if (!Number.isSafeInteger(window) || window < 1 || window > MAX_WINDOW) {
    throw new RangeError(`window must be an integer in 1..${MAX_WINDOW}, not ${window}`);
  }
  const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  if (!(idleTimeoutMs > 0)) throw new RangeError(`idleTimeoutMs must be positive, not ${idleTimeoutMs}`);
  return new Receiver(opts, window, idleTimeoutMs).run();
}

interface IncomingFile {
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
  readonly hash: Hash;
  fh: FileHandle | null;
}

type Phase = "connecting" | "manifest" | "chunks" | "finishing" | "settled";

/** Disk work, done one operation at a time in arrival order. */
type DiskOp =
  | { readonly kind: "create"; readonly file: IncomingFile }
  | { readonly kind: "write"; readonly file: IncomingFile; readonly data: Buffer; readonly offset: number }
  | { readonly kind: "complete"; readonly file: IncomingFile }
  | { readonly kind: "finish"; readonly manifest: ManifestMessage };

class Receiver {
  private readonly log: Logger;
  private readonly peer: string;
  private ws: WebSocket | null = null;
  private phase: Phase = "connecting";
  private manifest: ManifestMessage | null = null;
  private files: IncomingFile[] = [];
  /** Where the next chunk must go: file index and offset, empty files already skipped. */
  private nextFile = 0;
  private nextOffset = 0;
  private granted = 0;
  private received = 0;
  private bytesWritten = 0;
  private totalBytes = 0;
  private filesDone = 0;
  private readonly ops: DiskOp[] = [];
  private draining = false;
  /** The drain loop last started; settled once no disk operation is running. */
  private drained: Promise<void> = Promise.resolve();
  /** fsync + close of finished files, overlapped with writing the next ones; never reject. */
  private readonly syncs: Promise<void>[] = [];
  private failure: TransferError | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private startedAt = 0;
  private resolve!: (state: TransferableCheckpoint) => void;
  private reject!: (err: TransferError) => void;

  constructor(
    private readonly opts: ReceiveCheckpointOptions,
    private readonly window: number,
    private readonly idleTimeoutMs: number,
  ) {
    this.peer = opts.peer ?? opts.address;
    this.log = opts.logger.child({ component: "checkpoint-receiver", peer: this.peer });
  }

  run(): Promise<TransferableCheckpoint> {
    const result = new Promise<TransferableCheckpoint>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    const signal = this.opts.signal;
    if (signal?.aborted) {
      this.phase = "settled";
      return Promise.reject(
        new TransferError(`checkpoint transfer from ${this.peer} aborted before it began`),
      );
    }
    signal?.addEventListener("abort", this.onAbort, { once: true });
    this.startedAt = performance.now();
    const headers: Record<string, string> = { [MEMBER_HEADER]: this.opts.self };
    if (this.opts.token !== undefined) headers.Authorization = `Bearer ${this.opts.token}`;
    let ws: WebSocket;
    try {
      ws = new WebSocket(`ws://${this.opts.address}${CHECKPOINT_PATH}`, {
        headers,
        perMessageDeflate: false,
        maxPayload: CHUNK_HEADER_BYTES + MAX_CHUNK_BYTES,
        handshakeTimeout: this.idleTimeoutMs,
        // Only credit messages go this way, but masking them buys nothing between members.
        generateMask: (mask) => mask.fill(0),
      });
    } catch (err) {
      this.fail(new TransferError(`cannot connect to ${this.opts.address}: ${errorText(err)}`));
      return result;
    }
    this.ws = ws;
    this.armIdle();
    ws.on("unexpected-response", (req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (text: string) => {
        if (body.length < MAX_REFUSAL_BODY_BYTES) body += text;
      });
      const refused = (): void => {
        const detail = body.trim() === "" ? "" : `: ${quote(body.trim())}`;
        this.fail(
          new TransferError(
            `checkpoint transfer refused by ${this.opts.address}: HTTP ${res.statusCode} ${res.statusMessage ?? ""}${detail}`,
          ),
        );
        req.destroy();
      };
      res.once("end", refused);
      res.once("close", refused);
      res.once("error", refused);
    });
    ws.on("open", () => {
      if (this.phase !== "connecting") return;
      this.phase = "manifest";
      this.log.debug("checkpoint transfer connected; waiting for the manifest");
    });
    ws.on("message", (data, isBinary) => this.onMessage(data, isBinary));
    ws.on("error", (err) => {
      if (this.phase === "finishing")
        this.log.debug({ err }, "checkpoint sender connection error after the end");
      else this.fail(new TransferError(`connection to ${this.opts.address} failed: ${err.message}`));
    });
    ws.on("close", (code, reason) => {
      // Once the end has arrived only local work is left; the sender may go.
      if (this.phase === "finishing") return;
      const why = reason.length > 0 ? `, ${quote(reason.toString("utf8"))}` : "";
      this.fail(
        new TransferError(
          `connection to ${this.opts.address} closed before the transfer completed (code ${code}${why})`,
        ),
      );
    });
    return result;
  }

  private readonly onAbort = (): void => {
    this.fail(new TransferError(`checkpoint transfer from ${this.peer} aborted`), true);
  };

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.failure !== null || this.phase === "settled") return;
    this.armIdle();
    try {
      if (isBinary) this.onChunk(rawBuffer(data));
      else this.onControl(rawBuffer(data).toString("utf8"));
    } catch (err) {
      this.fail(err instanceof TransferError ? err : new TransferError(errorText(err)));
    }
  }

  private onControl(text: string): void {
    const m = parseSenderMessage(text);
    switch (m.type) {
      case "error":
        // After the end every byte is here and verified: a sender that gave up waiting for "done"
        // (its idle timeout during our fsyncs) changes nothing.
        if (this.phase === "finishing") {
          this.log.info({ reason: m.message }, "the checkpoint sender gave up after sending everything");
          return;
        }
        throw new TransferError(`sender ${this.peer} failed: ${m.message}`);
      case "manifest":
        if (this.manifest !== null) throw new TransferError("a second manifest from the sender");
        this.accept(m);
        return;
      case "end":
        this.onEnd();
        return;
    }
  }

  private accept(m: ManifestMessage): void {
    this.totalBytes = m.files.reduce((sum, f) => sum + f.size, 0);
    const max = this.opts.maxTotalBytes;
    if (max !== undefined && this.totalBytes > max) {
      throw new TransferError(
        `checkpoint at instance ${m.instanceId} holds ${this.totalBytes} bytes, more than the ${max} allowed`,
      );
    }
    this.manifest = m;
    this.phase = "chunks";
    this.files = m.files.map((f) => ({ ...f, hash: createHash("sha256"), fh: null }));
    this.log.info(
      { instanceId: m.instanceId, files: m.files.length, bytes: this.totalBytes },
      "receiving checkpoint",
    );
    this.skipEmptyFiles();
    this.report();
    this.grant(this.window);
  }

  private onChunk(chunk: Buffer): void {
    const m = this.manifest;
    if (m === null) throw new TransferError("a chunk before the manifest");
    if (this.phase !== "chunks") throw new TransferError("a chunk after the end message");
    if (this.received >= this.granted) {
      throw new TransferError(`the sender sent more chunks than the ${this.granted} granted so far`);
    }
    const { fileIndex, offset, crc } = readChunkHeader(chunk);
    const file = this.files[this.nextFile];
    if (file === undefined)
      throw new TransferError(`a chunk for file ${fileIndex} after every file was complete`);
    if (fileIndex !== this.nextFile || offset !== this.nextOffset) {
      throw new TransferError(
        `chunk for file ${fileIndex} at offset ${offset} where file ${this.nextFile} ("${file.path}") ` +
          `at offset ${this.nextOffset} was due`,
      );
    }
    const data = chunk.subarray(CHUNK_HEADER_BYTES);
    if (data.length > m.chunkBytes) {
      throw new TransferError(`chunk of ${data.length} bytes, more than the announced ${m.chunkBytes}`);
    }
    if (offset + data.length > file.size) {
      throw new TransferError(
        `chunk at offset ${offset} of ${data.length} bytes runs past the ${file.size} bytes of "${file.path}"`,
      );
    }
    const actual = crc32(data);
    if (actual !== crc) {
      throw new TransferError(
        `CRC mismatch in the chunk at offset ${offset} of "${file.path}": ` +
          `header says ${hex32(crc)}, data has ${hex32(actual)}`,
      );
    }
    this.received++;
    // Hashing here, in arrival order, overlaps it with the writes still queued.
    file.hash.update(data);
    this.nextOffset += data.length;
    if (offset === 0) this.enqueue({ kind: "create", file });
    this.enqueue({ kind: "write", file, data, offset });
    if (this.nextOffset < file.size) return;
    const digest = file.hash.digest("hex");
    if (digest !== file.sha256) {
      throw new TransferError(
        `SHA-256 mismatch for "${file.path}": manifest says ${file.sha256}, data has ${digest}`,
      );
    }
    this.enqueue({ kind: "complete", file });
    this.nextFile++;
    this.nextOffset = 0;
    this.skipEmptyFiles();
  }

  /** Empty files have no chunks: create them (once their SHA-256 is the empty one) and move on. */
  private skipEmptyFiles(): void {
    for (let file = this.files[this.nextFile]; file?.size === 0; file = this.files[this.nextFile]) {
      if (file.sha256 !== EMPTY_SHA256) {
        throw new TransferError(
          `SHA-256 mismatch for "${file.path}": manifest says ${file.sha256} for an empty file`,
        );
      }
      this.enqueue({ kind: "create", file });
      this.enqueue({ kind: "complete", file });
      this.nextFile++;
    }
  }

  /** Starts the file's fsync and close, which overlap the next file's writes; finish() awaits them. */
  private completeFile(file: IncomingFile): void {
    const fh = file.fh!;
    file.fh = null;
    this.filesDone++;
    this.report();
    this.syncs.push(
      fh
        .sync()
        .finally(() => fh.close())
        .catch((err: unknown) =>
          this.fail(new TransferError(`cannot fsync "${file.path}": ${errorText(err)}`)),
        ),
    );
  }

  private onEnd(): void {
    const m = this.manifest;
    if (m === null) throw new TransferError("end before the manifest");
    if (this.phase !== "chunks") throw new TransferError("a second end message");
    const file = this.files[this.nextFile];
    if (file !== undefined) {
      throw new TransferError(
        `end while "${file.path}" had ${this.nextOffset} of its ${file.size} bytes (file ${this.nextFile + 1} of ${this.files.length})`,
      );
    }
    this.phase = "finishing";
    this.clearIdle();
    this.enqueue({ kind: "finish", manifest: m });
  }

  private async finish(m: ManifestMessage): Promise<void> {
    await Promise.all(this.syncs);
    if (this.failure !== null) return;
    const tmpDir = this.opts.tmpDir;
    const manifest = {
      format: 1,
      instanceId: m.instanceId,
      createdAt: m.createdAt ?? new Date().toISOString(),
      ...(m.entries === undefined ? {} : { entries: m.entries }),
      files: m.files,
    };
    const fh = await open(join(tmpDir, MANIFEST_FILE), "wx");
    try {
      await fh.writeFile(`${JSON.stringify(manifest, null, 2)}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const dir = await open(tmpDir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    if (this.failure !== null) return;
    const seconds = (performance.now() - this.startedAt) / 1000;
    this.log.info(
      {
        instanceId: m.instanceId,
        files: m.files.length,
        bytes: this.totalBytes,
        seconds: Number(seconds.toFixed(3)),
        mbPerSecond: Number((this.totalBytes / 1e6 / seconds).toFixed(1)),
      },
      "checkpoint received and verified",
    );
    this.phase = "settled";
    this.opts.signal?.removeEventListener("abort", this.onAbort);
    const ws = this.ws!;
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "done" }));
      ws.close(1000);
    }
    this.resolve({
      instanceId: m.instanceId,
      dir: tmpDir,
      files: m.files,
      createdAt: manifest.createdAt,
      ...(m.entries === undefined ? {} : { entries: m.entries }),
    });
  }

  private enqueue(op: DiskOp): void {
    this.ops.push(op);
    if (this.draining) return;
    this.draining = true;
    this.drained = this.drain();
  }

  private async drain(): Promise<void> {
    try {
      for (let op = this.ops.shift(); op !== undefined && this.failure === null; op = this.ops.shift()) {
        switch (op.kind) {
          case "create":
            op.file.fh = await open(join(this.opts.tmpDir, op.file.path), "wx");
            break;
          case "write":
            await this.write(op.file, op.data, op.offset);
            break;
          case "complete":
            this.completeFile(op.file);
            break;
          case "finish":
            await this.finish(op.manifest);
            break;
        }
      }
    } catch (err) {
      this.fail(new TransferError(`cannot write the checkpoint into ${this.opts.tmpDir}: ${errorText(err)}`));
    } finally {
      this.ops.length = 0;
      this.draining = false;
    }
  }

  /**
   * Writes `data` and the chunks queued right behind it for the same file with one writev: when
   * the disk or the thread pool lags, each round trip then carries more, instead of the queue
   * growing by a round trip per chunk.
   */
  private async write(file: IncomingFile, data: Buffer, offset: number): Promise<void> {
    const batch = [data];
    for (let next = this.ops[0]; next?.kind === "write" && next.file === file; next = this.ops[0]) {
      batch.push(next.data);
      this.ops.shift();
    }
    await writeAll(file.fh!, batch, offset);
    for (const chunk of batch) this.bytesWritten += chunk.length;
    this.report();
    this.grant(batch.length);
  }

  private grant(chunks: number): void {
    const ws = this.ws;
    // After the end there is nothing more to grant credit for.
    if (this.phase !== "chunks" || ws === null || ws.readyState !== WebSocket.OPEN) return;
    this.granted += chunks;
    ws.send(JSON.stringify({ type: "credit", chunks }));
  }

  /** Ends the transfer with `err`; rejects once no disk operation is left running. Idempotent. */
  private fail(err: TransferError, abort = false): void {
    if (this.failure !== null || this.phase === "settled") return;
    this.failure = err;
    this.phase = "settled";
    this.clearIdle();
    this.opts.signal?.removeEventListener("abort", this.onAbort);
    this.log.warn(
      { instanceId: this.manifest?.instanceId, bytes: this.bytesWritten, reason: err.message },
      "checkpoint transfer failed",
    );
    const ws = this.ws;
    if (ws !== null) {
      if (!abort && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "error", message: err.message }));
        ws.close(CLOSE_FAILED, err.message.slice(0, MAX_CLOSE_REASON_CHARS));
      } else {
        ws.terminate();
      }
    }
    void this.cleanUp().then(() => this.reject(err));
  }

  private async cleanUp(): Promise<void> {
    await this.drained;
    await Promise.all(this.syncs);
    await Promise.all(
      this.files.map(async (file) => {
        const fh = file.fh;
        file.fh = null;
        await fh?.close().catch((err: unknown) => this.log.debug({ err, file: file.path }, "cannot close"));
      }),
    );
  }

  private armIdle(): void {
    this.clearIdle();
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      // Our own disk holding back the credit is not the sender's silence.
      if (this.draining) {
        this.armIdle();
        return;
      }
      this.fail(new TransferError(`no data from ${this.peer} for ${this.idleTimeoutMs} ms`));
    }, this.idleTimeoutMs);
  }

  private clearIdle(): void {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  private report(): void {
    const onProgress = this.opts.onProgress;
    const m = this.manifest;
    if (onProgress === undefined || m === null || this.failure !== null) return;
    try {
      onProgress({
        member: this.peer,
        instanceId: m.instanceId,
        files: m.files.length,
        filesDone: this.filesDone,
        bytes: this.bytesWritten,
        totalBytes: this.totalBytes,
      });
    } catch (err) {
      this.log.error({ err }, "checkpoint progress callback threw");
    }
  }
}

async function writeAll(fh: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let pending = buffers;
  let at = position;
  while (pending.length > 0) {
    const { bytesWritten } = await fh.writev(pending, at);
    if (bytesWritten === 0) throw new Error(`writing at offset ${at} made no progress`);
    at += bytesWritten;
    pending = skipBytes(pending, bytesWritten);
  }
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, "0");
}
