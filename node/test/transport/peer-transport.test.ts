import assert from "node:assert/strict";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import WebSocket, { WebSocketServer } from "ws";
import {
  decodeFrame,
  decodeMessages,
  encodeBatch,
  encodeFrame,
  FRAME_HEADER_BYTES,
} from "../../src/transport/frame.js";
import type { PeerMessage } from "../../src/transport/peer-message.js";
import {
  FRAMES_HEADER,
  type LinkState,
  PEER_PATH,
  PeerTransport,
  type PeerTransportOptions,
} from "../../src/transport/peer-transport.js";

interface LogLine {
  level: number;
  msg: string;
  peer?: string;
  reason?: string;
}

interface Member {
  readonly name: string;
  readonly transport: PeerTransport;
  readonly received: { from: string; message: PeerMessage }[];
  readonly rejected: { peer: string; reason: string }[];
  readonly dropped: Map<string, number>;
  readonly states: { peer: string; state: LinkState }[];
  readonly logs: LogLine[];
  address(): string;
}

const open: PeerTransport[] = [];
after(async () => {
  await Promise.all(open.map((t) => t.close()));
});

function member(name: string, opts: Partial<PeerTransportOptions> = {}): Member {
  const received: Member["received"] = [];
  const rejected: Member["rejected"] = [];
  const dropped = new Map<string, number>();
  const states: Member["states"] = [];
  const logs: LogLine[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => logs.push(JSON.parse(line) as LogLine) });
  const transport = new PeerTransport({
    self: name,
    host: "127.0.0.1",
    port: 0,
    peers: new Map(),
    logger,
    onMessage: (from, message) => received.push({ from, message }),
    events: {
      rejectedFrame: (peer, reason) => rejected.push({ peer, reason }),
      dropped: (peer, count) => dropped.set(peer, (dropped.get(peer) ?? 0) + count),
      linkState: (peer, state) => states.push({ peer, state }),
    },
    ...opts,
  });
  open.push(transport);
  return {
    name,
    transport,
    received,
    rejected,
    dropped,
    states,
    logs,
    address: () => `127.0.0.1:${transport.port}`,
  };
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Points every member at every other one. */
function mesh(members: Member[]): void {
  const peers = new Map(members.map((m) => [m.name, m.address()]));
  for (const m of members) m.transport.setPeers(peers);
}

function allConnected(m: Member): boolean {
  const states = Object.values(m.transport.linkStates());
  return states.length > 0 && states.every((s) => s === "connected");
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === "object");
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

function commit(readSeq: number): PeerMessage {
  return { type: "commit", ballot: { counter: 3, member: "n1" }, from: 1, to: 2, readSeq };
}

/** Resolves with the status code of a refused WebSocket upgrade, or "open". */
function dialRaw(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number | "open"; ws: WebSocket }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on("open", () => resolve({ status: "open", ws }));
    // ws aborts a refused handshake itself and reports the status in the error.
    ws.on("error", (err) => {
      const refused = /Unexpected server response: (\d+)/.exec(err.message);
      if (refused) resolve({ status: Number(refused[1]), ws });
      else reject(err);
    });
  });
}

function closeRaw(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    ws.once("close", () => resolve());
    ws.terminate();
  });
}

test("three members exchange every kind of message, in order, over real sockets", async () => {
  const members = ["n1", "n2", "n3"].map((n) => member(n, { token: "s3cret" }));
  await Promise.all(members.map((m) => m.transport.start()));
  mesh(members);
  await waitFor("all links connected", () => members.every(allConnected));

  const forward: PeerMessage = { type: "forward", requestId: 9, command: new Uint8Array([1, 2, 3]) };
  const accept: PeerMessage = {
    type: "accept",
    ballot: { counter: 5, member: "n1" },
    entries: [{ instance: 12, value: { kind: "commands", id: "n1:1:1", commands: [new Uint8Array([7])] } }],
  };
  for (const from of members) {
    for (const to of members) {
      if (from === to) continue;
      for (let i = 0; i < 50; i++) from.transport.send(to.name, commit(i));
      from.transport.send(to.name, forward);
      from.transport.send(to.name, accept);
    }
  }
  await waitFor("every message delivered", () => members.every((m) => m.received.length === 2 * 52));

  for (const to of members) {
    for (const from of members) {
      if (from === to) continue;
      const got = to.received.filter((r) => r.from === from.name).map((r) => r.message);
      assert.deepStrictEqual(got, [...Array.from({ length: 50 }, (_, i) => commit(i)), forward, accept]);
    }
    assert.deepStrictEqual(to.rejected, []);
    assert.equal(to.dropped.size, 0);
  }
  assert.throws(() => members[0]!.transport.send("n1", commit(0)), /itself/);
  await Promise.all(members.map((m) => m.transport.close()));
});

test("a wrong or missing token is refused and nothing it sends is delivered", async () => {
  const n2 = member("n2", { token: "wrong" });
  const n3 = member("n3");
  const n4 = member("n4", { token: "s3cret" });
  await Promise.all([n2, n3, n4].map((m) => m.transport.start()));
  const n1 = member("n1", {
    token: "s3cret",
    peers: new Map([
      ["n2", n2.address()],
      ["n3", n3.address()],
      ["n4", n4.address()],
    ]),
  });
  await n1.transport.start();
  for (const m of [n2, n3, n4]) m.transport.setPeers(new Map([["n1", n1.address()]]));

  await waitFor("n4 connected", () => n4.transport.linkStates().n1 === "connected");
  await waitFor("both impostors refused", () => {
    const reasons = n1.transport.stats().rejectedFrames;
    return (reasons.n2?.auth ?? 0) > 0 && (reasons.n3?.auth ?? 0) > 0;
  });
  for (let i = 0; i < 10; i++) {
    n2.transport.send("n1", commit(i));
    n3.transport.send("n1", commit(i));
  }
  n4.transport.send("n1", commit(99));
  await waitFor("n4's message", () => n1.received.length > 0);
  assert.deepStrictEqual(n1.received, [{ from: "n4", message: commit(99) }]);
  assert.notEqual(n2.transport.linkStates().n1, "connected");
  assert.notEqual(n3.transport.linkStates().n1, "connected");
  assert.ok(n1.rejected.some((r) => r.peer === "n2" && r.reason === "auth"));
  assert.equal(n2.dropped.get("n1"), 10);

  const url = `ws://${n1.address()}${PEER_PATH}`;
  const noToken = await dialRaw(url, { "X-Paxos-Member": "n2" });
  assert.equal(noToken.status, 401);
  const noMember = await dialRaw(url, { Authorization: "Bearer s3cret" });
  assert.equal(noMember.status, 400);
  assert.ok((n1.transport.stats().rejectedFrames.unknown?.member ?? 0) >= 1);
  const wrongPath = await dialRaw(`ws://${n1.address()}/`, {
    Authorization: "Bearer s3cret",
    "X-Paxos-Member": "n2",
  });
  assert.equal(wrongPath.status, 404);
  await Promise.all([noToken.ws, noMember.ws, wrongPath.ws].map(closeRaw));
  // Retries against the refusing member are logged once per minute, not once per attempt.
  const authLogs = n1.logs.filter((l) => l.reason === "auth" && l.peer === "n2");
  assert.equal(authLogs.length, 1);
  await Promise.all([n1, n2, n3, n4].map((m) => m.transport.close()));
});

test("garbage frames are dropped and counted without closing the link", async () => {
  const n1 = member("n1", { token: "s3cret", maxFrameBytes: 1024 * 1024 });
  const n2 = member("n2", { token: "s3cret" });
  await Promise.all([n1, n2].map((m) => m.transport.start()));
  mesh([n1, n2]);
  await waitFor("n2 connected to n1", () => n2.transport.linkStates().n1 === "connected");

  const raw = await dialRaw(`ws://${n1.address()}${PEER_PATH}`, {
    Authorization: "Bearer s3cret",
    "X-Paxos-Member": "n3",
  });
  assert.equal(raw.status, "open");
  const valid = encodeFrame(commit(1));
  const flipped = valid.slice();
  flipped[10]! ^= 0x10;
  const garbage: Uint8Array[] = [
    new Uint8Array([1, 2, 3]),
    new Uint8Array([2, ...valid.subarray(1)]),
    new Uint8Array([1, 99, ...valid.subarray(2)]),
    flipped,
    new Uint8Array(0),
  ];
  let seed = 7;
  for (let i = 0; i < 40; i++) {
    const bytes = new Uint8Array(1 + (i % 60));
    for (let j = 0; j < bytes.length; j++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      bytes[j] = seed & 0xff;
    }
    garbage.push(bytes);
  }
  for (const g of garbage) raw.ws.send(g);
  raw.ws.send("not a binary frame");
  raw.ws.send(valid);
  await waitFor("the valid frame after the garbage", () => n1.received.some((r) => r.from === "n3"));

  const counted = n1.transport.stats().rejectedFrames.n3 ?? {};
  const total = Object.values(counted).reduce((a, b) => a + b, 0);
  assert.equal(total, garbage.length + 1);
  assert.equal(counted.text, 1);
  for (const reason of ["version", "type", "checksum", "truncated"]) {
    assert.ok((counted[reason] ?? 0) > 0, `no frame rejected for ${reason}`);
  }
  assert.equal(n1.rejected.filter((r) => r.peer === "n3").length, total);
  assert.equal(raw.ws.readyState, WebSocket.OPEN);
  // One log line per reason, however many frames.
  for (const reason of Object.keys(counted)) {
    assert.equal(n1.logs.filter((l) => l.peer === "n3" && l.reason === reason).length, 1, reason);
  }

  n2.transport.send("n1", commit(2));
  await waitFor("the real link still delivers", () => n1.received.some((r) => r.from === "n2"));
  assert.deepStrictEqual(
    n1.received.map((r) => [r.from, r.message]),
    [
      ["n3", commit(1)],
      ["n2", commit(2)],
    ],
  );

  // A frame over the limit is refused by ws itself, which closes only that connection.
  const closed = new Promise<number>((resolve) => raw.ws.once("close", (code) => resolve(code)));
  raw.ws.send(new Uint8Array(1024 * 1024 + 1));
  assert.equal(await closed, 1009);
  await waitFor("too_large counted", () => (n1.transport.stats().rejectedFrames.n3?.too_large ?? 0) === 1);
  n2.transport.send("n1", commit(3));
  await waitFor("the real link still delivers", () => n1.received.length === 3);
  await Promise.all([n1, n2].map((m) => m.transport.close()));
});

test("an exception thrown by onMessage does not take the link down", async () => {
  let calls = 0;
  const n1 = member("n1", {
    onMessage: () => {
      calls++;
      throw new Error("handler bug");
    },
  });
  const n2 = member("n2");
  await Promise.all([n1, n2].map((m) => m.transport.start()));
  mesh([n1, n2]);
  await waitFor("n2 connected", () => n2.transport.linkStates().n1 === "connected");
  for (let i = 0; i < 5; i++) n2.transport.send("n1", commit(i));
  await waitFor("every message handed over", () => calls === 5);
  assert.equal(n2.transport.linkStates().n1, "connected");
  assert.equal(n1.logs.filter((l) => l.msg === "peer message handler threw").length, 1);
  await Promise.all([n1, n2].map((m) => m.transport.close()));
});

test("a member that restarts is reconnected and messages flow again", async () => {
  const n1 = member("n1", { token: "t" });
  const n2 = member("n2", { token: "t" });
  await Promise.all([n1, n2].map((m) => m.transport.start()));
  mesh([n1, n2]);
  await waitFor("connected", () => allConnected(n1) && allConnected(n2));
  const port = n2.transport.port;
  await n2.transport.close();

  await waitFor("n1 sees n2 down", () => n1.transport.linkStates().n2 === "disconnected");
  n1.transport.send("n2", commit(1));
  assert.equal(n1.dropped.get("n2"), 1);

  const restarted = member("n2", { token: "t", port, peers: new Map([["n1", n1.address()]]) });
  await restarted.transport.start();
  await waitFor("n1 reconnected to n2", () => n1.transport.linkStates().n2 === "connected");
  await waitFor("n2 connected to n1", () => restarted.transport.linkStates().n1 === "connected");
  n1.transport.send("n2", commit(2));
  restarted.transport.send("n1", commit(3));
  await waitFor("both directions deliver", () => restarted.received.length === 1 && n1.received.length === 1);
  assert.deepStrictEqual(restarted.received, [{ from: "n1", message: commit(2) }]);
  assert.deepStrictEqual(n1.received, [{ from: "n2", message: commit(3) }]);
  const n2States = n1.states.filter((s) => s.peer === "n2").map((s) => s.state);
  assert.deepStrictEqual(n2States, ["connecting", "connected", "disconnected", "connected"]);
  await Promise.all([n1, restarted].map((m) => m.transport.close()));
});

test("messages to an unreachable peer are dropped and counted, and nothing is kept", async () => {
  const ghostPort = await freePort();
  const n1 = member("n1", { peers: new Map([["ghost", `127.0.0.1:${ghostPort}`]]) });
  await n1.transport.start();
  await waitFor("first dial failed", () => n1.transport.linkStates().ghost === "disconnected");
  const command = new Uint8Array(1024);
  for (let i = 0; i < 10_000; i++) n1.transport.send("ghost", { type: "forward", requestId: i, command });
  n1.transport.send("nobody", commit(0));
  const stats = n1.transport.stats();
  assert.equal(stats.dropped.ghost, 10_000);
  assert.equal(stats.dropped.nobody, 1);
  assert.equal(stats.queuedBytes.ghost, 0);
  assert.equal(n1.dropped.get("ghost"), 10_000);
  // Keep retrying for a while: failed attempts are not logged one by one.
  await sleep(1500);
  assert.equal(n1.transport.linkStates().ghost, "disconnected");
  const ghostLogs = n1.logs.filter((l) => l.peer === "ghost" && l.msg.startsWith("peer link"));
  assert.deepStrictEqual(
    ghostLogs.map((l) => l.msg),
    ["peer link connecting", "peer link disconnected"],
  );
  await n1.transport.close();
});

for (const batching of [false, true]) {
  test(`a congested link holds at most maxQueueBytes, drops the oldest, and drains in order (batching: ${batching})`, async () => {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    // A peer that does not advertise batches must only ever get single frames: decodeFrame throws on a batch.
    if (batching) wss.on("headers", (headers) => headers.push(`${FRAMES_HEADER}: batch`));
    let wsMessages = 0;
    await new Promise<void>((resolve) => wss.once("listening", () => resolve()));
    after(() => new Promise<void>((resolve) => wss.close(() => resolve())));
    const arrived: number[] = [];
    const peers: WebSocket[] = [];
    let headers: Record<string, string | string[] | undefined> = {};
    wss.on("connection", (ws, req) => {
      headers = req.headers;
      peers.push(ws);
      // Stop reading: the sender's kernel buffers fill, then its socket buffer, then its queue.
      ws.pause();
      ws.on("message", (data) => {
        wsMessages++;
        const decoded = batching ? decodeMessages(data as Buffer).messages : [decodeFrame(data as Buffer)];
        for (const m of decoded) if (m.type === "forward") arrived.push(m.requestId);
      });
    });
    const address = wss.address();
    assert.ok(address !== null && typeof address === "object");
    const maxQueueBytes = 1024 * 1024;
    const n1 = member("n1", {
      token: "t",
      maxQueueBytes,
      highWaterBytes: 256 * 1024,
      // The paused peer cannot answer pings either; keep the link up for the whole test.
      heartbeatMs: 60_000,
      peers: new Map([["slow", `127.0.0.1:${address.port}`]]),
    });
    await n1.transport.start();
    await waitFor("connected to the slow peer", () => n1.transport.linkStates().slow === "connected");
    assert.equal(headers["x-paxos-member"], "n1");
    assert.equal(headers.authorization, "Bearer t");

    const command = new Uint8Array(64 * 1024);
    let sent = 0;
    // Until the kernel buffers are full too: only then does the queue stay non-empty between turns.
    const congested = (): boolean => {
      const { dropped, queuedBytes } = n1.transport.stats();
      return (dropped.slow ?? 0) > 0 && (queuedBytes.slow ?? 0) > 0;
    };
    while (!congested() && sent < 4000) {
      for (let i = 0; i < 64; i++) n1.transport.send("slow", { type: "forward", requestId: sent++, command });
      await sleep(1);
    }
    const stats = n1.transport.stats();
    assert.ok((stats.dropped.slow ?? 0) > 0, "the queue never overflowed");
    assert.ok((stats.queuedBytes.slow ?? 0) <= maxQueueBytes);
    assert.ok((stats.queuedBytes.slow ?? 0) > 0);
    assert.equal(n1.transport.linkStates().slow, "connected");

    for (const ws of peers) ws.resume();
    await waitFor("the queue drained", () => n1.transport.stats().queuedBytes.slow === 0);
    await waitFor("the newest message arrived", () => arrived.at(-1) === sent - 1);
    for (let i = 1; i < arrived.length; i++) assert.ok(arrived[i]! > arrived[i - 1]!, "out of order");
    assert.equal(arrived.length + (n1.transport.stats().dropped.slow ?? 0), sent);
    assert.equal(n1.transport.stats().wsMessagesSent.slow, wsMessages);
    if (batching) assert.ok(wsMessages < arrived.length, "nothing was batched");
    else assert.equal(wsMessages, arrived.length);
    await n1.transport.close();
    for (const ws of peers) ws.terminate();
  });
}

test("setPeers adds, readdresses and removes links", async () => {
  const n1 = member("n1");
  const n2 = member("n2");
  const n3 = member("n3");
  await Promise.all([n1, n2, n3].map((m) => m.transport.start()));
  n1.transport.setPeers(new Map([["n2", n2.address()]]));
  await waitFor("n1 -> n2", () => n1.transport.linkStates().n2 === "connected");
  // The name stays, the address moves: the link follows it.
  n1.transport.setPeers(new Map([["n2", n3.address()]]));
  await waitFor("n1 -> new address", () => n1.transport.linkStates().n2 === "connected");
  n1.transport.send("n2", commit(1));
  await waitFor("delivered at the new address", () => n3.received.length === 1);
  assert.deepStrictEqual(n3.received, [{ from: "n1", message: commit(1) }]);
  n1.transport.setPeers(new Map());
  assert.deepStrictEqual(n1.transport.linkStates(), {});
  n1.transport.send("n2", commit(2));
  assert.equal(n1.transport.stats().dropped.n2, 1);
  assert.throws(() => n1.transport.setPeers(new Map([["n2", "no-port"]])), /invalid address for peer n2/);
  await Promise.all([n1, n2, n3].map((m) => m.transport.close()));
});

test("close() leaves no socket or timer behind", async () => {
  const counted = ["TCPServerWrap", "TCPSocketWrap", "Timeout"];
  const count = (): number => process.getActiveResourcesInfo().filter((r) => counted.includes(r)).length;
  // A peer that accepts TCP connections but never answers the upgrade: n1's dial to it hangs.
  const held = new Set<Socket>();
  const mute = createServer((socket) => held.add(socket));
  await new Promise<void>((resolve) => mute.listen(0, "127.0.0.1", resolve));
  const mutePort = (mute.address() as AddressInfo).port;
  const ghostPort = await freePort();
  const baseline = count();

  const n1 = member("n1", { token: "t" });
  const n2 = member("n2", { token: "t" });
  await Promise.all([n1, n2].map((m) => m.transport.start()));
  mesh([n1, n2]);
  n1.transport.setPeers(
    new Map([
      ["n2", n2.address()],
      ["ghost", `127.0.0.1:${ghostPort}`],
      ["mute", `127.0.0.1:${mutePort}`],
    ]),
  );
  await waitFor("connected", () => n1.transport.linkStates().n2 === "connected" && allConnected(n2));
  await waitFor("ghost failed once", () => n1.transport.linkStates().ghost === "disconnected");
  await waitFor("a dial held by the mute peer", () => held.size > 0);
  assert.equal(n1.transport.linkStates().mute, "connecting");
  assert.ok(count() > baseline);

  await Promise.all([n1, n2].map((m) => m.transport.close()));
  // The mute peer's own ends of n1's dials are its business, not n1's: leave them out of the count.
  for (const socket of held) socket.destroy();
  await waitFor("the mute peer's sockets closed", () => [...held].every((socket) => socket.closed));
  // At most the baseline: a socket from an earlier test may have finished closing meanwhile.
  assert.ok(count() <= baseline, JSON.stringify(process.getActiveResourcesInfo()));
  assert.deepStrictEqual(n1.transport.linkStates(), {
    n2: "disconnected",
    ghost: "disconnected",
    mute: "disconnected",
  });
  await new Promise<void>((resolve) => mute.close(() => resolve()));
});

test("sends in one turn arrive in order, coalesced into fewer WebSocket messages", async () => {
  const n1 = member("n1", { token: "t" });
  const n2 = member("n2", { token: "t" });
  await Promise.all([n1, n2].map((m) => m.transport.start()));
  mesh([n1, n2]);
  await waitFor("connected", () => allConnected(n1) && allConnected(n2));

  const n = 100;
  for (let i = 0; i < n; i++) n1.transport.send("n2", commit(i));
  await waitFor("every message delivered", () => n2.received.length === n);
  assert.deepStrictEqual(
    n2.received.map((r) => r.message),
    Array.from({ length: n }, (_, i) => commit(i)),
  );
  const afterBurst = n1.transport.stats().wsMessagesSent.n2 ?? 0;
  assert.ok(afterBurst >= 1 && afterBurst < n, `${n} sends took ${afterBurst} WebSocket messages`);

  // A message alone in its turn still leaves at once, as a single frame.
  n1.transport.send("n2", commit(n));
  await waitFor("the lone message", () => n2.received.length === n + 1);
  assert.equal(n1.transport.stats().wsMessagesSent.n2, afterBurst + 1);
  assert.deepStrictEqual(n2.rejected, []);
  assert.equal(n1.transport.stats().queuedBytes.n2, 0);
  await Promise.all([n1, n2].map((m) => m.transport.close()));
});

test("a burst larger than maxFrameBytes is split into several batches", async () => {
  const maxFrameBytes = 4096;
  const n1 = member("n1", { maxFrameBytes });
  const n2 = member("n2", { maxFrameBytes });
  await Promise.all([n1, n2].map((m) => m.transport.start()));
  mesh([n1, n2]);
  await waitFor("connected", () => allConnected(n1) && allConnected(n2));

  const n = 40;
  const sent = Array.from(
    { length: n },
    (_, i): PeerMessage => ({ type: "forward", requestId: i, command: new Uint8Array(1000).fill(i) }),
  );
  for (const m of sent) n1.transport.send("n2", m);
  await waitFor("every message delivered", () => n2.received.length === n);
  assert.deepStrictEqual(
    n2.received.map((r) => r.message),
    sent,
  );
  // A receiver refuses an oversized batch by closing the link, which n2.rejected would show; so
  // the fewest messages possible is the number of full batches.
  const perBatch = Math.floor((maxFrameBytes - FRAME_HEADER_BYTES) / (encodeFrame(sent[0]!).length + 4));
  const wsMessages = n1.transport.stats().wsMessagesSent.n2 ?? 0;
  assert.ok(wsMessages >= Math.ceil(n / perBatch) && wsMessages < n, `${wsMessages} WebSocket messages`);
  assert.deepStrictEqual(n2.rejected, []);
  await Promise.all([n1, n2].map((m) => m.transport.close()));
});

test("a batch with a malformed inner frame delivers what precedes it and counts one rejection", async () => {
  const n1 = member("n1");
  await n1.transport.start();
  const raw = await dialRaw(`ws://${n1.address()}${PEER_PATH}`, { "X-Paxos-Member": "n3" });
  assert.equal(raw.status, "open");
  const bad = encodeFrame(commit(2)).slice();
  bad[10]! ^= 0x01;
  raw.ws.send(encodeBatch([encodeFrame(commit(0)), encodeFrame(commit(1)), bad, encodeFrame(commit(3))]));
  raw.ws.send(encodeFrame(commit(4)));
  await waitFor("the frame after the batch", () => n1.received.length === 3);
  assert.deepStrictEqual(
    n1.received.map((r) => r.message),
    [commit(0), commit(1), commit(4)],
  );
  assert.deepStrictEqual(n1.transport.stats().rejectedFrames.n3, { checksum: 1 });
  assert.equal(raw.ws.readyState, WebSocket.OPEN);
  await closeRaw(raw.ws);
  await n1.transport.close();
});
