import assert from "node:assert/strict";
import { access, mkdir, open, readFile, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, test } from "node:test";
import {
  CheckpointCorruptError,
  CheckpointStore,
  parseManifest,
  readManifest,
  verifyCheckpointFiles,
  writeManifest,
} from "../../src/checkpoint/checkpoint-store.js";
import {
  capturingLogger,
  eventually,
  names,
  silentLogger,
  tempRoot,
  writeFilesWithManifest,
} from "./kv-checkpoint-helpers.js";

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/** Publishes a checkpoint at `instanceId` holding one small file. */
async function publishOne(store: CheckpointStore, instanceId: number, content = `state at ${instanceId}`) {
  const tmp = await store.tempDir();
  const manifest = await writeFilesWithManifest(tmp, instanceId, { "data-00000.kvd": Buffer.from(content) });
  return store.publish(tmp, manifest);
}

/** A checkpoint folder written by hand, as a previous run of the store would have left it. */
async function folder(root: string, name: string, instanceId: number): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(dir);
  const manifest = await writeFilesWithManifest(dir, instanceId, { "data-00000.kvd": Buffer.from(name) });
  await writeManifest(dir, manifest);
  return dir;
}

describe("CheckpointStore", () => {
  test("an empty store has no checkpoint, and lock says so", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(path.join(root, "checkpoints"), silentLogger);
    try {
      assert.equal(store.instanceId(), -1);
      assert.equal(store.current(), null);
      assert.equal(store.pendingInstall(), null);
      await assert.rejects(store.lock(), /no checkpoint to lock .*none has been made or received yet/);
      const a = await store.tempDir();
      const b = await store.tempDir();
      assert.notEqual(a, b);
      assert.equal(path.dirname(a), store.dir);
      assert.match(path.basename(a), /^tmp-/);
      assert.deepEqual(await names(a), []);
    } finally {
      await store.close();
    }
  });

  test("publish writes the manifest, renames into ckpt-<n>, and deletes the previous checkpoint", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      const first = await publishOne(store, 7);
      assert.equal(first.dir, path.join(root, "ckpt-7"));
      assert.equal(store.instanceId(), 7);
      assert.deepEqual(await names(root), ["ckpt-7"]);
      assert.deepEqual(await names(first.dir), ["data-00000.kvd", "manifest.json"]);
      const manifest = await readManifest(first.dir);
      assert.equal(manifest.format, 1);
      assert.equal(manifest.instanceId, 7);
      assert.deepEqual(manifest.files, first.files);
      await verifyCheckpointFiles(first);

      const second = await publishOne(store, 12);
      assert.equal(store.current(), second);
      assert.deepEqual(await names(root), ["ckpt-12"]);
    } finally {
      await store.close();
    }
  });

  test("publish refuses an instance that is not above the current checkpoint", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      await publishOne(store, 10);
      for (const n of [10, 3]) {
        const tmp = await store.tempDir();
        const manifest = await writeFilesWithManifest(tmp, n, { "data-00000.kvd": Buffer.from("x") });
        await assert.rejects(
          store.publish(tmp, manifest),
          new RegExp(`refusing to publish checkpoint ${n}: not above the current checkpoint 10`),
        );
      }
      assert.equal(store.instanceId(), 10);
    } finally {
      await store.close();
    }
  });

  test("publish refuses files that do not match the manifest and folders it did not hand out", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      const tmp = await store.tempDir();
      const manifest = await writeFilesWithManifest(tmp, 1, { "data-00000.kvd": Buffer.from("abc") });
      await writeFile(path.join(tmp, "data-00000.kvd"), "abcd");
      await assert.rejects(store.publish(tmp, manifest), /has 4 bytes, the manifest says 3/);
      const outside = await tempRoot("ckpt-outside-");
      await assert.rejects(store.publish(outside, manifest), /is not a folder made by tempDir\(\)/);
      assert.equal(store.instanceId(), -1);
    } finally {
      await store.close();
    }
  });

  test("a locked checkpoint outlives a newer one until its last lock goes", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      await publishOne(store, 1);
      const a = await store.lock();
      const b = await store.lock();
      assert.equal(a, b);
      assert.equal(a.instanceId, 1);
      // What a transfer passes on, so that the receiver writes a complete manifest.
      const manifest = await readManifest(a.dir);
      assert.equal(a.entries, manifest.entries);
      assert.equal(a.createdAt, manifest.createdAt);
      await publishOne(store, 2);
      assert.equal(store.instanceId(), 2);
      assert.deepEqual(await names(root), ["ckpt-1", "ckpt-2"]);
      await verifyCheckpointFiles(a);
      store.unlock(a);
      // Still locked once: a background deletion would have had time to start by now.
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(await exists(a.dir));
      store.unlock(b);
      await eventually(async () => !(await exists(a.dir)));
      assert.deepEqual(await names(root), ["ckpt-2"]);
      assert.throws(() => store.unlock(a), /unlock of checkpoint 1 .* which is not locked/);

      // Unlocking the current checkpoint keeps it.
      const c = await store.lock();
      store.unlock(c);
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(await exists(c.dir));
    } finally {
      await store.close();
    }
  });

  test("open keeps the newest complete checkpoint and removes tmp, broken and older folders", async () => {
    const root = await tempRoot("ckpt-store-");
    await folder(root, "ckpt-3", 3);
    await folder(root, "ckpt-5", 5);
    // Newer but broken: no manifest, and a data file shorter than its manifest says.
    await mkdir(path.join(root, "ckpt-9"));
    await writeFile(path.join(root, "ckpt-9", "data-00000.kvd"), "partial");
    const short = await folder(root, "ckpt-8", 8);
    await truncate(path.join(short, "data-00000.kvd"), 2);
    await mkdir(path.join(root, "tmp-abc123"));
    await writeFile(path.join(root, "tmp-abc123", "data-00000.kvd"), "unfinished");
    await mkdir(path.join(root, "unrelated"));

    const { logger, lines } = capturingLogger();
    const store = await CheckpointStore.open(root, logger);
    try {
      assert.equal(store.instanceId(), 5);
      assert.equal(store.current()?.dir, path.join(root, "ckpt-5"));
      assert.deepEqual(await names(root), ["ckpt-5", "unrelated"]);
      const warnings = lines().filter((l) => l.level === 40 && /broken checkpoint folder/.test(l.msg));
      assert.equal(warnings.length, 2);
    } finally {
      await store.close();
    }
  });

  test("a manifest naming another instance than its folder is broken", async () => {
    const root = await tempRoot("ckpt-store-");
    await folder(root, "ckpt-4", 4);
    await folder(root, "ckpt-6", 5);
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      assert.equal(store.instanceId(), 4);
    } finally {
      await store.close();
    }
  });

  test("verifyCheckpointFiles detects a changed byte and a changed size", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      const tmp = await store.tempDir();
      const data = Buffer.alloc(3 << 20, 7);
      const manifest = await writeFilesWithManifest(tmp, 1, {
        "data-00000.kvd": Buffer.from("a"),
        "data-00001.kvd": data,
      });
      const state = await store.publish(tmp, manifest);
      await verifyCheckpointFiles(state);

      const file = path.join(state.dir, "data-00001.kvd");
      const fh = await open(file, "r+");
      await fh.write(Buffer.from([8]), 0, 1, 2_000_000);
      await fh.close();
      await assert.rejects(
        verifyCheckpointFiles(state),
        (err: unknown) =>
          err instanceof CheckpointCorruptError &&
          /data-00001\.kvd has SHA-256 [0-9a-f]{64}, the manifest says/.test(err.message),
      );
      await truncate(file, 10);
      await assert.rejects(
        verifyCheckpointFiles(state),
        /data-00001\.kvd has 10 bytes, the manifest says 3145728/,
      );
    } finally {
      await store.close();
    }
  });

  test("manifests that could mislead are refused with the reason", async () => {
    const good = {
      format: 1,
      instanceId: 4,
      createdAt: "2024-05-01T10:00:00.000Z",
      entries: 2,
      files: [{ path: "data-00000.kvd", size: 8, sha256: "a".repeat(64) }],
    };
    assert.deepEqual(parseManifest(good, "m"), good);
    const bad: [unknown, RegExp][] = [
      [{ ...good, format: 2 }, /unsupported format 2/],
      [{ ...good, instanceId: -1 }, /instanceId -1/],
      [{ ...good, instanceId: 1.5 }, /instanceId 1.5/],
      [{ ...good, createdAt: "yesterday" }, /createdAt/],
      [{ ...good, files: [] }, /files is not a non-empty array/],
      [{ ...good, files: [{ ...good.files[0], path: "../etc/passwd" }] }, /not a plain file name/],
      [{ ...good, files: [{ ...good.files[0], path: "manifest.json" }] }, /not a plain file name/],
      [{ ...good, files: [good.files[0], good.files[0]] }, /listed twice/],
      [{ ...good, files: [{ ...good.files[0], sha256: "XYZ" }] }, /sha256/],
      [{ ...good, files: [{ ...good.files[0], size: "8" }] }, /size "8"/],
      [[good], /not a JSON object/],
    ];
    for (const [json, why] of bad) assert.throws(() => parseManifest(json, "m"), why);

    const dir = await tempRoot("ckpt-manifest-");
    await assert.rejects(readManifest(dir), /cannot read .*manifest\.json/);
    await writeFile(path.join(dir, "manifest.json"), "{not json");
    await assert.rejects(readManifest(dir), /manifest\.json is not valid JSON/);
    await writeManifest(dir, good as never);
    assert.deepEqual(await readManifest(dir), good);
    assert.deepEqual(JSON.parse(await readFile(path.join(dir, "manifest.json"), "utf8")), good);
  });

  test("install parks a received checkpoint as install-<n> until completeInstall", async () => {
    const root = await tempRoot("ckpt-store-");
    let store = await CheckpointStore.open(root, silentLogger);
    await publishOne(store, 10);

    const stale = await store.tempDir();
    await writeManifest(
      stale,
      await writeFilesWithManifest(stale, 10, { "data-00000.kvd": Buffer.from("x") }),
    );
    await assert.rejects(
      store.install(stale, 10),
      /refusing to install checkpoint 10: not above the local checkpoint 10/,
    );

    const noManifest = await store.tempDir();
    await writeFilesWithManifest(noManifest, 20, { "data-00000.kvd": Buffer.from("x") });
    await assert.rejects(store.install(noManifest, 20), /cannot read .*manifest\.json/);

    const wrongInstance = await store.tempDir();
    await writeManifest(
      wrongInstance,
      await writeFilesWithManifest(wrongInstance, 21, { "data-00000.kvd": Buffer.from("x") }),
    );
    await assert.rejects(store.install(wrongInstance, 20), /the manifest says instance 21/);

    const received = await store.tempDir();
    await writeManifest(
      received,
      await writeFilesWithManifest(received, 20, { "data-00000.kvd": Buffer.from("peer") }),
    );
    const pending = await store.install(received, 20);
    assert.equal(pending.dir, path.join(root, "install-20"));
    assert.equal(store.pendingInstall(), pending);
    assert.equal(store.instanceId(), 10, "the local checkpoint stays until the install completes");

    await assert.rejects(
      publishOne(store, 30),
      /refusing to publish checkpoint 30: .*instance 20\) waits to be installed/,
    );
    const another = await store.tempDir();
    await writeManifest(
      another,
      await writeFilesWithManifest(another, 25, { "data-00000.kvd": Buffer.from("y") }),
    );
    await assert.rejects(store.install(another, 25), /checkpoint 20 already waits to be installed/);
    await store.close();

    // A restart finds it; the leftovers of the refused attempts are gone.
    store = await CheckpointStore.open(root, silentLogger);
    try {
      assert.equal(store.pendingInstall()?.instanceId, 20);
      assert.equal(store.instanceId(), 10);
      assert.deepEqual(await names(root), ["ckpt-10", "install-20"]);
      await assert.rejects(
        store.completeInstall(19),
        /no checkpoint 19 waits to be installed \(pending: 20\)/,
      );
      const installed = await store.completeInstall(20);
      assert.equal(installed.dir, path.join(root, "ckpt-20"));
      assert.equal(store.instanceId(), 20);
      assert.equal(store.pendingInstall(), null);
      assert.deepEqual(await names(root), ["ckpt-20"]);
      await verifyCheckpointFiles(installed);
    } finally {
      await store.close();
    }
  });

  test("of several install folders the newest complete one is pending", async () => {
    const root = await tempRoot("ckpt-store-");
    await folder(root, "install-4", 4);
    await folder(root, "install-6", 6);
    await mkdir(path.join(root, "install-8"));
    const store = await CheckpointStore.open(root, silentLogger);
    try {
      assert.equal(store.pendingInstall()?.instanceId, 6);
      assert.deepEqual(await names(root), ["install-6"]);
    } finally {
      await store.close();
    }
  });

  test("a closed store refuses changes", async () => {
    const root = await tempRoot("ckpt-store-");
    const store = await CheckpointStore.open(root, silentLogger);
    await store.close();
    await store.close();
    await assert.rejects(store.tempDir(), /is closed \(tempDir\)/);
    await assert.rejects(store.lock(), /is closed \(lock\)/);
  });
});
