import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { encodeKvCommand } from "../../src/sm/kv-command.js";
import { KvStateMachine } from "../../src/sm/kv-state-machine.js";
import { CorruptRecordError } from "../../src/storage/framing.js";
import { RocksStore } from "../../src/storage/rocks.js";

const tempRoots: string[] = [];
after(async () => {
  for (const dir of tempRoots) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kv-sm-test-"));
  tempRoots.push(dir);
  return dir;
}

const put = (key: string, value: string) => encodeKvCommand({ op: "put", key, value: Buffer.from(value) });
const del = (key: string) => encodeKvCommand({ op: "delete", key });

async function text(sm: KvStateMachine, key: string): Promise<string | undefined> {
  const v = await sm.get(key);
  return v === undefined ? undefined : Buffer.from(v).toString();
}

describe("KvStateMachine", () => {
  test("executes puts and deletes in order and reads them back", async () => {
    const sm = await KvStateMachine.open(await tempDir());
    try {
      assert.equal(sm.lastExecutedInstance(), -1);
      assert.equal(await sm.get("a"), undefined);
      await sm.execute(0, [put("a", "1"), put("b", "2"), put("ключ", "3")]);
      await sm.execute(1, []);
      await sm.execute(2, [put("a", "4"), del("b"), del("never-there")]);
      // Within one instance the commands apply in their order.
      await sm.execute(3, [put("c", "x"), del("c"), put("d", "y"), put("d", "z")]);
      assert.equal(sm.lastExecutedInstance(), 3);
      assert.equal(await text(sm, "a"), "4");
      assert.equal(await sm.get("b"), undefined);
      assert.equal(await text(sm, "ключ"), "3");
      assert.equal(await sm.get("c"), undefined);
      assert.equal(await text(sm, "d"), "z");
    } finally {
      await sm.close();
    }
  });

  test("an empty value is stored and distinct from an absent key", async () => {
    const sm = await KvStateMachine.open(await tempDir());
    try {
      await sm.execute(0, [put("empty", "")]);
      assert.deepEqual(await sm.get("empty"), new Uint8Array(0));
    } finally {
      await sm.close();
    }
  });

  test("refuses an instance that is not exactly the next one", async () => {
    const sm = await KvStateMachine.open(await tempDir());
    try {
      await assert.rejects(sm.execute(1, [put("a", "1")]), /instance 1 executed out of order, expected 0/);
      await sm.execute(0, [put("a", "1")]);
      await assert.rejects(sm.execute(0, [put("a", "2")]), /instance 0 executed out of order, expected 1/);
      await assert.rejects(sm.execute(5, []), /expected 1/);
      assert.equal(sm.lastExecutedInstance(), 0);
      assert.equal(await text(sm, "a"), "1");
    } finally {
      await sm.close();
    }
  });

  test("calls issued without awaiting apply in order", async () => {
    const sm = await KvStateMachine.open(await tempDir());
    try {
      await Promise.all(Array.from({ length: 20 }, (_, i) => sm.execute(i, [put("k", String(i))])));
      assert.equal(sm.lastExecutedInstance(), 19);
      assert.equal(await text(sm, "k"), "19");
    } finally {
      await sm.close();
    }
  });

  test("a restart resumes after the last executed instance with its data", async () => {
    const dir = await tempDir();
    const first = await KvStateMachine.open(dir);
    await first.execute(0, [put("a", "1")]);
    await first.execute(1, [put("b", "2")]);
    await first.close();

    const second = await KvStateMachine.open(dir);
    try {
      assert.equal(second.lastExecutedInstance(), 1);
      assert.equal(await text(second, "a"), "1");
      assert.equal(await text(second, "b"), "2");
      await assert.rejects(second.execute(0, [put("a", "again")]), /expected 2/);
      await second.execute(2, [del("a")]);
      assert.equal(await second.get("a"), undefined);
    } finally {
      await second.close();
    }
  });

  test("a malformed command is skipped on every member alike and the instance still counts", async () => {
    const garbage = [new Uint8Array([]), new Uint8Array([9, 0, 0, 0, 1, 0x41]), new Uint8Array([1, 0xff])];
    const states: { last: number; a: string | undefined; b: string | undefined }[] = [];
    for (let member = 0; member < 2; member++) {
      const skipped: [number, number][] = [];
      const sm = await KvStateMachine.open(await tempDir(), {
        onMalformedCommand: (instance, index, error) => {
          assert.ok(error instanceof Error);
          skipped.push([instance, index]);
        },
      });
      try {
        await sm.execute(0, [put("a", "1"), ...garbage, put("b", "2")]);
        await sm.execute(1, [garbage[0]!]);
        assert.deepEqual(skipped, [
          [0, 1],
          [0, 2],
          [0, 3],
          [1, 0],
        ]);
        states.push({ last: sm.lastExecutedInstance(), a: await text(sm, "a"), b: await text(sm, "b") });
      } finally {
        await sm.close();
      }
    }
    assert.deepEqual(states[0], { last: 1, a: "1", b: "2" });
    assert.deepEqual(states[1], states[0]);
  });

  test("a damaged stored value is reported, not returned", async () => {
    const dir = await tempDir();
    const sm = await KvStateMachine.open(dir);
    await sm.execute(0, [put("a", "hello")]);
    await sm.close();

    const store = await RocksStore.open(dir);
    const key = Buffer.from("da");
    const damaged = Buffer.from((await store.get(key))!);
    damaged[damaged.length - 1] = damaged[damaged.length - 1]! ^ 0x20;
    await store.batch([{ type: "put", key, value: damaged }], { sync: true });
    await store.close();

    const reopened = await KvStateMachine.open(dir);
    try {
      await assert.rejects(
        reopened.get("a"),
        (err: unknown) => err instanceof CorruptRecordError && /"a"/.test(err.message),
      );
    } finally {
      await reopened.close();
    }
  });

  test("without a checkpoint store there is no checkpoint and none can be made", async () => {
    const sm = await KvStateMachine.open(await tempDir());
    try {
      assert.equal(sm.getCheckpointInstanceId(), -1);
      assert.equal(sm.getCheckpointState(), null);
      await sm.executeForCheckpoint(0, [put("a", "1")]);
      assert.equal(sm.lastExecutedInstance(), -1);
      const unavailable = /needs a checkpoint store, and none was configured/;
      await assert.rejects(sm.lockCheckpointState(), unavailable);
      await assert.rejects(sm.makeCheckpoint(), unavailable);
      await assert.rejects(
        sm.loadCheckpointState({ instanceId: 0, dir: "/nonexistent", files: [] }),
        unavailable,
      );
    } finally {
      await sm.close();
    }
  });

  test("close lets accepted calls finish and refuses later ones", async () => {
    const dir = await tempDir();
    const sm = await KvStateMachine.open(dir);
    const pending = sm.execute(0, [put("a", "1")]);
    await sm.close();
    await pending;
    await assert.rejects(sm.execute(1, []), /closed/);
    await assert.rejects(sm.get("a"), /closed/);
    const reopened = await KvStateMachine.open(dir);
    try {
      assert.equal(reopened.lastExecutedInstance(), 0);
    } finally {
      await reopened.close();
    }
  });
});
