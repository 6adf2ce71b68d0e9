// The vote journal: the PaxosLog's own write-ahead log, in front of RocksDB.
//
// Why: a synced RocksDB write appends to a WAL file that grows, so every fsync also commits the
// file system's journal (the file's size changed): two to three disk writes, and a hand-off to the
// binding's thread pool and back on the critical path of every vote. This journal is one file,
// preallocated once and then rewritten in place as a ring, so an fdatasync writes the data only;
// and it is written and synced on the calling thread, so a vote is durable without leaving it
// (etcd keeps its WAL the same way). RocksDB still holds the log for reads; the PaxosLog applies
// every journaled batch to it unsynced, and syncs RocksDB now and then, after which the journal
// space before that point is released and reused.
//
// Record: [magic u32][crc32 u32][seq u64][length u32][kind u8][3 zero bytes][payload], big-endian,
// the CRC covering everything from seq to the end of the payload. Sequence numbers are
// consecutive; a reader starts at a known (seq, offset) and stops at the first record that is not
// the next one intact (a torn write, or an older lap's bytes). A record that does not fit before
// the end of the file is preceded by a wrap record (or by nothing, when not even a header fits).

import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  writeSync,
} from "node:fs";
import { dirname } from "node:path";
import { crc32 } from "node:zlib";
import { CorruptRecordError } from "./framing.js";

const MAGIC = 0x50584a31; // "PXJ1"
const HEADER_BYTES = 24;
const KIND_BATCH = 1;
const KIND_WRAP = 2;

/** Where a record starts: its sequence number and byte offset. */
export interface JournalPosition {
  readonly seq: number;
  readonly offset: number;
}

export interface OpenedJournal {
  readonly journal: VoteJournal;
  /** Payloads of the intact records from the start position on, in order. */
  readonly records: Uint8Array[];
}

export class VoteJournal {
  /**
   * The oldest record still needed. It starts at the head: what open() read back is the caller's to
   * make durable elsewhere before it appends (the PaxosLog does so before open() returns).
   */
  private start: JournalPosition;

  private constructor(
    private readonly fd: number,
    readonly capacity: number,
    private next: JournalPosition,
    readonly path: string,
  ) {
    this.start = next;
  }

  /**
   * Opens (creating and preallocating it when missing) the journal at `path` and reads the records
   * from `from` on. `from` undefined means a journal nobody has read from yet: it must be new or empty.
   */
  static open(path: string, capacityBytes: number, from: JournalPosition | undefined): OpenedJournal {
    let fd: number;
    try {
      fd = openSync(path, "r+");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      if (from !== undefined) {
        throw new CorruptRecordError(
          `vote journal ${path} is missing, but the PaxosLog says records from seq ${from.seq} are in it`,
        );
      }
      fd = createPreallocated(path, capacityBytes);
    }
    try {
      const capacity = fstatSync(fd).size;
      if (capacity < 4 * HEADER_BYTES) {
        throw new CorruptRecordError(`vote journal ${path} is ${capacity} bytes, too small to be one`);
      }
      const start = from ?? { seq: 0, offset: 0 };
      if (start.offset >= capacity) {
        throw new CorruptRecordError(`vote journal ${path}: start offset ${start.offset} is past its end`);
      }
      const { records, next } = readFrom(fd, capacity, start);
      return { journal: new VoteJournal(fd, capacity, next, path), records };
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Largest payload append() takes: a quarter of the ring, so that one record never waits for all of it. */
  get maxPayloadBytes(): number {
    return Math.floor(this.capacity / 4) - 2 * HEADER_BYTES;
  }

  /** Where the next record goes: replaying from here finds only what comes after this call. */
  head(): JournalPosition {
    return this.next;
  }

  /**
   * Bytes of the ring from the oldest record still needed to the head, skipped tails included.
   * Never a whole lap: append() stops short of one.
   */
  get pendingBytes(): number {
    return (this.next.offset - this.start.offset + this.capacity) % this.capacity;
  }

  /**
   * Appends one record, synced with `sync` (which also makes every earlier unsynced record durable).
   * Returns false, writing nothing, when the payload is too large or the ring has no room for it
   * until release() is called.
   */
  append(payload: Uint8Array, sync: boolean): boolean {
    if (payload.length > this.maxPayloadBytes) return false;
    const size = HEADER_BYTES + payload.length;
    let { seq, offset } = this.next;
    const tail = this.capacity - offset;
    const skip = tail < size ? tail : 0;
    // Never overwrite what is still needed: one byte short of a full ring keeps head != start.
    if (this.pendingBytes + skip + size >= this.capacity) return false;
    if (skip > 0) {
      if (tail >= HEADER_BYTES) writeAll(this.fd, record(seq++, KIND_WRAP, new Uint8Array(0)), offset);
      offset = 0;
    }
    writeAll(this.fd, record(seq, KIND_BATCH, payload), offset);
    if (sync) fdatasyncSync(this.fd);
    this.next = { seq: seq + 1, offset: offset + size };
    return true;
  }

  /**
   * Makes every record appended so far durable, on the thread pool: for a caller whose thread has
   * other work meanwhile.
   */
  syncInBackground(): Promise<void> {
    return new Promise((resolve, reject) => {
      fdatasync(this.fd, (err) =>
        err
          ? reject(new Error(`vote journal ${this.path}: fdatasync failed: ${err.message}`, { cause: err }))
          : resolve(),
      );
    });
  }

  /** Everything before `position` (from head()) is durable elsewhere: its space may be reused. */
  release(position: JournalPosition): void {
    if (position.seq > this.start.seq) this.start = position;
  }

  /**
   * Moves the head forward by a gap of sequence numbers no record in the file can carry, so that
   * once the caller has recorded the new head, bytes of records written before a crash but never
   * read back (past a torn one) can never pass for new ones.
   */
  skipAhead(): JournalPosition {
    this.next = {
      seq: this.next.seq + Math.ceil(this.capacity / HEADER_BYTES) + 1,
      offset: this.next.offset,
    };
    return this.head();
  }

  close(): void {
    closeSync(this.fd);
  }
}

function record(seq: number, kind: number, payload: Uint8Array): Buffer {
  const out = Buffer.alloc(HEADER_BYTES + payload.length);
  out.writeUInt32BE(MAGIC, 0);
  out.writeBigUInt64BE(BigInt(seq), 8);
  out.writeUInt32BE(payload.length, 16);
  out[20] = kind;
  out.set(payload, HEADER_BYTES);
  out.writeUInt32BE(crc32(out.subarray(8)), 4);
  return out;
}

function writeAll(fd: number, bytes: Buffer, offset: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, offset + done);
}

function readAll(fd: number, length: number, offset: number): Buffer {
  const out = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return out.subarray(0, done);
}

function readFrom(
  fd: number,
  capacity: number,
  start: JournalPosition,
): { records: Uint8Array[]; next: JournalPosition } {
  const file = readAll(fd, capacity, 0);
  const records: Uint8Array[] = [];
  let { seq, offset } = start;
  // A valid chain never covers more than one lap; the bound also guards against a looping file.
  for (let scanned = 0; scanned <= capacity; ) {
    if (capacity - offset < HEADER_BYTES) {
      scanned += capacity - offset;
      offset = 0;
      continue;
    }
    if (file.readUInt32BE(offset) !== MAGIC) break;
    if (file.readBigUInt64BE(offset + 8) !== BigInt(seq)) break;
    const length = file.readUInt32BE(offset + 16);
    const kind = file[offset + 20];
    if (length > capacity - offset - HEADER_BYTES) break;
    const end = offset + HEADER_BYTES + length;
    if (crc32(file.subarray(offset + 8, end)) !== file.readUInt32BE(offset + 4)) break;
    seq++;
    if (kind === KIND_WRAP) {
      scanned += capacity - offset;
      offset = 0;
      continue;
    }
    if (kind !== KIND_BATCH) break;
    records.push(new Uint8Array(file.subarray(offset + HEADER_BYTES, end)));
    scanned += end - offset;
    offset = end;
  }
  return { records, next: { seq, offset } };
}

/** Zero-filled, synced and renamed into place, so a crash never leaves a short journal behind. */
function createPreallocated(path: string, capacityBytes: number): number {
  const temp = `${path}.new`;
  const fd = openSync(temp, "w+");
  try {
    const zeros = Buffer.alloc(Math.min(capacityBytes, 1024 * 1024));
    for (let at = 0; at < capacityBytes; at += zeros.length) {
      writeAll(fd, zeros.subarray(0, Math.min(zeros.length, capacityBytes - at)), at);
    }
    fsyncSync(fd);
    renameSync(temp, path);
    const dir = openSync(dirname(path), "r");
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
