// Everything that travels on a peer link: the core's messages plus the runtime's own requests
// between members (client writes forwarded to the master, read-index queries). The runtime
// messages use type codes from 64 up so the core can grow without renumbering.

import {
  CodecError,
  MESSAGE_TYPE_CODES,
  Reader,
  readMessageBody,
  Writer,
  writeMessageBody,
} from "../paxos/codec.js";
import type { Message } from "../paxos/types.js";

export type ForwardOutcome = "ok" | "not_master" | "no_quorum" | "overloaded" | "timeout";
export type ReadIndexOutcome = "ok" | "not_master" | "timeout";

export type RuntimeMessage =
  /** A client write sent to the master; `command` is an encoded state machine command. */
  | { readonly type: "forward"; readonly requestId: number; readonly command: Uint8Array }
  /** The master's answer to a forward; `instance` (>= -1) is meaningful only when `outcome` is "ok". */
  | {
      readonly type: "forwardReply";
      readonly requestId: number;
      readonly outcome: ForwardOutcome;
      readonly instance: number;
    }
  /** A follower asks the master for a read index. */
  | { readonly type: "readIndex"; readonly requestId: number }
  /**
   * The master's answer; `index` is the log position to wait for (-1 when nothing is chosen yet),
   * meaningful only when `outcome` is "ok".
   */
  | {
      readonly type: "readIndexReply";
      readonly requestId: number;
      readonly outcome: ReadIndexOutcome;
      readonly index: number;
    }
  /**
   * The answer to a learn request for `from` when this member's log no longer holds it: the
   * cleaner has deleted everything below `minKept`, and `checkpoint` is the instance of the
   * checkpoint this member can send instead (-1 when it has none).
   */
  | {
      readonly type: "learnCompacted";
      readonly from: number;
      readonly minKept: number;
      readonly checkpoint: number;
    };

export type PeerMessage = Message | RuntimeMessage;
export type PeerMessageType = PeerMessage["type"];

/** Wire numbers of the runtime messages: part of the peer protocol, never renumber. */
export const RUNTIME_MESSAGE_TYPE_CODES = {
  forward: 64,
  forwardReply: 65,
  readIndex: 66,
  readIndexReply: 67,
  learnCompacted: 68,
} as const satisfies Record<RuntimeMessage["type"], number>;

export const PEER_MESSAGE_TYPE_CODES = {
  ...MESSAGE_TYPE_CODES,
  ...RUNTIME_MESSAGE_TYPE_CODES,
} as const satisfies Record<PeerMessageType, number>;

const KNOWN_TYPE_CODES: ReadonlySet<number> = new Set(Object.values(PEER_MESSAGE_TYPE_CODES));

// Outcomes travel as one byte; the position in the list is the wire number, so only ever append.
const FORWARD_OUTCOMES: readonly ForwardOutcome[] = [
  "ok",
  "not_master",
  "no_quorum",
  "overloaded",
  "timeout",
];
const READ_INDEX_OUTCOMES: readonly ReadIndexOutcome[] = ["ok", "not_master", "timeout"];

export function isCoreMessage(m: PeerMessage): m is Message {
  return Object.hasOwn(MESSAGE_TYPE_CODES, m.type);
}

export function isKnownTypeCode(code: number): boolean {
  return KNOWN_TYPE_CODES.has(code);
}

export function peerMessageTypeCode(m: PeerMessage): number {
  return PEER_MESSAGE_TYPE_CODES[m.type];
}

function outcomeCode<T extends string>(outcomes: readonly T[], outcome: T): number {
  const code = outcomes.indexOf(outcome);
  if (code < 0) throw new CodecError(`unknown outcome ${outcome}`);
  return code;
}

function readOutcome<T extends string>(outcomes: readonly T[], r: Reader): T {
  const code = r.u8();
  const outcome = outcomes[code];
  if (outcome === undefined) throw new CodecError(`unknown outcome code ${code}`);
  return outcome;
}

/** Appends the body of `m` (without its type code) to `w`. Throws CodecError for unencodable fields. */
export function writePeerMessageBody(w: Writer, m: PeerMessage): void {
  switch (m.type) {
    case "forward":
      w.uint(m.requestId).bytes(m.command);
      return;
    case "forwardReply":
      w.uint(m.requestId).u8(outcomeCode(FORWARD_OUTCOMES, m.outcome)).point(m.instance);
      return;
    case "readIndex":
      w.uint(m.requestId);
      return;
    case "readIndexReply":
      w.uint(m.requestId).u8(outcomeCode(READ_INDEX_OUTCOMES, m.outcome)).point(m.index);
      return;
    case "learnCompacted":
      w.uint(m.from).uint(m.minKept).point(m.checkpoint);
      return;
    default:
      writeMessageBody(w, m);
  }
}

/** Reads a whole body of type `code` from `r`. Throws CodecError on anything malformed or left over. */
export function readPeerMessageBody(code: number, r: Reader): PeerMessage {
  let m: RuntimeMessage;
  switch (code) {
    case RUNTIME_MESSAGE_TYPE_CODES.forward:
      m = { type: "forward", requestId: r.uint(), command: r.bytes() };
      break;
    case RUNTIME_MESSAGE_TYPE_CODES.forwardReply:
      m = {
        type: "forwardReply",
        requestId: r.uint(),
        outcome: readOutcome(FORWARD_OUTCOMES, r),
        instance: r.point(),
      };
      break;
    case RUNTIME_MESSAGE_TYPE_CODES.readIndex:
      m = { type: "readIndex", requestId: r.uint() };
      break;
    case RUNTIME_MESSAGE_TYPE_CODES.readIndexReply:
      m = {
        type: "readIndexReply",
        requestId: r.uint(),
        outcome: readOutcome(READ_INDEX_OUTCOMES, r),
        index: r.point(),
      };
      break;
    case RUNTIME_MESSAGE_TYPE_CODES.learnCompacted:
      m = { type: "learnCompacted", from: r.uint(), minKept: r.uint(), checkpoint: r.point() };
      break;
    default:
      return readMessageBody(code, r);
  }
  r.end();
  return m;
}

/** The body of `m` alone; its type code is `peerMessageTypeCode(m)`. */
export function encodePeerMessage(m: PeerMessage): Uint8Array {
  const w = new Writer(64);
  writePeerMessageBody(w, m);
  return w.finish();
}

/** Inverse of encodePeerMessage. Throws CodecError on malformed input or an unknown type. */
export function decodePeerMessage(type: number, payload: Uint8Array): PeerMessage {
  return readPeerMessageBody(type, new Reader(payload));
}
