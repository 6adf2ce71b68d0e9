// What the HTTP layer needs from a running member. The runtime implements it; the server only
// parses, validates, maps errors to status codes and serialises.

/** An error with a stable code, mapped to an HTTP status by the server. */
export class ServiceError extends Error {
  override readonly name = "ServiceError";
  constructor(
    readonly code:
      | "no_quorum" // certainly not proposed: safe to retry (503 + Retry-After)
      | "timeout" // outcome unknown: it may still be chosen (504)
      | "overloaded" // refused before proposing: safe to retry (503 + Retry-After)
      | "shutting_down", // refused before proposing (503)
    message: string,
  ) {
    super(message);
  }
}

export type ReadConsistency = "linearizable" | "local";

export interface MemberStatus {
  readonly name: string;
  readonly address: string;
  readonly role: "voter" | "learner";
  /** Instances behind the master, or null when unknown. */
  readonly lag: number | null;
}

export interface NodeStatus {
  readonly member: string;
  readonly group: string;
  readonly role: "master" | "follower" | "candidate" | "learner";
  readonly master: string | null;
  readonly members: readonly MemberStatus[];
  readonly instances: {
    readonly chosen: number;
    readonly executed: number;
    readonly checkpoint: number;
    readonly minKept: number;
    readonly replayedOnStart: number;
    /**
     * While this member rejoins without its state (a voter whose data is gone): it promises nothing
     * until it has learned every instance up to this one. null otherwise.
     */
    readonly abstainUntil: number | null;
  };
  readonly cleaner: {
    readonly state: "running" | "paused";
    readonly until: string | null;
    readonly holdCount: number;
    /** Start of the latest episode in which --max-log-size made the paused cleaner clean; null: none. */
    readonly lastForcedAt: string | null;
  };
  readonly transfer: unknown;
}

export interface KvService {
  put(key: string, value: Uint8Array): Promise<{ instance: number }>;
  delete(key: string): Promise<{ instance: number }>;
  /** `undefined` when the key is absent. */
  get(key: string, consistency: ReadConsistency): Promise<Uint8Array | undefined>;
  status(): NodeStatus;
  /** Voting or learning, not receiving a checkpoint, within a bounded lag of the master. */
  isReady(): boolean;
}
