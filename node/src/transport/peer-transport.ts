// WebSocket links between members.
//
// Each member dials one outbound link to every peer and sends only on it; links a peer dialled to
// us only receive. So there is never a pair of links to reconcile, and per-link ordering is the
// ordering of send() calls. Paxos tolerates loss (it retransmits), so a link that is down or
// congested drops messages instead of buffering them without bound.
//
// Liveness: the dialler pings every heartbeat and redials after three unanswered pings, so a peer
// that vanished without a FIN (a pod moved, a partition) is noticed in seconds, not at the TCP
// retransmission timeout. The listener treats those pings as its own liveness signal and closes
// inbound links that fall silent. Every member is expected to run with the same heartbeat.
//
// Coalescing: a frame the socket has room for is not written at once but held until the end of the
// current event-loop turn, when everything held for that peer is packed into batch frames (see
// frame.ts) and written with one ws.send each, so a burst of sends costs one socket write instead
// of one each. A message sent alone still leaves in the same loop iteration: no timer is involved.
// Frames the socket has no room for wait in the bounded congestion queue, as before. Batches go
// only to peers that advertised support in the upgrade response, so members of an older version,
// which would refuse them, keep receiving single frames during a rolling upgrade.

import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import WebSocket, { type RawData, WebSocketServer } from "ws";
import { batchBytes, DEFAULT_MAX_FRAME_BYTES, decodeMessages, encodeBatch, encodeFrame } from "./frame.js";
import type { PeerMessage } from "./peer-message.js";

export type LinkState = "connected" | "connecting" | "disconnected";

export interface TransportEvents {
  /** A frame or a link was refused; `reason` is a FrameError reason, "text", "auth" or "member". */
  rejectedFrame?(peer: string, reason: string): void;
  linkState?(peer: string, state: LinkState): void;
  /** Messages dropped because a link was down, congested past its queue bound, or removed. */
  dropped?(peer: string, count: number): void;
}

export interface PeerTransportOptions {
  /** This member's name. */
  self: string;
  /** Listen address, e.g. "127.0.0.1" or "0.0.0.0". */
  host: string;
  /** 0 picks an ephemeral port (tests). */
  port: number;
  /** Shared secret; when set, inbound links must present it as a bearer token. */
  token?: string;
  /** Member name -> "host:port", resolved by DNS at each connect. An entry for `self` is ignored. */
  peers: ReadonlyMap<string, string>;
  maxFrameBytes?: number;
  /** Bytes of frames held per peer while its socket is congested; the oldest are dropped past this. */
  maxQueueBytes?: number;
  /** Socket buffer level above which frames wait in the per-peer queue. */
  highWaterBytes?: number;
  /** Reconnect backoff: full jitter over an exponential ceiling from min to max. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Ping period on outbound links; a link silent for three periods is dropped and redialled. */
  heartbeatMs?: number;
  logger: Logger;
  events?: TransportEvents;
  onMessage(from: string, message: PeerMessage): void;
  /** Jitter source, defaults to Math.random. */
  random?: () => number;
  /**
   * Other WebSocket services on the peer port, by path (checkpoint transfer). Their connections
   * pass the same token and member-header checks as peer links, then belong to the handler.
   */
  channels?: Readonly<Record<string, (ws: WebSocket, member: string) => void>>;
}

export interface TransportStats {
  /** peer -> reason -> count; refused upgrades from unknown members count under "unknown". */
  rejectedFrames: Record<string, Record<string, number>>;
  dropped: Record<string, number>;
  queuedBytes: Record<string, number>;
  /** peer -> WebSocket messages written on the outbound link; a batch counts once. */
  wsMessagesSent: Record<string, number>;
}

export const PEER_PATH = "/paxos/peer/v1";
export const MEMBER_HEADER = "x-paxos-member";
export const DEFAULT_MAX_QUEUE_BYTES = 32 * 1024 * 1024;
export const DEFAULT_HIGH_WATER_BYTES = 4 * 1024 * 1024;
/** Upgrade response header by which a listener says it accepts batch frames. */
export const FRAMES_HEADER = "x-paxos-frames";
const FRAMES_BATCH = "batch";
/**
 * Batches stop growing here even when maxFrameBytes allows more: past a few hundred KiB the
 * syscall saved is noise, and a smaller batch overshoots the high-water mark by less.
 */
const MAX_BATCH_BYTES = 256 * 1024;

const DEFAULT_RECONNECT_MIN_MS = 50;
const DEFAULT_RECONNECT_MAX_MS = 2000;
const DEFAULT_HEARTBEAT_MS = 2000;
const MISSED_PONGS_BEFORE_DEAD = 3;
/** Inbound links see the peer's pings; one silent this many periods is half-open. */
const IDLE_INBOUND_PERIODS = 5;
const HANDSHAKE_TIMEOUT_MS = 5000;
const LOG_INTERVAL_MS = 60_000;
const MEMBER_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;
const UNKNOWN_PEER = "unknown";

/**
 * Allows one log line per key per interval and counts what it held back, so a peer spraying
 * garbage costs a counter increment, not a log line per frame.
 */
class LogLimiter {
  private readonly entries = new Map<string, { at: number; suppressed: number }>();

  /** Returns how many were suppressed since the last allowed line, or null to stay quiet. */
  allow(key: string): number | null {
    const now = Date.now();
    const entry = this.entries.get(key);
    if (entry !== undefined && now - entry.at < LOG_INTERVAL_MS) {
      entry.suppressed++;
      return null;
    }
    // Keys are peer names times a handful of reasons; the cap only guards against a bug.
    if (this.entries.size >= 10_000) this.entries.clear();
    this.entries.set(key, { at: now, suppressed: 0 });
    return entry?.suppressed ?? 0;
  }
}

/** FIFO of encoded frames with O(1) removal at the head and a running byte count. */
class FrameQueue {
  private items: (Uint8Array | undefined)[] = [];
  private head = 0;
  bytes = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(frame: Uint8Array): void {
    this.items.push(frame);
    this.bytes += frame.byteLength;
  }

  peek(): Uint8Array | undefined {
    return this.items[this.head];
  }

  shift(): Uint8Array | undefined {
    if (this.head === this.items.length) return undefined;
    const frame = this.items[this.head]!;
    this.items[this.head++] = undefined;
    this.bytes -= frame.byteLength;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return frame;
  }

  /** Empties the queue and returns how many frames it held. */
  clear(): number {
    const n = this.length;
    this.items = [];
    this.head = 0;
    this.bytes = 0;
    return n;
  }
}

/** What an outbound link needs from its transport. */
interface LinkContext {
  readonly headers: Record<string, string>;
  readonly maxFrameBytes: number;
  readonly maxQueueBytes: number;
  readonly highWaterBytes: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly random: () => number;
  readonly log: Logger;
  readonly limiter: LogLimiter;
  stateChanged(peer: string, state: LinkState): void;
  dropped(peer: string, count: number): void;
  receive(peer: string, data: RawData, isBinary: boolean): void;
  wrote(peer: string): void;
}

function zeroMask(mask: Uint8Array): void {
  mask.fill(0);
}

/** Terminates `ws` and resolves once its socket is closed. */
function terminate(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    ws.once("close", () => resolve());
    ws.terminate();
  });
}

function toBytes(data: RawData): Uint8Array {
  const buf = Array.isArray(data) ? Buffer.concat(data) : data;
  // Decoded messages then carry plain Uint8Arrays, as they do when built in-process.
  return buf instanceof ArrayBuffer
    ? new Uint8Array(buf)
    : new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** "host:port" with a DNS name, an IPv4 address or a bracketed IPv6 address. */
const ADDRESS = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/;

function checkAddress(peer: string, address: string): void {
  const match = ADDRESS.exec(address);
  const port = Number(match?.[1]);
  if (match === null || port < 1 || port > 65535) {
    throw new Error(`invalid address for peer ${peer}: "${address}" (expected host:port)`);
  }
}

/** The dialling side of one peer link: connects, reconnects, and sends with bounded buffering. */
class OutboundLink {
  state: LinkState = "connecting";
  private ws: WebSocket | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private missedPongs = 0;
  private stopped = false;
  /** Why the latest attempt or connection ended; logged when it changes, not on every retry. */
  private failure = "";
  private loggedFailure = "";
  /** Whether the peer at the other end of `ws` accepts batch frames. */
  private batching = false;
  private flushTimer: NodeJS.Immediate | null = null;
  /**
   * Frames admitted to the socket in this turn, written by the flush. They are what was written at
   * once before coalescing, so the congestion queue's bound does not apply to them.
   */
  private readonly pending = new FrameQueue();
  private readonly queue = new FrameQueue();
  /** A pending flush also pumps the queue; only a congested link needs waking up here. */
  private readonly onWritten = (err?: Error | null): void => {
    if (!err && this.queue.length > 0 && this.flushTimer === null) this.pump();
  };
  private readonly flush = (): void => {
    this.flushTimer = null;
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    while (this.pending.length > 0) this.writeNext(ws, this.pending);
    this.pump();
  };

  constructor(
    private readonly ctx: LinkContext,
    readonly peer: string,
    private address: string,
  ) {
    this.dial();
  }

  get queuedBytes(): number {
    return this.pending.bytes + this.queue.bytes;
  }

  get open(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(frame: Uint8Array): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) {
      this.ctx.dropped(this.peer, 1);
      return;
    }
    if (this.queue.length > 0 || ws.bufferedAmount + this.pending.bytes >= this.ctx.highWaterBytes) {
      this.enqueue(frame);
      return;
    }
    if (!this.batching) {
      this.write(ws, frame);
      return;
    }
    this.pending.push(frame);
    // setImmediate rather than a microtask: the flush then also gathers what the other I/O
    // callbacks of this loop iteration send (acks from several peers answered together), and it
    // still runs before the loop waits for I/O again.
    this.flushTimer ??= setImmediate(this.flush);
  }

  /** Writes the frames held for the end of this turn now. */
  flushNow(): void {
    if (this.flushTimer === null) return;
    clearImmediate(this.flushTimer);
    this.flush();
  }

  readdress(address: string): void {
    if (address === this.address || this.stopped) return;
    this.address = address;
    this.attempt = 0;
    this.clearRetry();
    this.discard(this.ws);
    this.failure = "";
    this.loggedFailure = "";
    this.setState("connecting");
    this.dial();
  }

  heartbeat(): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    if (this.missedPongs >= MISSED_PONGS_BEFORE_DEAD) {
      this.failure = `no pong for ${MISSED_PONGS_BEFORE_DEAD} heartbeats`;
      ws.terminate();
      return;
    }
    this.missedPongs++;
    ws.ping();
  }

  /** Stops for good: drops what is queued, stops reconnecting, and closes the socket. */
  stop(): Promise<void> {
    this.stopped = true;
    this.clearRetry();
    this.clearFlush();
    this.dropQueued();
    const ws = this.ws;
    this.ws = null;
    if (this.state !== "disconnected") this.setState("disconnected");
    return ws === null ? Promise.resolve() : terminate(ws);
  }

  private dial(): void {
    this.retryTimer = null;
    let ws: WebSocket;
    try {
      ws = new WebSocket(`ws://${this.address}${PEER_PATH}`, {
        headers: this.ctx.headers,
        maxPayload: this.ctx.maxFrameBytes,
        handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
        perMessageDeflate: false,
        // Masking guards browsers' proxies against cache poisoning; between members it only costs a
        // copy of every payload, and an all-zero mask makes ws skip it.
        generateMask: zeroMask,
      });
    } catch (err) {
      // The address passed checkAddress, so this is unexpected; retrying keeps the link alive.
      this.failure = `cannot dial: ${String(err)}`;
      this.down();
      return;
    }
    this.ws = ws;
    this.missedPongs = 0;
    this.batching = false;
    ws.on("upgrade", (res) => {
      if (this.ws === ws) this.batching = res.headers[FRAMES_HEADER] === FRAMES_BATCH;
    });
    ws.on("open", () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.failure = "";
      this.loggedFailure = "";
      this.setState("connected");
    });
    ws.on("message", (data, isBinary) => this.ctx.receive(this.peer, data, isBinary));
    ws.on("pong", () => {
      this.missedPongs = 0;
    });
    ws.on("error", (err) => {
      if (this.ws === ws) this.failure = err.message;
    });
    ws.on("close", (code) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.failure === "") this.failure = `closed by peer (code ${code})`;
      this.down();
    });
  }

  private down(): void {
    this.dropQueued();
    if (this.stopped) return;
    if (this.state !== "disconnected") {
      this.setState("disconnected");
    } else if (this.failure !== this.loggedFailure) {
      this.ctx.log.warn(
        { peer: this.peer, address: this.address, reason: this.failure },
        "peer link still disconnected",
      );
    }
    this.loggedFailure = this.failure;
    this.failure = "";
    const ceiling = Math.min(this.ctx.reconnectMaxMs, this.ctx.reconnectMinMs * 2 ** this.attempt);
    if (ceiling < this.ctx.reconnectMaxMs) this.attempt++;
    this.retryTimer = setTimeout(() => this.dial(), this.ctx.random() * ceiling);
  }

  private setState(state: LinkState): void {
    this.state = state;
    const fields: Record<string, string> = { peer: this.peer, address: this.address, state };
    if (state === "disconnected" && this.failure !== "") fields.reason = this.failure;
    this.ctx.log.info(fields, `peer link ${state}`);
    this.ctx.stateChanged(this.peer, state);
  }

  private enqueue(frame: Uint8Array): void {
    this.queue.push(frame);
    let dropped = 0;
    while (this.queue.bytes > this.ctx.maxQueueBytes) {
      this.queue.shift();
      dropped++;
    }
    if (dropped === 0) return;
    this.ctx.dropped(this.peer, dropped);
    const suppressed = this.ctx.limiter.allow(`${this.peer}\0queue`);
    if (suppressed !== null) {
      this.ctx.log.warn(
        { peer: this.peer, maxQueueBytes: this.ctx.maxQueueBytes, suppressed },
        "peer link congested: dropping the oldest queued messages",
      );
    }
  }

  /** Moves queued frames to the socket until it is above the high-water mark again. */
  private pump(): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    while (this.queue.length > 0 && ws.bufferedAmount < this.ctx.highWaterBytes)
      this.writeNext(ws, this.queue);
  }

  /** Writes the frame at the head of `from`, batched with as many following ones as fit. */
  private writeNext(ws: WebSocket, from: FrameQueue): void {
    const first = from.shift()!;
    if (!this.batching || from.length === 0) {
      this.write(ws, first);
      return;
    }
    const limit = Math.min(this.ctx.maxFrameBytes, MAX_BATCH_BYTES);
    const frames = [first];
    let bytes = first.length;
    for (let next = from.peek(); next !== undefined; next = from.peek()) {
      if (batchBytes(bytes + next.length, frames.length + 1) > limit) break;
      frames.push(from.shift()!);
      bytes += next.length;
    }
    // A lone frame goes as it is: a batch would only add its overhead.
    this.write(ws, frames.length === 1 ? first : encodeBatch(frames));
  }

  private write(ws: WebSocket, message: Uint8Array): void {
    ws.send(message, this.onWritten);
    this.ctx.wrote(this.peer);
  }

  private clearFlush(): void {
    if (this.flushTimer !== null) clearImmediate(this.flushTimer);
    this.flushTimer = null;
  }

  private dropQueued(): void {
    const n = this.pending.clear() + this.queue.clear();
    if (n > 0) this.ctx.dropped(this.peer, n);
  }

  /** Forgets the current socket (its events are ignored from now on) and closes it. */
  private discard(ws: WebSocket | null): void {
    this.ws = null;
    this.dropQueued();
    ws?.terminate();
  }

  private clearRetry(): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }
}

interface InboundLink {
  readonly member: string;
  readonly ws: WebSocket;
  idlePeriods: number;
}

export class PeerTransport {
  private readonly self: string;
  private readonly log: Logger;
  private readonly events: TransportEvents;
  private readonly maxFrameBytes: number;
  private readonly heartbeatMs: number;
  private readonly authDigest: Buffer | null;
  private readonly limiter = new LogLimiter();
  private readonly ctx: LinkContext;
  private readonly server: Server;
  private readonly wss: WebSocketServer;
  private peers: Map<string, string>;
  private readonly links = new Map<string, OutboundLink>();
  private readonly inbound = new Map<string, InboundLink>();
  private readonly sockets = new Set<Socket>();
  /** Links removed by setPeers whose sockets are still closing; close() waits for them. */
  private readonly stopping = new Set<Promise<void>>();
  private readonly rejected = new Map<string, Map<string, number>>();
  private readonly droppedCounts = new Map<string, number>();
  private readonly wsMessageCounts = new Map<string, number>();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private started = false;
  private closed = false;
  private closing: Promise<void> | null = null;

  constructor(private readonly opts: PeerTransportOptions) {
    if (!MEMBER_NAME.test(opts.self)) throw new Error(`invalid member name "${opts.self}"`);
    this.self = opts.self;
    this.log = opts.logger.child({ component: "peer-transport" });
    this.events = opts.events ?? {};
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.peers = this.checkPeers(opts.peers);
    const headers: Record<string, string> = { "X-Paxos-Member": this.self };
    if (opts.token !== undefined) headers.Authorization = `Bearer ${opts.token}`;
    // Compared as digests so timingSafeEqual always sees equal lengths and the length leaks nothing.
    this.authDigest = opts.token === undefined ? null : sha256(`Bearer ${opts.token}`);
    this.ctx = {
      headers,
      maxFrameBytes: this.maxFrameBytes,
      maxQueueBytes: opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES,
      highWaterBytes: opts.highWaterBytes ?? DEFAULT_HIGH_WATER_BYTES,
      reconnectMinMs: opts.reconnectMinMs ?? DEFAULT_RECONNECT_MIN_MS,
      reconnectMaxMs: opts.reconnectMaxMs ?? DEFAULT_RECONNECT_MAX_MS,
      random: opts.random ?? Math.random,
      log: this.log,
      limiter: this.limiter,
      stateChanged: (peer, state) => this.emit(() => this.events.linkState?.(peer, state)),
      dropped: (peer, count) => this.countDropped(peer, count),
      receive: (peer, data, isBinary) => this.receive(peer, data, isBinary),
      wrote: (peer) => this.wsMessageCounts.set(peer, (this.wsMessageCounts.get(peer) ?? 0) + 1),
    };
    this.server = createServer((_req, res) => {
      res.writeHead(426, { "Content-Type": "text/plain", Connection: "close" });
      res.end("peer links are WebSocket connections\n");
    });
    this.server.on("connection", (socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
    this.server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.upgrade(req, socket, head),
    );
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: this.maxFrameBytes,
      perMessageDeflate: false,
    });
    this.wss.on("headers", (headers) => headers.push(`${FRAMES_HEADER}: ${FRAMES_BATCH}`));
  }

  /** The actual listen port once start() has resolved. */
  get port(): number {
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("peer transport is not listening");
    return address.port;
  }

  async start(): Promise<void> {
    if (this.started) throw new Error("peer transport already started");
    if (this.closed) throw new Error("peer transport is closed");
    this.started = true;
    const { host, port } = this.opts;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void =>
        reject(new Error(`cannot listen for peers on ${host}:${port}: ${err.message}`));
      this.server.once("error", onError);
      this.server.listen(port, host, () => {
        this.server.off("error", onError);
        resolve();
      });
    });
    this.server.on("error", (err) => this.log.error({ err }, "peer listener error"));
    this.log.info({ member: this.self, address: `${host}:${this.port}` }, "listening for peers");
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs);
    for (const [peer, address] of this.peers) this.addLink(peer, address);
  }

  /** Never throws and never blocks, except that sending to oneself is a bug. */
  send(to: string, message: PeerMessage): void {
    if (to === this.self) throw new Error(`${this.self} cannot send ${message.type} to itself`);
    const link = this.links.get(to);
    // A missing or down link would drop the frame anyway: skip encoding it.
    if (link === undefined || !link.open) {
      this.countDropped(to, 1);
      if (!this.peers.has(to) && this.limiter.allow(`${to}\0unknown`) !== null) {
        this.log.warn({ peer: to, type: message.type }, "message to an unknown peer dropped");
      }
      return;
    }
    let frame: Uint8Array;
    try {
      frame = encodeFrame(message, this.maxFrameBytes);
    } catch (err) {
      this.log.error({ peer: to, type: message.type, err }, "cannot encode peer message; dropped");
      this.countDropped(to, 1);
      return;
    }
    link.send(frame);
  }

  /**
   * Writes at once what send() held for the end of the current turn, for a caller that has just
   * gathered a whole turn's messages itself: they leave one loop iteration sooner, still batched.
   */
  flush(): void {
    for (const link of this.links.values()) link.flushNow();
  }

  /** Adds, removes and readdresses links. Throws, changing nothing, when an address is malformed. */
  setPeers(peers: ReadonlyMap<string, string>): void {
    const next = this.checkPeers(peers);
    this.peers = next;
    if (!this.started || this.closed) return;
    for (const [peer, link] of this.links) {
      if (next.has(peer)) continue;
      this.links.delete(peer);
      this.log.info({ peer }, "peer removed");
      const done = link.stop();
      this.stopping.add(done);
      void done.then(() => this.stopping.delete(done));
    }
    for (const [peer, address] of next) {
      const link = this.links.get(peer);
      if (link === undefined) this.addLink(peer, address);
      else link.readdress(address);
    }
  }

  linkStates(): Record<string, LinkState> {
    const states: Record<string, LinkState> = {};
    for (const peer of this.peers.keys()) states[peer] = this.links.get(peer)?.state ?? "disconnected";
    return states;
  }

  stats(): TransportStats {
    const rejectedFrames: Record<string, Record<string, number>> = {};
    for (const [peer, reasons] of this.rejected) rejectedFrames[peer] = Object.fromEntries(reasons);
    const queuedBytes: Record<string, number> = {};
    for (const [peer, link] of this.links) queuedBytes[peer] = link.queuedBytes;
    return {
      rejectedFrames,
      dropped: Object.fromEntries(this.droppedCounts),
      queuedBytes,
      wsMessagesSent: Object.fromEntries(this.wsMessageCounts),
    };
  }

  /** Closes the listener and every link and stops reconnecting; leaves no socket or timer behind. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const waits: Promise<void>[] = [...this.stopping];
    for (const link of this.links.values()) waits.push(link.stop());
    this.links.clear();
    for (const { ws } of this.inbound.values()) waits.push(terminate(ws));
    this.inbound.clear();
    // Sockets still in the HTTP stage or refused mid-response.
    for (const socket of this.sockets) socket.destroy();
    this.wss.close();
    if (this.server.listening) {
      waits.push(new Promise((resolve) => this.server.close(() => resolve())));
    }
    await Promise.all(waits);
    if (this.started) this.log.info({ member: this.self }, "peer transport closed");
  }

  private checkPeers(peers: ReadonlyMap<string, string>): Map<string, string> {
    const checked = new Map<string, string>();
    for (const [peer, address] of peers) {
      if (peer === this.opts.self) continue;
      if (!MEMBER_NAME.test(peer)) throw new Error(`invalid member name "${peer}"`);
      checkAddress(peer, address);
      checked.set(peer, address);
    }
    return checked;
  }

  private addLink(peer: string, address: string): void {
    this.log.info({ peer, address, state: "connecting" }, "peer link connecting");
    this.ctx.stateChanged(peer, "connecting");
    this.links.set(peer, new OutboundLink(this.ctx, peer, address));
  }

  private heartbeat(): void {
    for (const link of this.links.values()) link.heartbeat();
    for (const link of this.inbound.values()) {
      if (++link.idlePeriods > IDLE_INBOUND_PERIODS) {
        this.log.info({ peer: link.member }, "inbound peer link silent; closing it");
        link.ws.terminate();
      }
    }
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", (err) => this.log.debug({ err }, "peer socket error during upgrade"));
    const remote = req.socket.remoteAddress;
    const claimed = req.headers[MEMBER_HEADER];
    const member = typeof claimed === "string" ? claimed : undefined;
    // Metric labels must not come from unauthenticated input: strangers count as "unknown".
    const label = member !== undefined && this.peers.has(member) ? member : UNKNOWN_PEER;
    const path = (req.url ?? "").split("?")[0];
    const channel = path === undefined || path === PEER_PATH ? undefined : this.opts.channels?.[path];
    if (path !== PEER_PATH && channel === undefined) {
      refuse(socket, 404, `no such path; peers connect to ${PEER_PATH}`);
      return;
    }
    if (this.authDigest !== null) {
      const presented = sha256(req.headers.authorization ?? "");
      if (!timingSafeEqual(presented, this.authDigest)) {
        refuse(socket, 401, "missing or wrong bearer token");
        this.reject(label, "auth", "peer link refused: missing or wrong token", { remote, member });
        return;
      }
    }
    if (member === undefined || !MEMBER_NAME.test(member) || member === this.self) {
      refuse(socket, 400, `missing or invalid ${MEMBER_HEADER} header`);
      this.reject(label, "member", `peer link refused: missing or invalid ${MEMBER_HEADER} header`, {
        remote,
        member,
      });
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      if (channel === undefined) this.acceptInbound(member, ws, remote);
      else if (this.closed) ws.terminate();
      else channel(ws, member);
    });
  }

  private acceptInbound(member: string, ws: WebSocket, remote: string | undefined): void {
    if (this.closed) {
      ws.terminate();
      return;
    }
    const link: InboundLink = { member, ws, idlePeriods: 0 };
    const previous = this.inbound.get(member);
    this.inbound.set(member, link);
    // A peer redials only after losing its link, so an older inbound one is dead or dying.
    previous?.ws.terminate();
    this.log.info({ peer: member, remote }, "inbound peer link open");
    ws.on("message", (data, isBinary) => {
      link.idlePeriods = 0;
      this.receive(member, data, isBinary);
    });
    ws.on("ping", () => {
      link.idlePeriods = 0;
    });
    ws.on("error", (err: Error & { code?: string }) => {
      if (err.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
        this.reject(member, "too_large", `frame over ${this.maxFrameBytes} bytes; link closed`);
      } else {
        this.log.debug({ peer: member, err }, "inbound peer link error");
      }
    });
    ws.on("close", () => {
      if (this.inbound.get(member) !== link) return;
      this.inbound.delete(member);
      if (!this.closed) this.log.info({ peer: member }, "inbound peer link closed");
    });
  }

  private receive(peer: string, data: RawData, isBinary: boolean): void {
    if (!isBinary) {
      this.reject(peer, "text", "text frame on a peer link");
      return;
    }
    const { messages, error } = decodeMessages(toBytes(data), this.maxFrameBytes);
    for (const message of messages) {
      try {
        this.opts.onMessage(peer, message);
      } catch (err) {
        const suppressed = this.limiter.allow(`${peer}\0handler`);
        if (suppressed !== null) {
          this.log.error({ peer, type: message.type, err, suppressed }, "peer message handler threw");
        }
      }
    }
    // However many inner frames it cut off, a malformed batch counts as one rejected frame.
    if (error !== null) this.reject(peer, error.reason, error.message);
  }

  private reject(peer: string, reason: string, detail: string, fields: Record<string, unknown> = {}): void {
    let reasons = this.rejected.get(peer);
    if (reasons === undefined) {
      reasons = new Map();
      this.rejected.set(peer, reasons);
    }
    reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
    this.emit(() => this.events.rejectedFrame?.(peer, reason));
    const suppressed = this.limiter.allow(`${peer}\0${reason}`);
    if (suppressed !== null) this.log.warn({ ...fields, peer, reason, suppressed }, detail);
  }

  private countDropped(peer: string, count: number): void {
    this.droppedCounts.set(peer, (this.droppedCounts.get(peer) ?? 0) + count);
    this.emit(() => this.events.dropped?.(peer, count));
  }

  /** Event callbacks run inside socket handlers, where a throw would escape as an uncaught error. */
  private emit(call: () => void): void {
    try {
      call();
    } catch (err) {
      if (this.limiter.allow("\0event") !== null) this.log.error({ err }, "transport event handler threw");
    }
  }
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

function refuse(socket: Duplex, status: number, message: string): void {
  const body = `${message}\n`;
  socket.once("finish", () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}
