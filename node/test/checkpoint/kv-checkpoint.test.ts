import assert from "node:assert/strict";
import { open, readdir, stat } from "node:fs/promises";
import path from "node:path";
import { describe, test } from "node:test";
import {
  CheckpointStore,
  readManifest,
  verifyCheckpointFiles,
} from "../../src/checkpoint/checkpoint-store.js";
import {
  DEFAULT_MAX_FILE_BYTES,
  dataFileName,
  KVD_MAGIC,
  KvDumpCorruptError,
  KvDumpWriter,
  readKvDump,
} from "../../src/checkpoint/kv-dump.js";
import { KvStateMachine } from "../../src/sm/kv-state-machine.js";
import type { CheckpointState } from "../../src/sm/state-machine.js";
import { decodeInstance, frame, unframe } from "../../src/storage/framing.js";
import {
  applyToModel,
  del,
  eventually,
  names,
  put,
  silentLogger,
  tempRoot,
} from "./kv-checkpoint-helpers.js";

async function openNode(root: string, checkpointFileBytes?: number) {
  const store = await CheckpointStore.open(path.join(root, "checkpoints"), silentLogger);
  const sm = await KvStateMachine.open(path.join(root, "sm"), {
    checkpoints: store,
    ...(checkpointFileBytes !== undefined ? { checkpointFileBytes } : {}),
  });
  return { store, sm };
}

/** The dump decoded: user key -> value, and the instance from the marker (which must come last). */
async function decodeDump(
  state: CheckpointState,
): Promise<{ data: Map<string, Buffer>; instance: number; entries: number }> {
  const data = new Map<string, Buffer>();
  let instance: number | undefined;
  let entries = 0;
  for await (const [key, value] of readKvDump(state)) {
    entries++;
    assert.equal(instance, undefined, "the marker is the last entry");
    if (key.equals(Buffer.from("m"))) {
      instance = decodeInstance(unframe(value, "marker"), "marker");
    } else {
      assert.equal(key[0], "d".charCodeAt(0));
      data.set(key.subarray(1).toString("utf8"), Buffer.from(unframe(value, "value")));
    }
  }
  assert.notEqual(instance, undefined, "the dump has the marker");
  return { data, instance: instance!, entries };
}

/** Deterministic commands for instance i over a small key space, with deletes and empty values. */
function commandsFor(i: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let j = 0; j < 4; j++) {
    const k = `key-${(i * 7 + j * 13) % 300}`;
    if ((i + j) % 11 === 0) out.push(del(k));
    else out.push(put(k, (i + j) % 17 === 0 ? "" : `v${i}.${j}-${"x".repeat((i * j) % 200)}`));
  }
  return out;
}

function modelAt(instance: number): Map<string, Buffer> {
  const model = new Map<string, Buffer>();
  for (let i = 0; i <= instance; i++) applyToModel(model, commandsFor(i));
  return model;
}

describe("KV checkpoints", () => {
  test("a checkpoint made while writes go on is exactly the state at its instance", async () => {
    const root = await tempRoot("kv-ckpt-");
    // Small files, so the dump is split.
    const { store, sm } = await openNode(root, 16 * 1024);
    try {
      assert.equal(await sm.makeCheckpoint(), null, "an empty database has nothing to checkpoint");
      const made = [];
      let running: ReturnType<KvStateMachine["makeCheckpoint"]> | null = null;
      for (let i = 0; i < 3000; i++) {
        await sm.execute(i, commandsFor(i));
        if (i % 700 === 300) running = sm.makeCheckpoint();
        if (running !== null && i % 700 === 600) {
          made.push(await running);
          running = null;
        }
      }
      assert.equal(made.length, 4);
      let previous = -1;
      for (const r of made) {
        assert.ok(r !== null);
        assert.ok(r.instanceId > previous && r.instanceId < 3000, `instance ${r.instanceId}`);
        assert.ok(r.pauseMs >= 0 && r.pauseMs <= r.durationMs);
        previous = r.instanceId;
      }
      const last = made.at(-1)!;
      const state = store.current()!;
      assert.equal(state.instanceId, last.instanceId);
      assert.equal(sm.getCheckpointInstanceId(), last.instanceId);
      assert.deepEqual(sm.getCheckpointState(), state);

      const manifest = await readManifest(state.dir);
      assert.equal(manifest.entries, last.entries);
      assert.ok(manifest.files.length > 1, "split into several files");
      manifest.files.forEach((f, i) => {
        assert.equal(f.path, dataFileName(i));
        assert.ok(f.size <= 16 * 1024);
      });
      assert.equal(
        manifest.files.reduce((n, f) => n + f.size, 0),
        last.bytes,
      );
      await verifyCheckpointFiles(state);

      const dump = await decodeDump(state);
      assert.equal(dump.instance, last.instanceId);
      assert.equal(dump.entries, manifest.entries);
      assert.deepEqual(dump.data, modelAt(last.instanceId));
      // Only the newest checkpoint is kept.
      assert.deepEqual(await names(store.dir), [`ckpt-${last.instanceId}`]);
    } finally {
      await sm.close();
      await store.close();
    }
  });

  test("no new checkpoint without new instances; a later one supersedes the earlier", async () => {
    const root = await tempRoot("kv-ckpt-");
    const { store, sm } = await openNode(root);
    try {
      for (let i = 0; i < 50; i++) await sm.execute(i, commandsFor(i));
      const first = await sm.makeCheckpoint();
      assert.equal(first?.instanceId, 49);
      assert.equal(await sm.makeCheckpoint(), null);
      await sm.execute(50, commandsFor(50));
      const second = await sm.makeCheckpoint();
      assert.equal(second?.instanceId, 50);
      assert.deepEqual(await names(store.dir), ["ckpt-50"]);
      assert.deepEqual((await decodeDump(store.current()!)).data, modelAt(50));
    } finally {
      await sm.close();
      await store.close();
    }
  });

  test("a paused maker makes none until continued; concurrent calls share one run", async () => {
    const root = await tempRoot("kv-ckpt-");
    const { store, sm } = await openNode(root);
    try {
      for (let i = 0; i < 20; i++) await sm.execute(i, commandsFor(i));
      sm.pauseCheckpointMaker();
      assert.equal(sm.isCheckpointMakerPaused(), true);
      assert.equal(await sm.makeCheckpoint(), null);
      assert.equal(sm.getCheckpointInstanceId(), -1);
      assert.deepEqual(await names(store.dir), []);
      sm.continueCheckpointMaker();
      const a = sm.makeCheckpoint();
      const b = sm.makeCheckpoint();
      assert.equal(a, b);
      assert.equal((await a)?.instanceId, 19);
    } finally {
      await sm.close();
      await store.close();
    }
  });

  test("lock, get and unlock go through the store", async () => {
    const root = await tempRoot("kv-ckpt-");
    const { store, sm } = await openNode(root);
    try {
      assert.equal(sm.getCheckpointState(), null);
      await assert.rejects(sm.lockCheckpointState(), /no checkpoint to lock/);
      await sm.execute(0, [put("a", "1")]);
      await sm.makeCheckpoint();
      const locked = await sm.lockCheckpointState();
      assert.equal(locked.instanceId, 0);
      await sm.execute(1, [put("a", "2")]);
      await sm.makeCheckpoint();
      assert.equal(sm.getCheckpointInstanceId(), 1);
      await verifyCheckpointFiles(locked);
      sm.unlockCheckpointState(locked);
      await eventually(async () => (await names(store.dir)).length === 1);
      assert.deepEqual(await names(store.dir), ["ckpt-1"]);
    } finally {
      await sm.close();
      await store.close();
    }
  });

  test("close stops a running maker and leaves no temporary folder", async () => {
    const root = await tempRoot("kv-ckpt-");
    const { store, sm } = await openNode(root);
    try {
      const value = "v".repeat(200);
      for (let i = 0; i < 200; i++) {
        await sm.execute(
          i,
          Array.from({ length: 100 }, (_, j) => put(`k${i}.${j}`, value)),
        );
      }
      // Closed at once: the maker stops at its first step.
      const early = sm.makeCheckpoint();
      await sm.close();
      assert.equal(await early, null);
      assert.deepEqual(await names(store.dir), []);
    } finally {
      await sm.close();
      await store.close();
    }

    // Closed while the dump is being written: either it stops, or it finished just before.
    const reopened = await openNode(root);
    try {
      const running = reopened.sm.makeCheckpoint();
      await eventually(async () => {
        const tmp = (await readdir(reopened.store.dir)).find((n) => n.startsWith("tmp-"));
        return tmp !== undefined || reopened.store.instanceId() >= 0;
      });
      await reopened.sm.close();
      const result = await running;
      const left = await names(reopened.store.dir);
      assert.deepEqual(left, result === null ? [] : [`ckpt-${result.instanceId}`]);
      await assert.rejects(reopened.sm.makeCheckpoint(), /closed/);
    } finally {
      await reopened.sm.close();
      await reopened.store.close();
    }
  });
});

describe("KV dump files", () => {
  async function dumpOf(records: [Buffer, Buffer][], maxFileBytes?: number) {
    const dir = await tempRoot("kv-dump-");
    const writer = await KvDumpWriter.create(dir, maxFileBytes !== undefined ? { maxFileBytes } : {});
    for (const [k, v] of records) {
      const wait = writer.add(k, v);
      if (wait !== undefined) await wait;
    }
    const summary = await writer.finish();
    return { dir, ...summary };
  }

  async function readAll(state: CheckpointState): Promise<[Buffer, Buffer][]> {
    const out: [Buffer, Buffer][] = [];
    for await (const [k, v] of readKvDump(state)) out.push([Buffer.from(k), Buffer.from(v)]);
    return out;
  }

  test("records round-trip across buffer and file boundaries, large records included", async () => {
    const records: [Buffer, Buffer][] = [];
    for (let i = 0; i < 3000; i++) records.push([Buffer.from(`d${i}`), Buffer.alloc(i % 700, i & 0xff)]);
    records.push([Buffer.from("dbig"), Buffer.alloc(3 << 20, 9)]);
    records.push([Buffer.alloc(0), Buffer.alloc(0)]);
    records.push([Buffer.from("m"), frame(Buffer.from([0, 0, 0, 0, 0, 0, 0, 5]))]);
    const maxFileBytes = 256 * 1024;
    const d = await dumpOf(records, maxFileBytes);
    assert.equal(d.entries, records.length);
    assert.ok(d.files.length > 4);
    for (const f of d.files) {
      const size = (await stat(path.join(d.dir, f.path))).size;
      assert.equal(size, f.size);
      // Only the file holding the one record larger than the limit may exceed it.
      assert.ok(
        f.size <= maxFileBytes || f.size === KVD_MAGIC.length + 8 + 4 + (3 << 20),
        `${f.path}: ${f.size}`,
      );
    }
    const state = { instanceId: 5, dir: d.dir, files: d.files };
    await verifyCheckpointFiles(state);
    assert.deepEqual(await readAll(state), records);
    assert.equal(DEFAULT_MAX_FILE_BYTES, 256 * 1024 * 1024);
  });

  test("the reader names a bad magic, a record past the end, and a hash mismatch", async () => {
    const records: [Buffer, Buffer][] = [
      [Buffer.from("da"), Buffer.from("hello")],
      [Buffer.from("db"), Buffer.from("world")],
    ];
    const corrupt = async (
      change: (fh: Awaited<ReturnType<typeof open>>) => Promise<unknown>,
      why: RegExp,
    ) => {
      const d = await dumpOf(records);
      const fh = await open(path.join(d.dir, d.files[0]!.path), "r+");
      await change(fh);
      await fh.close();
      await assert.rejects(
        readAll({ instanceId: 0, dir: d.dir, files: d.files }),
        (err: unknown) => err instanceof KvDumpCorruptError && why.test(err.message),
      );
    };
    await corrupt((fh) => fh.write(Buffer.from("X"), 0, 1, 0), /does not start with the magic PXKVD001/);
    // The second record's value length, made larger than what is left of the file.
    await corrupt(
      (fh) => fh.write(Buffer.from([0, 0, 1, 0]), 0, 4, 8 + 15 + 4),
      /the record at offset 23 declares 266 bytes, past the end of the file/,
    );
    await corrupt(
      (fh) => fh.write(Buffer.from("W"), 0, 1, 8 + 15 + 10),
      /has SHA-256 [0-9a-f]{64}, the manifest says/,
    );
    await corrupt((fh) => fh.truncate(30), /has 30 bytes, the manifest says 38/);
    const d = await dumpOf(records);
    await assert.rejects(
      readAll({ instanceId: 0, dir: d.dir, files: [{ ...d.files[0]!, size: 38 - 3 }] }),
      /has 38 bytes, the manifest says 35/,
    );
  });
});
