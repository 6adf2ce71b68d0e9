// Compact binary encoding of the core's data, shared by the transport (frames) and the storage
// (records). Pure: bytes in, values out. Every decoder throws CodecError on malformed input and
// never reads past the buffer, so random bytes can only ever produce that error.

import type {
  AcceptedEntry,
  Ballot,
  ChosenEntry,
  Configuration,
  LogRecord,
  Member,
  Message,
  Value,
} from "./types.js";

export class CodecError extends Error {
  override readonly name = "CodecError";
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** Upper bounds that keep a hostile length prefix from allocating unbounded memory. */
const MAX_STRING_BYTES = 4096;
const MAX_LIST_LENGTH = 1 << 20;

export class Writer {
  private buf: Uint8Array;
  private view: DataView;
  private pos = 0;

  constructor(initialSize = 256) {
    this.buf = new Uint8Array(initialSize);
    this.view = new DataView(this.buf.buffer);
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): this {
    this.reserve(1);
    this.buf[this.pos++] = v;
    return this;
  }

  u32(v: number): this {
    this.reserve(4);
    this.view.setUint32(this.pos, v);
    this.pos += 4;
    return this;
  }

  /** Non-negative safe integers (instance numbers, counters) as 8 bytes. */
  uint(v: number): this {
    if (!Number.isSafeInteger(v) || v < 0) throw new CodecError(`not a non-negative safe integer: ${v}`);
    this.reserve(8);
    this.view.setBigUint64(this.pos, BigInt(v));
    this.pos += 8;
    return this;
  }

  /** A position in the log that may be -1 ("none yet"), such as a chosen point. */
  point(v: number): this {
    if (!Number.isSafeInteger(v) || v < -1) throw new CodecError(`not a log position: ${v}`);
    return this.uint(v + 1);
  }

  bytes(v: Uint8Array): this {
    this.u32(v.length);
    this.reserve(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
    return this;
  }

  string(v: string): this {
    const b = textEncoder.encode(v);
    if (b.length > MAX_STRING_BYTES) throw new CodecError(`string too long: ${b.length} bytes`);
    return this.bytes(b);
  }

  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }
}

export class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw new CodecError("truncated input");
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  uint(): number {
    this.need(8);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CodecError("integer out of range");
    return Number(v);
  }

  point(): number {
    return this.uint() - 1;
  }

  bytes(): Uint8Array {
    const n = this.u32();
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  string(): string {
    const b = this.bytes();
    if (b.length > MAX_STRING_BYTES) throw new CodecError("string too long");
    try {
      return textDecoder.decode(b);
    } catch {
      throw new CodecError("invalid UTF-8");
    }
  }

  listLength(): number {
    const n = this.u32();
    if (n > MAX_LIST_LENGTH) throw new CodecError(`list too long: ${n}`);
    return n;
  }

  bool(): boolean {
    const v = this.u8();
    if (v > 1) throw new CodecError(`invalid boolean: ${v}`);
    return v === 1;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  end(): void {
    if (this.pos !== this.buf.length) throw new CodecError(`${this.remaining} trailing bytes`);
  }
}

export function writeBallot(w: Writer, b: Ballot): void {
  w.uint(b.counter).string(b.member);
}

export function readBallot(r: Reader): Ballot {
  const counter = r.uint();
  const member = r.string();
  return { counter, member };
}

// Value tags and member roles are part of the log format and the peer protocol: never renumber.
const VALUE_NOOP = 0;
const VALUE_COMMANDS = 1;
const VALUE_CONFIG = 2;
const ROLE_VOTER = 0;
const ROLE_LEARNER = 1;
/** A configuration is small by nature; the bound keeps a hostile count from allocating much. */
const MAX_MEMBERS = 1024;

export function writeConfiguration(w: Writer, c: Configuration): void {
  w.u32(c.members.length);
  for (const m of c.members) {
    w.string(m.name).string(m.address);
    w.u8(m.role === "voter" ? ROLE_VOTER : ROLE_LEARNER);
  }
}

export function readConfiguration(r: Reader): Configuration {
  const n = r.listLength();
  if (n > MAX_MEMBERS) throw new CodecError(`too many members: ${n}`);
  const members: Member[] = [];
  for (let i = 0; i < n; i++) {
    const name = r.string();
    const address = r.string();
    const role = r.u8();
    if (role !== ROLE_VOTER && role !== ROLE_LEARNER) throw new CodecError(`unknown member role ${role}`);
    members.push({ name, address, role: role === ROLE_VOTER ? "voter" : "learner" });
  }
  return { members };
}

export function writeValue(w: Writer, v: Value): void {
  switch (v.kind) {
    case "noop":
      w.u8(VALUE_NOOP).string(v.id);
      return;
    case "commands":
      w.u8(VALUE_COMMANDS).string(v.id).u32(v.commands.length);
      for (const c of v.commands) w.bytes(c);
      return;
    case "config":
      w.u8(VALUE_CONFIG).string(v.id);
      writeConfiguration(w, v.config);
      return;
  }
}

export function readValue(r: Reader): Value {
  const kind = r.u8();
  const id = r.string();
  switch (kind) {
    case VALUE_NOOP:
      return { kind: "noop", id };
    case VALUE_COMMANDS: {
      const n = r.listLength();
      const commands: Uint8Array[] = [];
      for (let i = 0; i < n; i++) commands.push(r.bytes());
      return { kind: "commands", id, commands };
    }
    case VALUE_CONFIG:
      return { kind: "config", id, config: readConfiguration(r) };
    default:
      throw new CodecError(`unknown value kind ${kind}`);
  }
}

/** Bytes a value occupies once encoded; used to bound batches and replies. */
export function valueSize(v: Value): number {
  let size = 1 + 4 + v.id.length * 3;
  if (v.kind === "commands") {
    size += 4;
    for (const c of v.commands) size += 4 + c.length;
  } else if (v.kind === "config") {
    size += 4;
    for (const m of v.config.members) size += 9 + (m.name.length + m.address.length) * 3;
  }
  return size;
}

function writeChosenEntries(w: Writer, entries: readonly ChosenEntry[]): void {
  w.u32(entries.length);
  for (const e of entries) {
    w.uint(e.instance);
    writeValue(w, e.value);
  }
}

function readChosenEntries(r: Reader): ChosenEntry[] {
  const n = r.listLength();
  const out: ChosenEntry[] = [];
  for (let i = 0; i < n; i++) out.push({ instance: r.uint(), value: readValue(r) });
  return out;
}

function writeAcceptedEntries(w: Writer, entries: readonly AcceptedEntry[]): void {
  w.u32(entries.length);
  for (const e of entries) {
    w.uint(e.instance);
    writeBallot(w, e.ballot);
    writeValue(w, e.value);
  }
}

function readAcceptedEntries(r: Reader): AcceptedEntry[] {
  const n = r.listLength();
  const out: AcceptedEntry[] = [];
  for (let i = 0; i < n; i++) out.push({ instance: r.uint(), ballot: readBallot(r), value: readValue(r) });
  return out;
}

/** Wire numbers of message types: part of the peer protocol, never renumber. */
export const MESSAGE_TYPE_CODES = {
  prepare: 1,
  promise: 2,
  accept: 3,
  accepted: 4,
  reject: 5,
  commit: 6,
  commitAck: 7,
  learnRequest: 8,
  learnReply: 9,
  handover: 10,
} as const satisfies Record<Message["type"], number>;

export function writeMessageBody(w: Writer, m: Message): void {
  switch (m.type) {
    case "prepare":
      writeBallot(w, m.ballot);
      w.uint(m.from);
      return;
    case "promise":
      writeBallot(w, m.ballot);
      w.point(m.chosenUpTo);
      writeAcceptedEntries(w, m.accepted);
      return;
    case "accept":
      writeBallot(w, m.ballot);
      writeChosenEntries(w, m.entries);
      return;
    case "accepted":
      writeBallot(w, m.ballot);
      w.u32(m.instances.length);
      for (const i of m.instances) w.uint(i);
      return;
    case "reject":
      writeBallot(w, m.ballot);
      writeBallot(w, m.promised);
      w.string(m.master ?? "");
      return;
    case "commit":
      writeBallot(w, m.ballot);
      w.uint(m.from).point(m.to).uint(m.readSeq);
      return;
    case "commitAck":
      writeBallot(w, m.ballot);
      w.u8(m.ok ? 1 : 0)
        .uint(m.readSeq)
        .point(m.chosenUpTo);
      return;
    case "learnRequest":
      w.uint(m.from);
      return;
    case "learnReply":
      writeChosenEntries(w, m.entries);
      w.point(m.chosenUpTo);
      return;
    case "handover":
      writeBallot(w, m.ballot);
      w.string(m.to);
      return;
  }
}

export function readMessageBody(code: number, r: Reader): Message {
  let m: Message;
  switch (code) {
    case MESSAGE_TYPE_CODES.prepare:
      m = { type: "prepare", ballot: readBallot(r), from: r.uint() };
      break;
    case MESSAGE_TYPE_CODES.promise:
      m = { type: "promise", ballot: readBallot(r), chosenUpTo: r.point(), accepted: readAcceptedEntries(r) };
      break;
    case MESSAGE_TYPE_CODES.accept:
      m = { type: "accept", ballot: readBallot(r), entries: readChosenEntries(r) };
      break;
    case MESSAGE_TYPE_CODES.accepted: {
      const ballot = readBallot(r);
      const n = r.listLength();
      const instances: number[] = [];
      for (let i = 0; i < n; i++) instances.push(r.uint());
      m = { type: "accepted", ballot, instances };
      break;
    }
    case MESSAGE_TYPE_CODES.reject: {
      const ballot = readBallot(r);
      const promised = readBallot(r);
      const master = r.string();
      m = { type: "reject", ballot, promised, master: master === "" ? null : master };
      break;
    }
    case MESSAGE_TYPE_CODES.commit:
      m = { type: "commit", ballot: readBallot(r), from: r.uint(), to: r.point(), readSeq: r.uint() };
      break;
    case MESSAGE_TYPE_CODES.commitAck:
      m = {
        type: "commitAck",
        ballot: readBallot(r),
        ok: r.bool(),
        readSeq: r.uint(),
        chosenUpTo: r.point(),
      };
      break;
    case MESSAGE_TYPE_CODES.learnRequest:
      m = { type: "learnRequest", from: r.uint() };
      break;
    case MESSAGE_TYPE_CODES.learnReply:
      m = { type: "learnReply", entries: readChosenEntries(r), chosenUpTo: r.point() };
      break;
    case MESSAGE_TYPE_CODES.handover:
      m = { type: "handover", ballot: readBallot(r), to: r.string() };
      break;
    default:
      throw new CodecError(`unknown message type ${code}`);
  }
  r.end();
  return m;
}

export function encodeRecord(rec: LogRecord): Uint8Array {
  const w = new Writer(64);
  w.uint(rec.instance);
  writeBallot(w, rec.ballot);
  w.u8(rec.chosen ? 1 : 0);
  writeValue(w, rec.value);
  return w.finish();
}

export function decodeRecord(buf: Uint8Array): LogRecord {
  const r = new Reader(buf);
  const instance = r.uint();
  const ballot = readBallot(r);
  const chosen = r.bool();
  const value = readValue(r);
  r.end();
  return { instance, ballot, chosen, value };
}
