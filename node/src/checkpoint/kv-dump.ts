// The KV dump files of a checkpoint (format 1, checkpoint-design.md): `data-00000.kvd`, ...
// Each file is the magic `PXKVD001`, then records `[u32 BE keyLen][u32 BE valueLen][key][value]`,
// and is at most maxFileBytes long (files split between records; a single record larger than
// that gets a file of its own).

import { createHash, type Hash } from "node:crypto";
import { type FileHandle, open } from "node:fs/promises";
import path from "node:path";
import type { CheckpointFile } from "../sm/state-machine.js";

export const KVD_MAGIC = Buffer.from("PXKVD001", "latin1");
export const DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024;
const RECORD_HEADER_BYTES = 8;
/**
 * Records are gathered into buffers of this size and each buffer is one write() and one hash
 * update. Big enough that the syscall count does not matter, small enough that hashing one buffer
 * (on the event loop) holds up other work for well under a millisecond.
 */
const WRITE_BUFFER_BYTES = 1 << 20;
const READ_CHUNK_BYTES = 4 << 20;
const MAX_U32 = 0xffff_ffff;

/** A dump file that does not match its manifest or is not a well-formed `.kvd` file. */
export class KvDumpCorruptError extends Error {
  override readonly name = "KvDumpCorruptError";
}

export function dataFileName(index: number): string {
  return `data-${String(index).padStart(5, "0")}.kvd`;
}

export interface KvDumpSummary {
  readonly files: CheckpointFile[];
  readonly entries: number;
  /** Total size of the data files. */
  readonly bytes: number;
}

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/**
 * Streams records into data files. Writes go out in the background while the next buffer fills
 * (two buffers), the SHA-256 is computed as the bytes go out, and every file is fsynced before
 * finish() resolves.
 */
export class KvDumpWriter {
  private fh: FileHandle | null = null;
  private fileIndex = -1;
  private fileName = "";
  /** Size of the current file, counting bytes still in the buffer. */
  private fileBytes = 0;
  /** Bytes of the current file already handed to write(): the position of the next write. */
  private flushedBytes = 0;
  private hash: Hash = createHash("sha256");
  private buffer = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  /** The buffer being written, reused once that write is done. */
  private spare = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  private used = 0;
  /** The chain of writes of the current file, in order. */
  private writes: Promise<void> = Promise.resolve();
  private readonly files: CheckpointFile[] = [];
  private entries = 0;
  private totalBytes = 0;
  private done = false;

  private constructor(
    readonly dir: string,
    private readonly maxFileBytes: number,
  ) {}

  /** Starts `data-00000.kvd` in `dir` (an existing, empty folder). */
  static async create(dir: string, options: { maxFileBytes?: number } = {}): Promise<KvDumpWriter> {
    const max = options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
    if (!Number.isSafeInteger(max) || max <= KVD_MAGIC.length + RECORD_HEADER_BYTES)
      throw new RangeError(
        `maxFileBytes must be an integer above ${KVD_MAGIC.length + RECORD_HEADER_BYTES}, got ${max}`,
      );
    const writer = new KvDumpWriter(dir, max);
    await writer.startFile();
    return writer;
  }

  /**
   * Appends one record. Returns undefined when it was only buffered, or a promise that the caller
   * must await before the next add() when a write or a file switch had to complete first (this is
   * how the writer applies back-pressure without a promise per record).
   */
  add(key: Uint8Array, value: Uint8Array): Promise<void> | undefined {
    if (this.done) throw new Error("KvDumpWriter: add() after finish() or abort()");
    if (key.length > MAX_U32 || value.length > MAX_U32)
      throw new RangeError(`a KV dump record holds at most ${MAX_U32} bytes of key and of value`);
    const size = RECORD_HEADER_BYTES + key.length + value.length;
    if (this.needsNewFile(size) || size > this.buffer.length - this.used)
      return this.addSlowly(key, value, size);
    this.copyRecord(key, value);
    this.counted(size);
    return undefined;
  }

  private needsNewFile(size: number): boolean {
    return this.fileBytes > KVD_MAGIC.length && this.fileBytes + size > this.maxFileBytes;
  }

  private async addSlowly(key: Uint8Array, value: Uint8Array, size: number): Promise<void> {
    if (this.needsNewFile(size)) {
      await this.endFile();
      await this.startFile();
    }
    if (size > this.buffer.length - this.used) await this.flushBuffer();
    if (size > this.buffer.length) {
      // Larger than a buffer: written straight from the caller's memory, after what is queued.
      const header = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
      header.writeUInt32BE(key.length, 0);
      header.writeUInt32BE(value.length, 4);
      for (const part of [header, key, value])
        this.queueWrite(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
      await this.writes;
    } else {
      this.copyRecord(key, value);
    }
    this.counted(size);
  }

  private copyRecord(key: Uint8Array, value: Uint8Array): void {
    const b = this.buffer;
    let at = this.used;
    b.writeUInt32BE(key.length, at);
    b.writeUInt32BE(value.length, at + 4);
    at += RECORD_HEADER_BYTES;
    b.set(key, at);
    at += key.length;
    b.set(value, at);
    this.used = at + value.length;
  }

  private counted(size: number): void {
    this.fileBytes += size;
    this.entries++;
  }

  /** Hashes `data` and appends its write to the chain; `data` must not change until the chain passes it. */
  private queueWrite(data: Buffer): void {
    const fh = this.fh!;
    const position = this.flushedBytes;
    this.flushedBytes += data.length;
    this.hash.update(data);
    const write = this.writes.then(() => writeAll(fh, data, position));
    // Awaited by flushBuffer, endFile or abort; this only keeps a failure from counting as unhandled
    // in the moment before that.
    write.catch(() => {});
    this.writes = write;
  }

  /**
   * Starts writing the filled buffer and switches to the spare one. Resolves once the spare is
   * free again, i.e. the previous buffer's write is done: at most one buffer is ever in flight.
   */
  private flushBuffer(): Promise<void> {
    if (this.used === 0) return this.writes;
    const previous = this.writes;
    this.queueWrite(this.buffer.subarray(0, this.used));
    [this.buffer, this.spare] = [this.spare, this.buffer];
    this.used = 0;
    return previous;
  }

  private async startFile(): Promise<void> {
    this.fileIndex++;
    this.fileName = dataFileName(this.fileIndex);
    this.fh = await open(path.join(this.dir, this.fileName), "wx");
    this.fileBytes = KVD_MAGIC.length;
    this.flushedBytes = 0;
    this.hash = createHash("sha256");
    this.writes = Promise.resolve();
    KVD_MAGIC.copy(this.buffer, 0);
    this.used = KVD_MAGIC.length;
  }

  private async endFile(): Promise<void> {
    await this.flushBuffer();
    await this.writes;
    const fh = this.fh!;
    await fh.sync();
    await fh.close();
    this.fh = null;
    this.files.push({ path: this.fileName, size: this.fileBytes, sha256: this.hash.digest("hex") });
    this.totalBytes += this.fileBytes;
  }

  /** Writes and fsyncs what is buffered and closes the last file. */
  async finish(): Promise<KvDumpSummary> {
    if (this.done) throw new Error("KvDumpWriter: finish() after finish() or abort()");
    this.done = true;
    await this.endFile();
    return { files: this.files, entries: this.entries, bytes: this.totalBytes };
  }

  /** Stops writing and closes the open file; the caller removes the folder. */
  async abort(): Promise<void> {
    this.done = true;
    await this.writes.catch(() => {});
    await this.fh?.close().catch(() => {});
    this.fh = null;
  }
}

/**
 * The records of a dump, file by file in the given order, as [key, value] Buffers. Checks the
 * magic, that every record lies inside its file, and each file's size and SHA-256 against
 * `files`. A hash mismatch is only known at the end of a file, after its records were yielded:
 * treat what was read as unconfirmed until the iteration ends without an error.
 */
export async function* readKvDump(state: {
  readonly dir: string;
  readonly files: readonly CheckpointFile[];
}): AsyncGenerator<[Buffer, Buffer], void, undefined> {
  for (const f of state.files) {
    const file = path.join(state.dir, f.path);
    const fail = (why: string): never => {
      throw new KvDumpCorruptError(`KV dump file ${file}: ${why}`);
    };
    const fh = await open(file, "r");
    try {
      const size = (await fh.stat()).size;
      if (size !== f.size) fail(`has ${size} bytes, the manifest says ${f.size}`);
      if (size < KVD_MAGIC.length) fail(`has ${size} bytes, too short for the magic`);
      const hash = createHash("sha256");
      let position = 0;
      /** Unparsed bytes; `offset` is the file offset of pending[0]. */
      let pending: Buffer = Buffer.alloc(0);
      let offset = 0;
      /** Bytes the next record needs in `pending`, so a large record is read in one go. */
      let needed = KVD_MAGIC.length;
      while (position < size || pending.length > 0) {
        if (pending.length < needed) {
          if (position >= size) fail(`ends inside the record at offset ${offset}`);
          const length = Math.min(Math.max(READ_CHUNK_BYTES, needed - pending.length), size - position);
          const chunk = Buffer.allocUnsafe(length);
          let got = 0;
          while (got < length) {
            const { bytesRead } = await fh.read(chunk, got, length - got, position + got);
            if (bytesRead === 0) fail(`shrank while being read (at offset ${position + got})`);
            got += bytesRead;
          }
          position += length;
          hash.update(chunk);
          pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
          continue;
        }
        let at = 0;
        if (offset === 0) {
          if (!pending.subarray(0, KVD_MAGIC.length).equals(KVD_MAGIC))
            fail(`does not start with the magic ${KVD_MAGIC.toString("latin1")}`);
          at = KVD_MAGIC.length;
        }
        needed = RECORD_HEADER_BYTES;
        while (pending.length - at >= RECORD_HEADER_BYTES) {
          const keyLength = pending.readUInt32BE(at);
          const valueLength = pending.readUInt32BE(at + 4);
          const recordBytes = RECORD_HEADER_BYTES + keyLength + valueLength;
          if (offset + at + recordBytes > size)
            fail(
              `the record at offset ${offset + at} declares ${recordBytes} bytes, past the end of the file`,
            );
          if (pending.length - at < recordBytes) {
            needed = recordBytes;
            break;
          }
          const keyStart = at + RECORD_HEADER_BYTES;
          const valueStart = keyStart + keyLength;
          yield [
            pending.subarray(keyStart, valueStart),
            pending.subarray(valueStart, valueStart + valueLength),
          ];
          at += recordBytes;
        }
        pending = pending.subarray(at);
        offset += at;
        if (position >= size && pending.length > 0 && pending.length < needed)
          fail(`ends inside the record at offset ${offset}`);
      }
      const sha256 = hash.digest("hex");
      if (sha256 !== f.sha256) fail(`has SHA-256 ${sha256}, the manifest says ${f.sha256}`);
    } finally {
      await fh.close();
    }
  }
}
