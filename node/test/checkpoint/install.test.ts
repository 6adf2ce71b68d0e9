import assert from "node:assert/strict";
import { copyFile, mkdir, open, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { before, describe, test } from "node:test";
import { CheckpointStore, MANIFEST_FILE } from "../../src/checkpoint/checkpoint-store.js";
import {
  applyPendingInstall,
  rebuildStateDatabase,
  swapStateDatabase,
} from "../../src/checkpoint/install.js";
import { KvStateMachine } from "../../src/sm/kv-state-machine.js";
import type { CheckpointState } from "../../src/sm/state-machine.js";
import { RocksStore } from "../../src/storage/rocks.js";
import { applyToModel, del, names, put, silentLogger, tempRoot } from "./kv-checkpoint-helpers.js";

/** Every raw pair of a RocksDB database, as hex, in key order. */
async function rawPairs(dir: string): Promise<string[]> {
  const db = await RocksStore.open(dir);
  try {
    const out: string[] = [];
    for await (const [k, v] of db.iterate()) out.push(`${k.toString("hex")}=${v.toString("hex")}`);
    return out;
  } finally {
    await db.close();
  }
}

function commandsFor(i: number): Uint8Array[] {
  return [
    put(`k${i % 97}`, `value ${i} ${"y".repeat(i % 300)}`),
    put(`ключ-${i % 13}`, Buffer.alloc(i % 5, i & 0xff)),
    ...(i % 4 === 0 ? [del(`k${(i * 3) % 97}`)] : []),
  ];
}

interface Source {
  readonly checkpoint: CheckpointState;
  readonly model: Map<string, Buffer>;
  /** The raw database of the source member at the checkpoint's instance. */
  readonly pairs: string[];
}

/** Member A: executes instances 0..n-1 and makes a checkpoint at n-1 (small files, so several). */
async function makeSource(n: number): Promise<Source> {
  const root = await tempRoot("install-src-");
  const store = await CheckpointStore.open(path.join(root, "checkpoints"), silentLogger);
  const sm = await KvStateMachine.open(path.join(root, "sm"), {
    checkpoints: store,
    checkpointFileBytes: 8 * 1024,
  });
  const model = new Map<string, Buffer>();
  for (let i = 0; i < n; i++) {
    await sm.execute(i, commandsFor(i));
    applyToModel(model, commandsFor(i));
  }
  const made = await sm.makeCheckpoint();
  assert.equal(made?.instanceId, n - 1);
  await sm.close();
  await store.close();
  const checkpoint = store.current()!;
  return { checkpoint, model, pairs: await rawPairs(path.join(root, "sm")) };
}

/**
 * Member B: an older state of its own (instances 0..4 of different data), then receives the
 * source's checkpoint the way a transfer receiver does (files and manifest into a tmp folder,
 * then loadCheckpointState). Returns its data dir with the install pending.
 */
async function receiver(source: Source): Promise<string> {
  const dataDir = await tempRoot("install-dst-");
  const store = await CheckpointStore.open(path.join(dataDir, "checkpoints"), silentLogger);
  const sm = await KvStateMachine.open(path.join(dataDir, "sm"), { checkpoints: store });
  for (let i = 0; i < 5; i++) await sm.execute(i, [put(`old-${i}`, "stale"), put("k1", "old")]);
  await sm.makeCheckpoint();
  const tmp = await store.tempDir();
  for (const f of [...source.checkpoint.files.map((f) => f.path), MANIFEST_FILE])
    await copyFile(path.join(source.checkpoint.dir, f), path.join(tmp, f));
  await sm.loadCheckpointState({ ...source.checkpoint, dir: tmp });
  // Committed, but the live state is untouched until the next start.
  assert.equal(sm.lastExecutedInstance(), 4);
  assert.equal(Buffer.from((await sm.get("k1"))!).toString(), "old");
  await sm.close();
  await store.close();
  return dataDir;
}

/** A start: open the store and apply the pending install; returns what it returned and what beforeComplete saw. */
async function start(dataDir: string, beforeComplete?: (n: number) => Promise<void>) {
  const store = await CheckpointStore.open(path.join(dataDir, "checkpoints"), silentLogger);
  const seen: number[] = [];
  try {
    const installed = await applyPendingInstall({
      dataDir,
      store,
      logger: silentLogger,
      beforeComplete: async (n) => {
        seen.push(n);
        await beforeComplete?.(n);
      },
    });
    return { installed, seen };
  } finally {
    await store.close();
  }
}

/** The state after a complete install: the source's data and instance, the checkpoint local, no leftovers. */
async function assertInstalled(dataDir: string, source: Source, thenExecute = true): Promise<void> {
  const s = source.checkpoint.instanceId;
  assert.deepEqual(await names(dataDir), ["checkpoints", "sm"]);
  assert.deepEqual(await names(path.join(dataDir, "checkpoints")), [`ckpt-${s}`]);
  assert.deepEqual(await rawPairs(path.join(dataDir, "sm")), source.pairs);
  const store = await CheckpointStore.open(path.join(dataDir, "checkpoints"), silentLogger);
  const sm = await KvStateMachine.open(path.join(dataDir, "sm"), { checkpoints: store });
  try {
    assert.equal(sm.lastExecutedInstance(), s);
    assert.equal(sm.getCheckpointInstanceId(), s);
    assert.equal(store.pendingInstall(), null);
    for (const [k, v] of source.model) assert.deepEqual(Buffer.from((await sm.get(k))!), v, k);
    assert.equal(await sm.get("old-0"), undefined);
    if (thenExecute) {
      // It goes on from the checkpoint.
      await sm.execute(s + 1, [put("after", "install")]);
      assert.equal(Buffer.from((await sm.get("after"))!).toString(), "install");
    }
  } finally {
    await sm.close();
    await store.close();
  }
}

describe("installing a received checkpoint", () => {
  let source: Source;
  before(async () => {
    source = await makeSource(400);
  });

  test("the next start rebuilds the state from it and makes it the local checkpoint", async () => {
    const dataDir = await receiver(source);
    assert.deepEqual(await names(path.join(dataDir, "checkpoints")), [
      "ckpt-4",
      `install-${source.checkpoint.instanceId}`,
    ]);
    const { installed, seen } = await start(dataDir);
    assert.equal(installed, source.checkpoint.instanceId);
    assert.deepEqual(seen, [installed]);
    await assertInstalled(dataDir, source, false);
    // Nothing pending any more: a later start does nothing.
    assert.deepEqual(await start(dataDir), { installed: null, seen: [] });
    await assertInstalled(dataDir, source);
  });

  test("a crash after any step is repaired by the next start", async () => {
    const s = source.checkpoint.instanceId;
    const pendingDir = (dataDir: string) => ({
      ...source.checkpoint,
      dir: path.join(dataDir, "checkpoints", `install-${s}`),
    });
    const crashes: [string, (dataDir: string) => Promise<void>][] = [
      [
        "a leftover sm.new from an older run",
        async (d) => {
          await mkdir(path.join(d, "sm.new"));
          await writeFile(path.join(d, "sm.new", "CURRENT"), "garbage");
        },
      ],
      [
        "after the rebuild",
        async (d) => {
          await rebuildStateDatabase(pendingDir(d), path.join(d, "sm.new"));
        },
      ],
      [
        "after moving sm aside",
        async (d) => {
          await rebuildStateDatabase(pendingDir(d), path.join(d, "sm.new"));
          await rename(path.join(d, "sm"), path.join(d, "sm.old"));
        },
      ],
      [
        "after the swap, before removing sm.old",
        async (d) => {
          await rebuildStateDatabase(pendingDir(d), path.join(d, "sm.new"));
          await rename(path.join(d, "sm"), path.join(d, "sm.old"));
          await rename(path.join(d, "sm.new"), path.join(d, "sm"));
        },
      ],
      [
        "after the swap",
        async (d) => {
          await rebuildStateDatabase(pendingDir(d), path.join(d, "sm.new"));
          await swapStateDatabase(d);
        },
      ],
      [
        "in beforeComplete",
        async (d) => {
          await assert.rejects(
            start(d, async () => {
              throw new Error("killed while deleting the log");
            }),
            /killed while deleting the log/,
          );
        },
      ],
    ];
    for (const [what, crash] of crashes) {
      const dataDir = await receiver(source);
      await crash(dataDir);
      const { installed, seen } = await start(dataDir);
      assert.equal(installed, s, what);
      assert.deepEqual(seen, [s], what);
      await assertInstalled(dataDir, source);
    }
  });

  test("a damaged dump is refused and the old state stays", async () => {
    const dataDir = await receiver(source);
    const pending = path.join(dataDir, "checkpoints", `install-${source.checkpoint.instanceId}`);
    const last = source.checkpoint.files.at(-1)!;
    const fh = await open(path.join(pending, last.path), "r+");
    await fh.write(Buffer.from([0xee]), 0, 1, last.size - 3);
    await fh.close();
    const called: number[] = [];
    await assert.rejects(
      start(dataDir, async (n) => void called.push(n)),
      new RegExp(`${last.path.replace(".", "\\.")}: has SHA-256 [0-9a-f]{64}, the manifest says`),
    );
    assert.deepEqual(called, []);
    const sm = await KvStateMachine.open(path.join(dataDir, "sm"));
    try {
      assert.equal(sm.lastExecutedInstance(), 4);
      assert.equal(Buffer.from((await sm.get("k1"))!).toString(), "old");
    } finally {
      await sm.close();
    }
  });
});
