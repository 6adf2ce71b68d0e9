// One member of the reference system of `npm run bench:floor`: the least work any three-member
// replicated store written in Node must do per write on this machine, with none of paxos-node's
// protocol, storage engine or state machine. It answers what a faster paxos-node could reach at
// best, measured next to etcd in the same run.
//
//   master:   node reference-member.js master <httpPort> <file> <followerPort>,<followerPort>
//   follower: node reference-member.js follower <peerPort> <file>
//   bare:     node reference-member.js bare <httpPort>
//
// `bare` answers every PUT at once, durable nowhere: the cost of HTTP alone, for the server and
// the load generator sharing the machine.
//
// The master answers PUT on node:http. The requests of one event-loop turn form one batch: it goes
// to both followers over plain TCP before the master appends the batch to its own file with a
// blocking write + fdatasync, and each request is answered once the master's copy and one
// follower's copy are synced (two of three, as a majority quorum needs). A follower syncs once per
// socket read, however many batches that read carried, and acknowledges them all in one write.
// Files are preallocated and rewritten in place, so an fdatasync writes data only: the cheapest
// durable append this file system offers (etcd does the same with its WAL segments).
//
// Wire format, both ways: [u32 length][u32 batch id][payload], little-endian; acks carry no payload.

import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import { createServer as createHttpServer, type ServerResponse } from "node:http";
import { connect, createServer, type Socket } from "node:net";

const FILE_BYTES = 64 * 1024 * 1024;
const HEADER_BYTES = 8;

class DurableFile {
  private readonly fd: number;
  private offset = 0;

  constructor(path: string) {
    this.fd = openSync(path, "w");
    const zeros = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < FILE_BYTES; at += zeros.length) writeSync(this.fd, zeros, 0, zeros.length, at);
    fdatasyncSync(this.fd);
  }

  append(chunks: readonly Buffer[]): void {
    const bytes = Buffer.concat(chunks);
    if (this.offset + bytes.length > FILE_BYTES) this.offset = 0;
    writeSync(this.fd, bytes, 0, bytes.length, this.offset);
    fdatasyncSync(this.fd);
    this.offset += bytes.length;
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Splits a byte stream into frames. */
class FrameReader {
  private pending: Buffer = Buffer.alloc(0);

  push(data: Buffer): { id: number; payload: Buffer }[] {
    this.pending = this.pending.length === 0 ? data : Buffer.concat([this.pending, data]);
    const frames: { id: number; payload: Buffer }[] = [];
    let at = 0;
    while (this.pending.length - at >= HEADER_BYTES) {
      const length = this.pending.readUInt32LE(at);
      if (this.pending.length - at - HEADER_BYTES < length) break;
      const id = this.pending.readUInt32LE(at + 4);
      frames.push({ id, payload: this.pending.subarray(at + HEADER_BYTES, at + HEADER_BYTES + length) });
      at += HEADER_BYTES + length;
    }
    this.pending = this.pending.subarray(at);
    return frames;
  }
}

function frame(id: number, payload: Buffer): Buffer {
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt32LE(id, 4);
  return payload.length === 0 ? header : Buffer.concat([header, payload]);
}

function runFollower(port: number, file: DurableFile): void {
  const server = createServer((socket) => {
    socket.setNoDelay(true);
    const reader = new FrameReader();
    socket.on("data", (data: Buffer) => {
      const frames = reader.push(data);
      if (frames.length === 0) return;
      file.append(frames.map((f) => f.payload));
      socket.write(Buffer.concat(frames.map((f) => frame(f.id, Buffer.alloc(0)))));
    });
    socket.on("error", () => socket.destroy());
  });
  server.listen(port, "127.0.0.1", () => console.log(`follower listening on ${port}`));
  process.on("SIGTERM", () => {
    server.close();
    file.close();
    process.exit(0);
  });
}

interface Batch {
  readonly responses: ServerResponse[];
  ownSynced: boolean;
  followerAcks: number;
}

async function runMaster(httpPort: number, file: DurableFile, followerPorts: number[]): Promise<void> {
  const followers: Socket[] = await Promise.all(
    followerPorts.map(
      (port) =>
        new Promise<Socket>((resolve, reject) => {
          const socket = connect(port, "127.0.0.1", () => resolve(socket));
          socket.setNoDelay(true);
          socket.once("error", reject);
        }),
    ),
  );
  const batches = new Map<number, Batch>();
  let nextId = 1;
  let pendingBodies: Buffer[] = [];
  let pendingResponses: ServerResponse[] = [];
  let flushScheduled = false;

  const answerIfDurable = (id: number, batch: Batch) => {
    if (!batch.ownSynced || batch.followerAcks < 1) return;
    batches.delete(id);
    for (const res of batch.responses) res.end();
  };
  for (const socket of followers) {
    const reader = new FrameReader();
    socket.on("data", (data: Buffer) => {
      for (const { id } of reader.push(data)) {
        const batch = batches.get(id);
        if (batch === undefined) continue;
        batch.followerAcks++;
        answerIfDurable(id, batch);
      }
    });
  }

  const flush = () => {
    flushScheduled = false;
    const id = nextId++;
    const batch: Batch = { responses: pendingResponses, ownSynced: false, followerAcks: 0 };
    const payload = Buffer.concat(pendingBodies);
    pendingBodies = [];
    pendingResponses = [];
    batches.set(id, batch);
    const message = frame(id, payload);
    for (const socket of followers) socket.write(message);
    file.append([payload]);
    batch.ownSynced = true;
    answerIfDurable(id, batch);
  };

  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      pendingBodies.push(Buffer.from(req.url ?? ""), ...chunks);
      pendingResponses.push(res);
      if (!flushScheduled) {
        flushScheduled = true;
        // As paxos-node does: an idle master sends at once, a busy one gathers a turn's requests.
        if (batches.size === 0) process.nextTick(flush);
        else setImmediate(flush);
      }
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(httpPort, "127.0.0.1", () => console.log(`master listening on ${httpPort}`));
  process.on("SIGTERM", () => {
    server.close();
    server.closeAllConnections();
    for (const socket of followers) socket.destroy();
    file.close();
    process.exit(0);
  });
}

function runBare(httpPort: number): void {
  const server = createHttpServer((req, res) => {
    req.resume();
    req.on("end", () => res.end());
  });
  server.keepAliveTimeout = 60_000;
  server.listen(httpPort, "127.0.0.1", () => console.log(`bare server listening on ${httpPort}`));
  process.on("SIGTERM", () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

const [role, port, path, peers] = process.argv.slice(2);
if (role === "bare" && port !== undefined) runBare(Number(port));
else if ((role === "master" || role === "follower") && port !== undefined && path !== undefined) {
  const file = new DurableFile(path);
  if (role === "follower") runFollower(Number(port), file);
  else await runMaster(Number(port), file, (peers ?? "").split(",").map(Number));
} else {
  console.error(
    "usage: reference-member.js master <httpPort> <file> <port>,<port> | follower <port> <file> | bare <httpPort>",
  );
  process.exit(2);
}
