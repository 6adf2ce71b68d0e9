// Data shared by the consensus core, the storage layer and the transport. Pure data: no I/O.

/** A member's stable name, e.g. `kv-0`. Never an address. */
export type MemberId = string;

/**
 * A proposal number. Ordered by `counter`, then by `member`, so two proposers never share one.
 * A member never reuses a counter: it persists its own promise before it sends a Prepare.
 */
export interface Ballot {
  readonly counter: number;
  readonly member: MemberId;
}

export const ZERO_BALLOT: Ballot = Object.freeze({ counter: 0, member: "" });

export function compareBallots(a: Ballot, b: Ballot): number {
  if (a.counter !== b.counter) return a.counter < b.counter ? -1 : 1;
  if (a.member === b.member) return 0;
  return a.member < b.member ? -1 : 1;
}

export function ballotsEqual(a: Ballot, b: Ballot): boolean {
  return a.counter === b.counter && a.member === b.member;
}

export function formatBallot(b: Ballot): string {
  return `${b.counter}.${b.member}`;
}

export type MemberRole = "voter" | "learner";

/**
 * One member of a configuration. Voters accept values and make up quorums; learners receive
 * chosen values only. The address travels with the name because a learner joins with its own.
 */
export interface Member {
  readonly name: MemberId;
  readonly address: string;
  readonly role: MemberRole;
}

/** The membership of the group: which members vote and which only learn. */
export interface Configuration {
  readonly members: readonly Member[];
}

/** One step from a configuration to the next (one change at a time). */
export type ConfigChange =
  | { readonly kind: "addLearner"; readonly name: MemberId; readonly address: string }
  | { readonly kind: "promote"; readonly name: MemberId }
  | { readonly kind: "remove"; readonly name: MemberId };

/**
 * What one instance decides. `id` is unique per proposal (member, incarnation, sequence), so the
 * proposer recognises its own value when a later master re-proposes it.
 * `commands` are opaque to the core: the state machine layer encodes and decodes them.
 */
export type Value =
  | { readonly kind: "noop"; readonly id: string }
  | { readonly kind: "commands"; readonly id: string; readonly commands: readonly Uint8Array[] }
  /** A new configuration, in force from a fixed number of instances after the one that chooses it. */
  | { readonly kind: "config"; readonly id: string; readonly config: Configuration };

/** An acceptor's vote for one instance. */
export interface AcceptedEntry {
  readonly instance: number;
  readonly ballot: Ballot;
  readonly value: Value;
}

/** A value known to be chosen at `instance`. */
export interface ChosenEntry {
  readonly instance: number;
  readonly value: Value;
}

/** One PaxosLog record as stored: the acceptor's vote, and whether the value is known chosen. */
export interface LogRecord {
  readonly instance: number;
  readonly ballot: Ballot;
  readonly value: Value;
  readonly chosen: boolean;
}

/** Peer-to-peer messages of the core. Transport frames carry exactly these. */
export type Message =
  /** Phase 1a: a promise asked for every instance >= `from`. */
  | { readonly type: "prepare"; readonly ballot: Ballot; readonly from: number }
  /** Phase 1b: votes above the acceptor's contiguous chosen point, and that point. */
  | {
      readonly type: "promise";
      readonly ballot: Ballot;
      readonly chosenUpTo: number;
      readonly accepted: readonly AcceptedEntry[];
    }
  /** Phase 2a for several instances at once (pipelining). */
  | { readonly type: "accept"; readonly ballot: Ballot; readonly entries: readonly ChosenEntry[] }
  /** Phase 2b. */
  | { readonly type: "accepted"; readonly ballot: Ballot; readonly instances: readonly number[] }
  /** A refusal: the acceptor has promised `promised`, which is higher than the ballot asked for. */
  | {
      readonly type: "reject";
      readonly ballot: Ballot;
      readonly promised: Ballot;
      readonly master: MemberId | null;
    }
  /**
   * The master's heartbeat and commit notice: every instance in [from, to] was chosen at `ballot`
   * by a majority that accepted exactly this ballot; instances below `from` are chosen too, but
   * must be learned. `readSeq` numbers read-index confirmation rounds.
   */
  | {
      readonly type: "commit";
      readonly ballot: Ballot;
      readonly from: number;
      readonly to: number;
      readonly readSeq: number;
    }
  /** Answer to a commit: `ok` when the member has promised nothing above `ballot`. */
  | {
      readonly type: "commitAck";
      readonly ballot: Ballot;
      readonly ok: boolean;
      readonly readSeq: number;
      readonly chosenUpTo: number;
    }
  /** Ask a peer for chosen values from `from` on (the answer is bounded). */
  | { readonly type: "learnRequest"; readonly from: number }
  /** Chosen values, in instance order; `chosenUpTo` is the sender's contiguous chosen point. */
  | { readonly type: "learnReply"; readonly entries: readonly ChosenEntry[]; readonly chosenUpTo: number }
  /**
   * The master at `ballot` hands over to `to`: `to` campaigns at once; every other member treats
   * `to` as the live master, so it accepts `to`'s Prepare and refuses everyone else's for a while.
   */
  | { readonly type: "handover"; readonly ballot: Ballot; readonly to: MemberId };

export type MessageType = Message["type"];

export interface Envelope {
  readonly to: MemberId;
  readonly message: Message;
}
