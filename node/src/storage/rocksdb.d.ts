// The part of the npm `rocksdb` 5.x (leveldown-style) API that rocks.ts uses. The package ships no
// typings; nothing but rocks.ts may import it.
declare module "rocksdb" {
  export type Callback<T = void> = (err: Error | null | undefined, result?: T) => void;

  export interface RangeOptions {
    gt?: Buffer;
    gte?: Buffer;
    lt?: Buffer;
    lte?: Buffer;
    reverse?: boolean;
    limit?: number;
  }

  export interface IteratorOptions extends RangeOptions {
    keys?: boolean;
    values?: boolean;
    keyAsBuffer?: boolean;
    valueAsBuffer?: boolean;
    fillCache?: boolean;
  }

  export interface RocksIterator {
    next(callback: (err: Error | null | undefined, key?: Buffer, value?: Buffer) => void): void;
    end(callback: (err?: Error | null) => void): void;
  }

  export interface BatchOperation {
    type: "put" | "del";
    key: Buffer;
    value?: Buffer;
  }

  export interface RocksDB {
    open(options: { createIfMissing?: boolean; errorIfExists?: boolean }, callback: Callback): void;
    close(callback: Callback): void;
    getMany(
      keys: Buffer[],
      options: { asBuffer?: boolean; fillCache?: boolean },
      callback: Callback<(Buffer | undefined)[]>,
    ): void;
    batch(operations: BatchOperation[], options: { sync?: boolean }, callback: Callback): void;
    iterator(options: IteratorOptions): RocksIterator;
    compactRange(start: Buffer, end: Buffer, callback: Callback): void;
    approximateSize(start: Buffer, end: Buffer, callback: Callback<number>): void;
  }

  function rocksdb(location: string): RocksDB;
  export default rocksdb;
}
