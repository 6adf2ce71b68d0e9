// A small promise-based wrapper around the npm `rocksdb` binding. This is the only module that
// imports it, so the callback API and its quirks (keys that are not Buffers are stringified,
// a missing key is an error from get()) stay in one place.

import { mkdir } from "node:fs/promises";
import rocksdb, { type BatchOperation, type RocksDB, type RocksIterator } from "rocksdb";

export interface StoreOp {
  readonly type: "put" | "del";
  readonly key: Uint8Array;
  readonly value?: Uint8Array;
}

export interface StoreRange {
  readonly gt?: Uint8Array;
  readonly gte?: Uint8Array;
  readonly lt?: Uint8Array;
  readonly lte?: Uint8Array;
  readonly reverse?: boolean;
  readonly limit?: number;
  /** Bytes the binding reads ahead per trip to its thread pool (its default: 16 KiB); more suits long scans. */
  readonly readAheadBytes?: number;
}

/** Views the same memory as a Buffer: the binding would stringify any other Uint8Array. */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function call<T = void>(
  what: string,
  dir: string,
  fn: (cb: (err: unknown, result?: T) => void) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    fn((err, result) => {
      if (err) {
        const message = err instanceof Error ? err.message : String(err);
        reject(new Error(`RocksDB ${what} failed in ${dir}: ${message}`, { cause: err }));
      } else {
        resolve(result as T);
      }
    });
  });
}

export class RocksStore {
  private closing: Promise<void> | undefined;
  /** Operations still running in the binding; close() lets them finish first. */
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Native iterators not yet ended: the binding's close waits for them, so close() ends them. */
  private readonly openIterators = new Set<RocksIterator>();
  private readonly iteratorEnds = new WeakMap<RocksIterator, Promise<void>>();

  private constructor(
    private readonly db: RocksDB,
    readonly dir: string,
  ) {}

  static async open(dir: string): Promise<RocksStore> {
    // RocksDB creates only the last path component itself.
    await mkdir(dir, { recursive: true });
    const db = rocksdb(dir);
    await call("open", dir, (cb) => db.open({ createIfMissing: true, errorIfExists: false }, cb));
    return new RocksStore(db, dir);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    const forget = () => this.inFlight.delete(p);
    p.then(forget, forget);
    return p;
  }

  private assertOpen(what: string): void {
    if (this.closing) throw new Error(`RocksDB store ${this.dir} is closed (${what})`);
  }

  async get(key: Uint8Array): Promise<Buffer | undefined> {
    this.assertOpen("get");
    const values = await this.track(
      call<(Buffer | undefined)[]>("get", this.dir, (cb) =>
        this.db.getMany([asBuffer(key)], { asBuffer: true }, cb),
      ),
    );
    return values[0] ?? undefined;
  }

  /** Applies every operation atomically, in order. With `sync`, resolves only after an fsync of the WAL. */
  async batch(ops: readonly StoreOp[], options: { sync: boolean }): Promise<void> {
    this.assertOpen("batch");
    if (ops.length === 0) return;
    const converted: BatchOperation[] = ops.map((op) => {
      if (op.type === "del") return { type: "del", key: asBuffer(op.key) };
      if (op.value === undefined) throw new Error("RocksStore.batch: a put needs a value");
      return { type: "put", key: asBuffer(op.key), value: asBuffer(op.value) };
    });
    await this.track(call("batch", this.dir, (cb) => this.db.batch(converted, { sync: options.sync }, cb)));
  }

  /** Key-value pairs in key order (or reverse); the native iterator is always ended, even on break or throw. */
  iterate(range: StoreRange = {}): AsyncGenerator<[Buffer, Buffer], void, undefined> {
    return this.scan("iterate", range, true);
  }

  /** Keys only: the binding then copies no value bytes, which matters for scans over large values. */
  async *keys(range: StoreRange = {}): AsyncGenerator<Buffer, void, undefined> {
    for await (const [key] of this.scan("keys", range, false)) yield key;
  }

  /** With `values` false the binding yields an empty Buffer as every value. */
  private async *scan(
    what: string,
    range: StoreRange,
    values: boolean,
  ): AsyncGenerator<[Buffer, Buffer], void, undefined> {
    this.assertOpen(what);
    const options: Record<string, unknown> = { keyAsBuffer: true, valueAsBuffer: true, values };
    if (range.gt) options.gt = asBuffer(range.gt);
    if (range.gte) options.gte = asBuffer(range.gte);
    if (range.lt) options.lt = asBuffer(range.lt);
    if (range.lte) options.lte = asBuffer(range.lte);
    if (range.reverse) options.reverse = true;
    if (range.limit !== undefined) options.limit = range.limit;
    if (range.readAheadBytes !== undefined) options.highWaterMark = range.readAheadBytes;
    const it: RocksIterator = this.db.iterator(options);
    this.openIterators.add(it);
    try {
      for (;;) {
        const entry = await new Promise<[Buffer, Buffer] | undefined>((resolve, reject) => {
          it.next((err, key, value) => {
            if (err)
              reject(new Error(`RocksDB iterator failed in ${this.dir}: ${err.message}`, { cause: err }));
            else if (key === undefined || value === undefined) resolve(undefined);
            else resolve([key, value]);
          });
        });
        if (entry === undefined) return;
        yield entry;
      }
    } finally {
      await this.endIterator(it);
    }
  }

  private endIterator(it: RocksIterator): Promise<void> {
    let ending = this.iteratorEnds.get(it);
    if (ending === undefined) {
      this.openIterators.delete(it);
      ending = call("iterator end", this.dir, (cb) => it.end(cb));
      this.iteratorEnds.set(it, ending);
    }
    return ending;
  }

  async compactRange(start: Uint8Array, end: Uint8Array): Promise<void> {
    this.assertOpen("compactRange");
    await this.track(
      call("compactRange", this.dir, (cb) => this.db.compactRange(asBuffer(start), asBuffer(end), cb)),
    );
  }

  /** RocksDB's estimate of the bytes on disk used by keys in [start, end). */
  async approximateSize(start: Uint8Array, end: Uint8Array): Promise<number> {
    this.assertOpen("approximateSize");
    return this.track(
      call<number>("approximateSize", this.dir, (cb) =>
        this.db.approximateSize(asBuffer(start), asBuffer(end), cb),
      ),
    );
  }

  /** Waits for running gets, batches and compactions, ends open iterators, then closes. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.allSettled([...this.inFlight]);
      await Promise.allSettled([...this.openIterators].map((it) => this.endIterator(it)));
      await call("close", this.dir, (cb) => this.db.close(cb));
    })();
    return this.closing;
  }
}
