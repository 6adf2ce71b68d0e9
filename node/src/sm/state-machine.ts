// The state machine contract, after PhxPaxos `sm.h`. The runtime feeds chosen values in strict
// instance order; the checkpoint half lets a node start from a checkpoint instead of instance 0
// and lets a peer that fell behind receive a whole checkpoint instead of the log.

import type { Configuration } from "../paxos/types.js";

/** One file of a checkpoint, relative to the checkpoint directory. */
export interface CheckpointFile {
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
}

/** A checkpoint as the state machine exposes it while it is locked. */
export interface CheckpointState {
  /** Every instance <= this is reflected in the files. */
  readonly instanceId: number;
  /** Absolute directory the files live in. */
  readonly dir: string;
  readonly files: readonly CheckpointFile[];
}

export interface StateMachine {
  /** Highest instance whose commands are reflected in the live state (-1 when none). */
  lastExecutedInstance(): number;

  /**
   * Apply the commands chosen at `instance`, atomically with the record that `instance` is
   * executed, so a restart replays exactly what is missing. Called in strict instance order;
   * instances without commands (no-ops) are passed with an empty list.
   */
  execute(instance: number, commands: readonly Uint8Array[]): Promise<void>;

  /**
   * Executes an instance that chose a membership configuration (it has no commands) and records
   * the configuration with it, so a start from this state, or from a checkpoint of it, knows the
   * membership although the log that chose it may be gone (PhxPaxos's system variables).
   */
  executeConfiguration(instance: number, config: Configuration): Promise<void>;

  /** Feed the checkpoint maker, if the state machine keeps a separate checkpoint store. */
  executeForCheckpoint(instance: number, commands: readonly Uint8Array[]): Promise<void>;

  /** Highest instance fully reflected in the current checkpoint; -1 when there is none. */
  getCheckpointInstanceId(): number;

  /**
   * Forbids any change, move or delete of the current checkpoint's files until unlocked, and
   * returns it (PhxPaxos's Lock and Get in one step, so the caller holds exactly what it locked).
   * Locks count; rejects when there is no checkpoint.
   */
  lockCheckpointState(): Promise<CheckpointState>;

  /** The current checkpoint without locking it (a newer one may delete it), or null when none. */
  getCheckpointState(): CheckpointState | null;

  /** Releases one lock taken by lockCheckpointState(). */
  unlockCheckpointState(state: CheckpointState): void;

  /**
   * Replace the whole state with a verified checkpoint received from a peer. Atomic: on failure
   * the old state is untouched. The process ends itself afterwards (exit code 75).
   */
  loadCheckpointState(state: CheckpointState): Promise<void>;

  close(): Promise<void>;
}
