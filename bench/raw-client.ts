import net from "node:net";
import type { RequestSpec } from "./load.js";

/** Larger responses mean something is wrong with the server or the parser; stop buffering. */
const MAX_RESPONSE_BYTES = 1 << 20;

interface Pending {
  resolve: () => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

interface Parsed {
  status: number;
  body: Buffer;
  /** Bytes of the buffer the response used. */
  length: number;
  close: boolean;
}

/**
 * Parses one HTTP/1.1 response from the front of `buf`, or returns undefined while it is
 * incomplete. Handles Content-Length and chunked bodies, which is all a keep-alive server can
 * send without closing the connection.
 */
export function parseResponse(buf: Buffer): Parsed | undefined {
  const headEnd = buf.indexOf("\r\n\r\n");
  if (headEnd < 0) {
    if (buf.length > MAX_RESPONSE_BYTES) throw new Error("response head too large");
    return undefined;
  }
  const lines = buf.subarray(0, headEnd).toString("latin1").split("\r\n");
  const statusMatch = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? "");
  if (!statusMatch) throw new Error(`malformed status line: ${JSON.stringify(lines[0]?.slice(0, 80))}`);
  let contentLength: number | undefined;
  let chunked = false;
  let close = false;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line
      .slice(colon + 1)
      .trim()
      .toLowerCase();
    if (name === "content-length") contentLength = Number(value);
    else if (name === "transfer-encoding") chunked = value.split(",").some((v) => v.trim() === "chunked");
    else if (name === "connection") close = value === "close";
  }
  const bodyStart = headEnd + 4;
  const status = Number(statusMatch[1]);
  if (chunked) {
    const parts: Buffer[] = [];
    let at = bodyStart;
    for (;;) {
      const lineEnd = buf.indexOf("\r\n", at);
      if (lineEnd < 0) return undefined;
      const size = Number.parseInt(buf.subarray(at, lineEnd).toString("latin1"), 16);
      if (!Number.isFinite(size) || size < 0) throw new Error("malformed chunk size");
      if (size === 0) {
        // No trailers expected: the terminating chunk is followed by an empty line.
        const end = buf.indexOf("\r\n\r\n", lineEnd);
        if (end < 0) return undefined;
        return { status, body: Buffer.concat(parts), length: end + 4, close };
      }
      const dataEnd = lineEnd + 2 + size;
      if (buf.length < dataEnd + 2) return undefined;
      parts.push(buf.subarray(lineEnd + 2, dataEnd));
      at = dataEnd + 2;
    }
  }
  if (contentLength === undefined || !Number.isInteger(contentLength) || contentLength < 0) {
    throw new Error("response has neither a valid Content-Length nor chunked encoding");
  }
  if (contentLength > MAX_RESPONSE_BYTES)
    throw new Error(`response body of ${contentLength} bytes is too large`);
  if (buf.length < bodyStart + contentLength) return undefined;
  return {
    status,
    body: buf.subarray(bodyStart, bodyStart + contentLength),
    length: bodyStart + contentLength,
    close,
  };
}

/**
 * One keep-alive HTTP/1.1 connection with one request at a time: each request is a single
 * write, each response is parsed in place. It costs the load generator about half the CPU of
 * node:http's client, CPU the members under test would otherwise lose on a small machine.
 * A failed connection is dropped and the next request opens a new one.
 */
export class RawConnection {
  private socket: net.Socket | undefined;
  private buffered: Buffer = Buffer.alloc(0);
  private pending: Pending | undefined;

  constructor(private readonly port: number) {}

  /** Resolves on a 200 answer; rejects with the status and body of any other. */
  request(spec: RequestSpec, timeoutMs: number): Promise<void> {
    if (this.pending) return Promise.reject(new Error("a request is already in flight on this connection"));
    const socket = this.socket ?? this.connect();
    const head =
      `${spec.method} ${spec.path} HTTP/1.1\r\nHost: 127.0.0.1:${this.port}\r\n` +
      `Content-Type: ${spec.contentType}\r\nContent-Length: ${spec.body.length}\r\n\r\n`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      this.pending = { resolve, reject, timer };
      socket.write(Buffer.concat([Buffer.from(head, "latin1"), spec.body]));
    });
  }

  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
  }

  private connect(): net.Socket {
    const socket = net.connect({ host: "127.0.0.1", port: this.port, noDelay: true });
    this.socket = socket;
    this.buffered = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (err) => this.fail(err));
    socket.on("close", () => {
      if (this.socket === socket) this.fail(new Error("connection closed by the server"));
    });
    return socket;
  }

  private onData(chunk: Buffer): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    let parsed: Parsed | undefined;
    try {
      parsed = parseResponse(this.buffered);
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    if (!parsed) return;
    const pending = this.pending;
    if (!pending || parsed.length !== this.buffered.length) {
      this.fail(new Error("server sent bytes no request asked for"));
      return;
    }
    this.pending = undefined;
    this.buffered = Buffer.alloc(0);
    clearTimeout(pending.timer);
    if (parsed.close) this.close();
    if (parsed.status === 200) pending.resolve();
    else
      pending.reject(new Error(`HTTP ${parsed.status} ${parsed.body.toString("utf8").slice(0, 200).trim()}`));
  }

  /** Drops the connection: after an error its byte stream can no longer be trusted. */
  private fail(err: Error): void {
    const pending = this.pending;
    this.pending = undefined;
    this.close();
    if (pending) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
  }
}
