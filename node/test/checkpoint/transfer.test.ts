import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import WebSocket, { WebSocketServer } from "ws";
import {
  CHECKPOINT_PATH,
  CheckpointSender,
  type CheckpointSource,
  receiveCheckpoint,
  type TransferableCheckpoint,
  TransferError,
  type TransferProgress,
} from "../../src/checkpoint/transfer.js";
import type { CheckpointFile, CheckpointState } from "../../src/sm/state-machine.js";

const TOKEN = "s3cret";
const CHUNK = 64 * 1024;
const logger = pino({ level: "silent" });

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A checkpoint folder holding these files, and its state as a store would report it. */
async function makeCheckpoint(files: { path: string; size: number }[]): Promise<TransferableCheckpoint> {
  const dir = await tempDir("ckpt-src-");
  const listed: CheckpointFile[] = [];
  for (const f of files) {
    const data = randomBytes(f.size);
    await writeFile(join(dir, f.path), data);
    listed.push({ path: f.path, size: f.size, sha256: createHash("sha256").update(data).digest("hex") });
  }
  return { instanceId: 4242, dir, files: listed, entries: 77, createdAt: "2024-05-01T10:00:00.000Z" };
}

/** Counts locks and unlocks, and checks that only the locked state is ever unlocked. */
class CountingSource implements CheckpointSource {
  locks = 0;
  unlocks = 0;
  constructor(private readonly state: TransferableCheckpoint | null) {}

  async lock(): Promise<TransferableCheckpoint> {
    if (this.state === null) throw new Error("no checkpoint has been made yet");
    this.locks++;
    return this.state;
  }

  unlock(state: CheckpointState): void {
    assert.equal(state, this.state);
    this.unlocks++;
  }
}

interface Peer {
  readonly address: string;
  /** The sender's side of every connection served so far. */
  readonly sockets: WebSocket[];
}

/**
 * A listener like the peer port: checks the path, the token and the member header, then hands
 * the connection to `onConnection` (normally sender.serve).
 */
async function listen(onConnection: (ws: WebSocket, member: string) => void): Promise<Peer> {
  const sockets: WebSocket[] = [];
  const raw = new Set<Socket>();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
  const server: Server = createServer((_req, res) => res.writeHead(426).end());
  server.on("connection", (s) => {
    raw.add(s);
    s.once("close", () => raw.delete(s));
  });
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const refuse = (status: number, text: string): void => {
      socket.end(
        `HTTP/1.1 ${status} Refused\r\nConnection: close\r\nContent-Length: ${text.length}\r\n\r\n${text}`,
      );
    };
    if (req.url !== CHECKPOINT_PATH) return refuse(404, "no such path");
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return refuse(401, "missing or wrong bearer token");
    const member = req.headers["x-paxos-member"];
    if (typeof member !== "string" || member === "") return refuse(400, "missing member");
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.push(ws);
      onConnection(ws, member);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(async () => {
    for (const s of raw) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, sockets };
}

function startSender(
  source: CheckpointSource,
  opts: Partial<ConstructorParameters<typeof CheckpointSender>[0]> = {},
): CheckpointSender {
  const sender = new CheckpointSender({ source, logger, chunkBytes: CHUNK, ...opts });
  cleanups.push(() => sender.close());
  return sender;
}

async function servedBy(sender: CheckpointSender): Promise<Peer> {
  return listen((ws, member) => sender.serve(ws, member));
}

/** A fresh parent folder with an empty tmpDir in it, so a test can see what was written outside. */
async function target(): Promise<{ parent: string; tmpDir: string }> {
  const parent = await tempDir("ckpt-dst-");
  const tmpDir = join(parent, "tmp-transfer");
  await mkdir(tmpDir);
  return { parent, tmpDir };
}

async function waitFor(what: string, condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (condition()) return;
    await sleep(20);
  }
  assert.fail(`timed out waiting for ${what}`);
}

async function rejectsWith(promise: Promise<unknown>, pattern: RegExp): Promise<TransferError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof TransferError, `expected a TransferError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return err;
  }
  assert.fail(`expected a TransferError matching ${pattern}`);
}

async function assertSameFiles(state: CheckpointState, tmpDir: string): Promise<void> {
  for (const f of state.files) {
    assert.deepEqual(await readFile(join(tmpDir, f.path)), await readFile(join(state.dir, f.path)), f.path);
  }
}

test("transfers several files, empty ones and multi-chunk ones included, then unlocks once", async () => {
  const state = await makeCheckpoint([
    { path: "empty-first.kvd", size: 0 },
    { path: "data-00000.kvd", size: 5 * CHUNK + 12_345 },
    { path: "exact.kvd", size: 2 * CHUNK },
    { path: "empty-middle.kvd", size: 0 },
    { path: "small.kvd", size: 10 },
    { path: "empty-last.kvd", size: 0 },
  ]);
  const source = new CountingSource(state);
  const sent: TransferProgress[] = [];
  const sender = startSender(source, { onProgress: (p) => sent.push(p) });
  const peer = await servedBy(sender);
  const { parent, tmpDir } = await target();
  const received: TransferProgress[] = [];

  const result = await receiveCheckpoint({
    address: peer.address,
    self: "kv-2",
    token: TOKEN,
    tmpDir,
    peer: "kv-0",
    window: 3,
    logger,
    onProgress: (p) => received.push(p),
  });

  assert.deepEqual(result, {
    instanceId: 4242,
    dir: tmpDir,
    files: state.files,
    entries: 77,
    createdAt: "2024-05-01T10:00:00.000Z",
  });
  await assertSameFiles(state, tmpDir);
  const manifest = JSON.parse(await readFile(join(tmpDir, "manifest.json"), "utf8"));
  assert.deepEqual(manifest, {
    format: 1,
    instanceId: 4242,
    createdAt: "2024-05-01T10:00:00.000Z",
    entries: 77,
    files: state.files,
  });
  assert.deepEqual(
    (await readdir(tmpDir)).sort(),
    [...state.files.map((f) => f.path), "manifest.json"].sort(),
  );
  assert.deepEqual(await readdir(parent), ["tmp-transfer"]);

  const total = state.files.reduce((sum, f) => sum + f.size, 0);
  assert.deepEqual(received.at(-1), {
    member: "kv-0",
    instanceId: 4242,
    files: 6,
    filesDone: 6,
    bytes: total,
    totalBytes: total,
  });
  assert.equal(sent.at(-1)?.member, "kv-2");
  assert.equal(sent.at(-1)?.bytes, total);
  await waitFor("the unlock", () => source.unlocks === 1);
  assert.equal(source.locks, 1);
  assert.deepEqual(sender.active(), []);
});

test("a receiver that aborts mid-stream gets a TransferError and the sender unlocks once", async () => {
  const state = await makeCheckpoint([{ path: "big.kvd", size: 40 * CHUNK }]);
  const source = new CountingSource(state);
  const sender = startSender(source);
  const peer = await servedBy(sender);
  const { parent, tmpDir } = await target();
  const abort = new AbortController();
  let sawActive = false;

  await rejectsWith(
    receiveCheckpoint({
      address: peer.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir,
      window: 2,
      signal: abort.signal,
      logger,
      onProgress: (p) => {
        if (p.bytes < 3 * CHUNK) return;
        sawActive = sender.active().length === 1;
        abort.abort();
      },
    }),
    /aborted/,
  );

  assert.ok(sawActive, "the sender listed the transfer as active");
  await waitFor("the unlock", () => source.unlocks === 1);
  await sleep(100);
  assert.equal(source.unlocks, 1);
  assert.deepEqual(sender.active(), []);
  assert.deepEqual(await readdir(parent), ["tmp-transfer"]);
});

test("a sender left without credit times out and unlocks once", async () => {
  const state = await makeCheckpoint([{ path: "data.kvd", size: 3 * CHUNK }]);
  const source = new CountingSource(state);
  const sender = startSender(source, { idleTimeoutMs: 200 });
  const peer = await servedBy(sender);
  const ws = new WebSocket(`ws://${peer.address}${CHECKPOINT_PATH}`, {
    headers: { Authorization: `Bearer ${TOKEN}`, "x-paxos-member": "kv-2" },
  });
  cleanups.push(async () => ws.terminate());
  const messages: { type: string; message?: string }[] = [];
  ws.on("message", (data) => messages.push(JSON.parse(String(data))));
  const closed = new Promise<number>((resolve) => ws.once("close", resolve));

  assert.equal(await closed, 1011);
  assert.deepEqual(
    messages.map((m) => m.type),
    ["manifest", "error"],
  );
  assert.match(messages[1]?.message ?? "", /no credit from kv-2 for 200 ms/);
  await waitFor("the unlock", () => source.unlocks === 1);
  assert.equal(source.locks, 1);
});

test("a sender killed mid-stream fails the receiver, which wrote only into tmpDir", async () => {
  const state = await makeCheckpoint([
    { path: "a.kvd", size: 2 * CHUNK },
    { path: "b.kvd", size: 30 * CHUNK },
  ]);
  const source = new CountingSource(state);
  const sender = startSender(source);
  const peer = await servedBy(sender);
  const { parent, tmpDir } = await target();

  await rejectsWith(
    receiveCheckpoint({
      address: peer.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir,
      window: 2,
      logger,
      onProgress: (p) => {
        if (p.bytes >= 3 * CHUNK) for (const ws of peer.sockets) ws.terminate();
      },
    }),
    /closed before the transfer completed/,
  );

  assert.deepEqual(await readdir(parent), ["tmp-transfer"]);
  assert.ok(!(await readdir(tmpDir)).includes("manifest.json"));
  await waitFor("the unlock", () => source.unlocks === 1);
});

test("a corrupted chunk is caught by its CRC, and the hook fires only once", async () => {
  const state = await makeCheckpoint([
    { path: "a.kvd", size: 2 * CHUNK + 7 },
    { path: "b.kvd", size: 3 * CHUNK },
  ]);
  const source = new CountingSource(state);
  const sender = startSender(source, { corruptChunkForTest: 4 });
  const peer = await servedBy(sender);

  const first = await target();
  await rejectsWith(
    receiveCheckpoint({ address: peer.address, self: "kv-2", token: TOKEN, tmpDir: first.tmpDir, logger }),
    /CRC mismatch in the chunk at offset 65536 of "b\.kvd"/,
  );
  await waitFor("the first unlock", () => source.unlocks === 1);

  const second = await target();
  const result = await receiveCheckpoint({
    address: peer.address,
    self: "kv-2",
    token: TOKEN,
    tmpDir: second.tmpDir,
    logger,
  });
  await assertSameFiles(result, second.tmpDir);
  await waitFor("the second unlock", () => source.unlocks === 2);
  assert.equal(source.locks, 2);
});

test("a manifest naming a path outside tmpDir is refused before anything is written", async () => {
  const empty = createHash("sha256").digest("hex");
  const cases: [string, RegExp][] = [
    ["../evil.kvd", /"\.\.\/evil\.kvd" contains a path separator/],
    ["..", /is a directory reference/],
    ["/etc/passwd", /contains a path separator/],
    ["sub\\file", /contains a path separator/],
    ["manifest.json", /is reserved/],
    ["", /is empty/],
  ];
  const replies: string[] = [];
  let nextPath = "";
  // A hostile sender: the real one never sends such a manifest.
  const peer = await listen((ws) => {
    ws.on("message", (data) => replies.push(String(data)));
    ws.send(
      JSON.stringify({
        type: "manifest",
        version: 1,
        instanceId: 9,
        chunkBytes: CHUNK,
        files: [{ path: nextPath, size: 0, sha256: empty }],
      }),
    );
  });
  for (const [path, pattern] of cases) {
    nextPath = path;
    const { parent, tmpDir } = await target();
    await rejectsWith(
      receiveCheckpoint({ address: peer.address, self: "kv-2", token: TOKEN, tmpDir, logger }),
      pattern,
    );
    assert.deepEqual(await readdir(parent), ["tmp-transfer"], path);
    assert.deepEqual(await readdir(tmpDir), [], path);
  }
  await waitFor("the error replies", () => replies.length === cases.length);
  for (const reply of replies) assert.equal(JSON.parse(reply).type, "error");
});

test("a refused upgrade is a TransferError naming the status", async () => {
  const source = new CountingSource(await makeCheckpoint([{ path: "a.kvd", size: 10 }]));
  const peer = await servedBy(startSender(source));
  const { tmpDir } = await target();

  await rejectsWith(
    receiveCheckpoint({ address: peer.address, self: "kv-2", token: "wrong", tmpDir, logger }),
    /refused by 127\.0\.0\.1:\d+: HTTP 401 .*missing or wrong bearer token/,
  );
  await rejectsWith(receiveCheckpoint({ address: peer.address, self: "kv-2", tmpDir, logger }), /HTTP 401/);
  assert.equal(source.locks, 0);
});

test("a checkpoint over maxTotalBytes is refused and the sender unlocks", async () => {
  const source = new CountingSource(
    await makeCheckpoint([
      { path: "a.kvd", size: 3000 },
      { path: "b.kvd", size: 2000 },
    ]),
  );
  const peer = await servedBy(startSender(source));
  const { tmpDir } = await target();

  await rejectsWith(
    receiveCheckpoint({
      address: peer.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir,
      maxTotalBytes: 4999,
      logger,
    }),
    /holds 5000 bytes, more than the 4999 allowed/,
  );
  await waitFor("the unlock", () => source.unlocks === 1);
  assert.deepEqual(await readdir(tmpDir), []);
});

test("a sender without a checkpoint says so", async () => {
  const peer = await servedBy(startSender(new CountingSource(null)));
  const { tmpDir } = await target();

  await rejectsWith(
    receiveCheckpoint({ address: peer.address, self: "kv-2", token: TOKEN, tmpDir, logger }),
    /failed: no checkpoint to send: no checkpoint has been made yet/,
  );
});

test("data that does not match the manifest's SHA-256 or size is refused", async () => {
  const state = await makeCheckpoint([{ path: "a.kvd", size: 2 * CHUNK }]);
  const file = state.files[0]!;
  const badHash = new CountingSource({ ...state, files: [{ ...file, sha256: "0".repeat(64) }] });
  const peer = await servedBy(startSender(badHash));
  await rejectsWith(
    receiveCheckpoint({
      address: peer.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir: (await target()).tmpDir,
      logger,
    }),
    /SHA-256 mismatch for "a\.kvd": manifest says 0{64}/,
  );
  await waitFor("the unlock", () => badHash.unlocks === 1);

  // The store says the file is longer than it is: the sender finds out while reading.
  const tooLong = new CountingSource({ ...state, files: [{ ...file, size: file.size + 5 }] });
  const peer2 = await servedBy(startSender(tooLong));
  await rejectsWith(
    receiveCheckpoint({
      address: peer2.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir: (await target()).tmpDir,
      logger,
    }),
    /cannot read checkpoint file "a\.kvd": it ends at 131072 bytes, short of the 131077/,
  );
  await waitFor("the unlock", () => tooLong.unlocks === 1);
});

test("closing the sender ends its transfers and unlocks", async () => {
  const source = new CountingSource(await makeCheckpoint([{ path: "big.kvd", size: 20 * CHUNK }]));
  const sender = startSender(source);
  const peer = await servedBy(sender);
  let closing: Promise<void> | null = null;

  await rejectsWith(
    receiveCheckpoint({
      address: peer.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir: (await target()).tmpDir,
      window: 1,
      logger,
      onProgress: (p) => {
        if (p.bytes > 0) closing ??= sender.close();
      },
    }),
    /closed before the transfer completed/,
  );
  await closing;
  assert.equal(source.unlocks, 1);
  assert.deepEqual(sender.active(), []);
});

test("a silent sender and an absent one are TransferErrors", async () => {
  const empty = createHash("sha256").digest("hex");
  // Announces a file, then never sends it.
  const silent = await listen((ws) => {
    ws.send(
      JSON.stringify({
        type: "manifest",
        version: 1,
        instanceId: 3,
        chunkBytes: CHUNK,
        files: [
          { path: "a.kvd", size: 0, sha256: empty },
          { path: "b.kvd", size: 100, sha256: empty },
        ],
      }),
    );
  });
  const { tmpDir } = await target();
  await rejectsWith(
    receiveCheckpoint({
      address: silent.address,
      self: "kv-2",
      token: TOKEN,
      tmpDir,
      idleTimeoutMs: 200,
      logger,
    }),
    /no data from 127\.0\.0\.1:\d+ for 200 ms/,
  );

  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const address = `127.0.0.1:${(closed.address() as AddressInfo).port}`;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  await rejectsWith(
    receiveCheckpoint({ address, self: "kv-2", token: TOKEN, tmpDir: (await target()).tmpDir, logger }),
    /connection to 127\.0\.0\.1:\d+ failed: .*ECONNREFUSED/,
  );
});
