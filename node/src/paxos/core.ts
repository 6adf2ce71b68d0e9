// The consensus core: multi-Paxos with a master, as a deterministic state machine.
//
// Events go in through step(); everything the shell must do comes out of ready(): what to
// persist (synced), what to send before and after that persist, which chosen values to execute,
// and which client requests failed. No I/O, no timers, no clock reads, no ambient randomness:
// time arrives in `tick` events and randomness through the injected `random`.
// The protocol and its safety argument are in README.md beside this file.

import {
  ConfigHistory,
  DEFAULT_ACTIVATION_DELAY,
  hasMajority,
  isVoter,
  majority,
  rejoinAnswersNeeded,
  roleOf,
  validateChange,
  votersOf,
} from "./config.js";
import {
  type AcceptedEntry,
  type Ballot,
  ballotsEqual,
  type ChosenEntry,
  type ConfigChange,
  type Configuration,
  compareBallots,
  type Envelope,
  type LogRecord,
  type Member,
  type MemberId,
  type MemberRole,
  type Message,
  type Value,
  ZERO_BALLOT,
} from "./types.js";

/**
 * The ballot recorded for a value this member knows is chosen but never voted for. It is above
 * every real ballot, so a candidate that hears of it in a promise always adopts it — which is
 * exactly right, since every later ballot must propose the chosen value.
 */
export const CHOSEN_BALLOT: Ballot = Object.freeze({ counter: Number.MAX_SAFE_INTEGER, member: "" });

export interface Timing {
  /** How often a master sends its heartbeat (the commit notice). */
  heartbeatMs: number;
  /** Silence from the master after which a member may stand for election (plus random jitter of up to this much). */
  electionTimeoutMs: number;
  /** Retransmission interval for unanswered prepares, accepts and learn requests. */
  retryMs: number;
  /**
   * How long a master holds an instance back from the voters outside the quorum it asks first
   * (see "Thrifty accepts" in README.md). 0 sends every accept to every voter at once.
   */
  lazyAcceptMs: number;
}

export const DEFAULT_TIMING: Timing = {
  heartbeatMs: 100,
  electionTimeoutMs: 1000,
  retryMs: 200,
  lazyAcceptMs: 10,
};

export interface CoreOptions {
  self: MemberId;
  /**
   * Voters of the initial configuration, which holds until the log chooses a configuration (then
   * the log wins). A founding member passes every founding voter, itself included; a member
   * joining an existing group passes the group's current voters (its seeds) and itself in `learners`.
   */
  voters: readonly MemberId[];
  /** Learners of the initial configuration. */
  learners?: readonly MemberId[];
  /** Peer addresses of the initial configuration's members; "" for any not listed. */
  addresses?: Readonly<Record<MemberId, string>>;
  /**
   * Configuration values found chosen at or below `recovered.chosenUpTo` (from the log, or from the
   * checkpoint metadata for instances the log no longer holds), in any order. Those above it are
   * ignored: the core learns them as it goes. The last two are enough; more are harmless.
   */
  configurations?: readonly { readonly instance: number; readonly config: Configuration }[];
  /** Unique per process start, so value ids never repeat across restarts. */
  incarnation: string;
  random: () => number;
  now: number;
  recovered: { promised: Ballot; chosenUpTo: number; unchosen: readonly LogRecord[] };
  timing?: Partial<Timing>;
  /** Instances a master keeps in flight at once (at most `activationDelay`). */
  window?: number;
  /**
   * Set when this member lost its acceptor state, or never had any, while the group ran and listed
   * it as a voter: it neither promises nor campaigns until it has learned every instance up to this
   * one, because a promise would report none of the votes it forgot (README, "A member without its
   * state"). It still votes on `accept`s, at ballots at or above the promised ballot it starts with.
   * -1 (the default) for a member with its state.
   */
  abstainUntil?: number;
  /**
   * With abstainUntil: the voters that promised this member's fence when it rejoined. Having
   * learned up to abstainUntil, it still abstains while they miss some majority of a configuration
   * governing what it has yet to learn (one it learned of only while catching up), and asks for
   * more in `fenceNeeded`. Null or absent: a member that has no such check left to make.
   */
  fencedBy?: readonly MemberId[] | null;
  /**
   * A configuration chosen at instance k governs the instances from k + activationDelay on. A
   * protocol constant of the group: every member must use the same value, so the runtime leaves
   * it at its default. Tests set it small to exercise changes.
   */
  activationDelay?: number;
  maxBatchCommands?: number;
  maxBatchBytes?: number;
  /** Client commands a master queues before it refuses more. */
  maxQueuedCommands?: number;
  /**
   * Below this many instances in flight a master proposes whatever is queued at once; at or
   * above it, it waits until a full batch is queued or an instance is chosen. Fewer, larger
   * instances mean fewer fsyncs and messages under load, and no added wait when idle.
   */
  eagerInFlight?: number;
}

export type Role = "follower" | "candidate" | "master";

export interface CommittedEntry {
  readonly instance: number;
  /** A `config` value is for the core and the checkpoint metadata, not for the state machine. */
  readonly value: Value;
  /** Set on the member that proposed the value: one request id per command, in order. */
  readonly requestIds: readonly number[] | null;
}

export type FailureReason =
  /** Refused: this member is not the master. Certainly not proposed. */
  | "not_master"
  /** Queued, then the master stepped down before proposing it. Certainly not proposed. */
  | "not_proposed"
  /** Proposed, but another value was chosen in its instance. Certainly not chosen. */
  | "lost"
  /** Refused: the master's queue is full. Certainly not proposed. */
  | "overloaded";

export interface Failure {
  readonly requestId: number;
  readonly reason: FailureReason;
}

export type AdminFailureReason =
  /** This member is not the master, or it is handing over. Certainly not done. */
  | "not_master"
  /** Another change or handover is in progress. Certainly not done. */
  | "conflict"
  /** The change does not apply to the configuration (unknown member, already a voter, last voter...). */
  | "invalid"
  /** The live voters would not be a majority of the new configuration. Certainly not done. */
  | "no_quorum"
  /** Proposed, but another value was chosen in its instance. Certainly not done. */
  | "lost"
  /** A handover whose target did not catch up in time; the master carries on. */
  | "timeout";

export interface AdminFailure {
  readonly requestId: number;
  readonly reason: AdminFailureReason;
  readonly message: string;
}

export interface AdminResult {
  readonly requestId: number;
  /**
   * A configuration change: the instance that chose it (it governs from instance +
   * activationDelay, and is in force by the time this is reported on a master). A handover: the
   * contiguous chosen point `to` had reached.
   */
  readonly instance: number;
}

export interface ReadIndexResult {
  readonly requestId: number;
  /** Serve the read once the local state has executed this instance. */
  readonly index: number;
}

export interface Ready {
  /**
   * Persist before sending `send`. Null when nothing changed. `sync` is false when the batch holds
   * only chosen marks: those can be learned again after a crash, so they need no fsync of their own.
   */
  persist: {
    promised?: Ballot;
    records: LogRecord[];
    chosenUpTo?: number;
    /** A rejoining member's bound and fenced voters, raised by a `fenced` event; null: done. */
    abstainUntil?: number;
    fencedBy?: readonly MemberId[] | null;
    sync: boolean;
  } | null;
  /** Messages that depend on nothing unsynced: send at once, in parallel with the persist. */
  sendNow: Envelope[];
  /** Messages that announce persisted state (promises, votes, prepares): send after the persist. */
  send: Envelope[];
  /** Newly chosen values, contiguous and in instance order. Chosen means durable on a quorum: execute at once. */
  committed: CommittedEntry[];
  failed: Failure[];
  /** Learn requests the shell answers from storage, then reports with a `learnLoaded` event. */
  loads: { to: MemberId; from: number }[];
  readsReady: ReadIndexResult[];
  readsFailed: Failure[];
  /** Configuration changes and handovers that are done. */
  adminDone: AdminResult[];
  adminFailed: AdminFailure[];
  /**
   * A rejoining member that learned of configurations its fenced voters do not cover: the shell
   * fences enough of their voters as discovery does and reports it with a `fenced` event. Asked
   * once until then.
   */
  fenceNeeded: Configuration[] | null;
  /**
   * Instances a master sent to a lazy voter as accepts, still unchosen after lazyAcceptMs: its
   * eager voters did not keep up (see "Thrifty accepts" in README.md).
   */
  lateAccepts: number;
}

export type CoreEvent =
  | { type: "tick"; now: number }
  | { type: "receive"; from: MemberId; message: Message }
  | { type: "propose"; requestId: number; command: Uint8Array }
  | { type: "readIndex"; requestId: number }
  | { type: "learnLoaded"; to: MemberId; entries: readonly ChosenEntry[] }
  /** Master only: change the membership by one step. Answered in `adminDone` or `adminFailed`. */
  | { type: "proposeConfig"; requestId: number; change: ConfigChange }
  /** Master only: hand the mastership to the voter `to`. Answered in `adminDone` or `adminFailed`. */
  | { type: "transferMaster"; requestId: number; to: MemberId }
  /**
   * A member rejoining without its state asks this one to promise `ballot` (see "A member without
   * its state" in the README). Answer it with `rejoinAnswer()` once this Ready's persist is synced.
   */
  | { type: "fence"; ballot: Ballot }
  /** Answers `fenceNeeded`: these voters promised a fence, and reported these. */
  | { type: "fenced"; by: readonly MemberId[]; promised: Ballot; highestInstance: number };

interface InFlight {
  readonly value: Value;
  /** Voters of the configuration of this instance: only their acks count. */
  readonly voters: readonly MemberId[];
  readonly quorum: number;
  readonly acks: Set<MemberId>;
  sentAt: number;
}

interface Handover {
  /** Null when the master hands over on its own because it is no longer a voter. */
  readonly requestId: number | null;
  /** Null: the most advanced live voter, chosen when everything in flight is decided. */
  readonly to: MemberId | null;
  readonly deadline: number;
}

interface MasterState {
  readonly ballot: Ballot;
  /** Every instance in [ballotFrom, ballotChosenUpTo] was chosen by this master at its ballot. */
  readonly ballotFrom: number;
  ballotChosenUpTo: number;
  /** `from` of this ballot's Prepare: every promise covers the instances >= it. */
  readonly prepareFrom: number;
  /** Members that promised this ballot. */
  readonly promisers: Set<MemberId>;
  /**
   * Members whose promise came after the election and showed instances chosen that this master
   * has not proposed yet: their votes there are hidden behind that chosen point, so they do not
   * count as promisers. If a configuration needs them, only a new phase 1 (which learns first) helps.
   */
  readonly aheadPromisers: Set<MemberId>;
  /** When a Prepare of this ballot last went to a member asked after the election. */
  readonly prepareSentAt: Map<MemberId, number>;
  /** Highest-ballot vote reported by a promise for each instance not yet proposed: re-proposed there. */
  readonly found: Map<number, AcceptedEntry>;
  /** Highest instance any promise reported as voted or chosen; reads wait until it is chosen here. */
  recoveryUpTo: number;
  nextInstance: number;
  readonly inFlight: Map<number, InFlight>;
  lastHeartbeat: number;
  /** A read round started, a handover or a new mastership: send the commit notice with this ready. */
  commitDirty: boolean;
  /**
   * The chosen point each member's last commit notice carried. More chosen than that is announced
   * with the next accept to that member (one frame, one wake-up and one synced write instead of
   * two) or at the next tick: the client's answer never waits for followers to learn, and a
   * follower's linearizable read starts a read round, whose notice carries the chosen point.
   */
  readonly announced: Map<MemberId, number>;
  /** Some member's last notice carried less than `ballotChosenUpTo`: a tick is due. */
  chosenUnannounced: boolean;
  /**
   * The voters each instance goes to at once, besides this master: a quorum with it, kept while
   * they keep up (see "Thrifty accepts" in README.md).
   */
  eager: readonly MemberId[];
  /** The other voters' instances, sent with their next commit notice: as chosen values if chosen by then. */
  readonly lazy: Map<MemberId, ChosenEntry[]>;
  /** When each voter last voted for an instance still in flight: who keeps up, for `eager`. */
  readonly lastVoted: Map<MemberId, number>;
  readSeq: number;
  /**
   * Read confirmation round in progress: its sequence, its reads, the index they will get, and the
   * configurations a majority of which must acknowledge it.
   */
  readRound: {
    seq: number;
    index: number;
    requestIds: number[];
    acks: Set<MemberId>;
    sentAt: number;
    configs: readonly Configuration[];
  } | null;
  readsWaiting: number[];
  /** Last ack from each peer: its contiguous chosen point, for lag and learning decisions. */
  readonly peerChosenUpTo: Map<MemberId, number>;
  /** When each peer last answered this ballot: who counts as live for membership changes. */
  readonly lastHeard: Map<MemberId, number>;
  /** A change asked for and not yet proposed: it waits until nothing is in flight. */
  configRequest: { readonly requestId: number; readonly change: ConfigChange } | null;
  handover: Handover | null;
}

interface CandidateState {
  readonly ballot: Ballot;
  readonly from: number;
  readonly promises: Map<MemberId, { chosenUpTo: number; accepted: readonly AcceptedEntry[] }>;
  /** Members sent this ballot's Prepare. */
  readonly asked: Set<MemberId>;
  /** Started by a handover: refusals out of loyalty to the old master do not end it. */
  readonly transfer: boolean;
  sentAt: number;
}

interface QueuedCommand {
  readonly requestId: number;
  readonly command: Uint8Array;
}

export interface ConfigurationStatus {
  /** The configuration in force at the next instance to be chosen here. */
  readonly members: readonly Member[];
  /** First instance it governs (0 for the initial configuration). */
  readonly since: number;
  /** Instance that chose it; -1 for the initial configuration. */
  readonly chosenAt: number;
  /** A configuration chosen but not yet in force, or null. */
  readonly pending: {
    readonly members: readonly Member[];
    readonly since: number;
    readonly chosenAt: number;
  } | null;
  /** Master only: a change asked for and not yet in force. */
  readonly proposing: ConfigChange | null;
  readonly activationDelay: number;
}

export interface MemberStatus {
  readonly name: MemberId;
  readonly address: string;
  /** Role in the newest configuration this member knows (pending or in force). */
  readonly role: MemberRole;
  /** Its contiguous chosen point: exact for this member, as last reported on a master, else null. */
  readonly chosenUpTo: number | null;
  /** Instances behind the master's chosen point (for this member: behind what it knows is chosen). */
  readonly lag: number | null;
  /** Master only: answered within the election timeout. */
  readonly live: boolean | null;
}

export interface CoreStatus {
  readonly role: Role;
  readonly master: MemberId | null;
  readonly ballot: Ballot;
  readonly promised: Ballot;
  readonly chosenUpTo: number;
  readonly knownChosenUpTo: number;
  /** Master only: each peer's contiguous chosen point as last reported. */
  readonly peerChosenUpTo: ReadonlyMap<MemberId, number>;
  readonly queued: number;
  readonly inFlight: number;
  readonly configuration: ConfigurationStatus;
  /** Every member of the configurations in force or pending. */
  readonly members: readonly MemberStatus[];
  /** While this member rejoins without its state: the instance it must learn before it promises. */
  readonly abstainingUntil: number | null;
}

/** What a member tells one that rejoins without its state (see CoreOptions.abstainUntil). */
export interface RejoinAnswer {
  /** False while this member has no state either: nothing chosen, no master known, nothing promised. */
  readonly established: boolean;
  /** The highest ballot this member has promised. */
  readonly promised: Ballot;
  /**
   * The highest instance this member has voted on or knows to be chosen. A value chosen with the
   * rejoining member's forgotten vote was voted on by the rest of its quorum, which meets any set
   * of answers that meets every majority.
   */
  readonly highestInstance: number;
}

/** An answer to a rejoining member from a member that has state. */
export type RejoinReport = Omit<RejoinAnswer, "established">;

/**
 * The ballot a rejoining member has its answerers promise before it takes their highest instances:
 * above every ballot they had promised, and so above every ballot it may have voted at (each had
 * its phase 1 at a majority, which the answers meet).
 */
export function fenceBallot(self: MemberId, answers: Iterable<Pick<RejoinAnswer, "promised">>): Ballot {
  let counter = 0;
  for (const a of answers) counter = Math.max(counter, a.promised.counter);
  return { counter: counter + 1, member: self };
}

/** What a rejoining member starts with: the highest of its answerers' promises and instances. */
export function rejoinState(answers: Iterable<RejoinReport>): {
  promised: Ballot;
  abstainUntil: number;
} {
  let promised = ZERO_BALLOT;
  let abstainUntil = -1;
  for (const a of answers) {
    if (compareBallots(a.promised, promised) > 0) promised = a.promised;
    abstainUntil = Math.max(abstainUntil, a.highestInstance);
  }
  return { promised, abstainUntil };
}

function emptyReady(): Ready {
  return {
    persist: null,
    sendNow: [],
    send: [],
    committed: [],
    failed: [],
    loads: [],
    readsReady: [],
    readsFailed: [],
    adminDone: [],
    adminFailed: [],
    fenceNeeded: null,
    lateAccepts: 0,
  };
}

function membersOf(configs: readonly Configuration[]): MemberId[] {
  const names = new Set<MemberId>();
  for (const c of configs) for (const m of c.members) names.add(m.name);
  return [...names];
}

export class PaxosCore {
  readonly self: MemberId;
  private readonly timing: Timing;
  private readonly window: number;
  private abstainUntil: number;
  /** See CoreOptions.fencedBy. */
  private fencedBy: Set<MemberId> | null;
  private fenceRequested = false;
  private readonly activationDelay: number;
  private readonly maxBatchCommands: number;
  private readonly maxBatchBytes: number;
  private readonly maxQueuedCommands: number;
  private readonly eagerInFlight: number;
  private readonly incarnation: string;
  private readonly random: () => number;
  private now: number;

  // Membership: the configurations of the chosen prefix that govern instances above it.
  private readonly history: ConfigHistory;

  // Acceptor state.
  private promised: Ballot;
  private readonly votes = new Map<number, { ballot: Ballot; value: Value }>();

  // Learner state.
  private chosenUpTo: number;
  private readonly chosenAhead = new Map<number, { ballot: Ballot; value: Value }>();
  private knownChosenUpTo: number;
  private learnHint: MemberId | null = null;
  private learnOutstanding: { to: MemberId; from: number; sentAt: number } | null = null;
  private lastCommitAck: { ballot: Ballot; readSeq: number; at: number } | null = null;

  // Leadership.
  private role: Role = "follower";
  private master: MemberId | null = null;
  private lastHeardFromMaster = Number.NEGATIVE_INFINITY;
  private electionDeadline: number;
  private maxSeenCounter: number;
  private candidate: CandidateState | null = null;
  private mastership: MasterState | null = null;

  // Proposer state.
  private readonly queue: QueuedCommand[] = [];
  private valueSeq = 0;
  /** Values this member proposed, by instance, until that instance's outcome is known. */
  private readonly ownProposals = new Map<number, { valueId: string; requestIds: readonly number[] }>();
  /** The configuration change this member proposed, until it is in force (or lost). */
  private ownConfig: {
    readonly requestId: number;
    readonly change: ConfigChange;
    readonly instance: number;
    readonly valueId: string;
    won: boolean;
  } | null = null;

  private out: Ready = emptyReady();

  constructor(opts: CoreOptions) {
    const learners = (opts.learners ?? []).filter((l) => !opts.voters.includes(l));
    if (!opts.voters.includes(opts.self) && !learners.includes(opts.self)) {
      throw new Error(
        `member ${opts.self} is neither among the voters ${opts.voters.join(",")} nor a learner`,
      );
    }
    if (opts.voters.length === 0) throw new Error("the initial configuration needs at least one voter");
    const address = (name: MemberId) => opts.addresses?.[name] ?? "";
    const initial: Configuration = {
      members: [
        ...opts.voters.map((name) => ({ name, address: address(name), role: "voter" as const })),
        ...learners.map((name) => ({ name, address: address(name), role: "learner" as const })),
      ],
    };
    this.self = opts.self;
    this.timing = { ...DEFAULT_TIMING, ...opts.timing };
    this.activationDelay = opts.activationDelay ?? DEFAULT_ACTIVATION_DELAY;
    if (!Number.isSafeInteger(this.activationDelay) || this.activationDelay < 1) {
      throw new Error(`activationDelay must be a positive integer, not ${this.activationDelay}`);
    }
    // A master must know the configuration of every instance it proposes: it never runs further
    // ahead of its contiguous chosen point than the activation delay.
    this.window = Math.min(opts.window ?? 32, this.activationDelay);
    this.abstainUntil = opts.abstainUntil ?? -1;
    this.fencedBy = opts.fencedBy === undefined || opts.fencedBy === null ? null : new Set(opts.fencedBy);
    this.maxBatchCommands = opts.maxBatchCommands ?? 256;
    this.maxBatchBytes = opts.maxBatchBytes ?? 4 * 1024 * 1024;
    this.maxQueuedCommands = opts.maxQueuedCommands ?? 100_000;
    this.eagerInFlight = opts.eagerInFlight ?? 2;
    this.incarnation = opts.incarnation;
    this.random = opts.random;
    this.now = opts.now;
    this.promised = opts.recovered.promised;
    this.maxSeenCounter = this.promised.counter;
    this.chosenUpTo = opts.recovered.chosenUpTo;
    this.knownChosenUpTo = this.chosenUpTo;
    this.history = new ConfigHistory(initial, this.activationDelay);
    const known = [...(opts.configurations ?? [])].sort((a, b) => a.instance - b.instance);
    for (const c of known) if (c.instance <= this.chosenUpTo) this.history.add(c.instance, c.config);
    this.history.prune(this.chosenUpTo + 1);
    for (const rec of opts.recovered.unchosen) {
      if (rec.instance <= this.chosenUpTo) continue;
      if (rec.chosen) this.chosenAhead.set(rec.instance, { ballot: rec.ballot, value: rec.value });
      else this.votes.set(rec.instance, { ballot: rec.ballot, value: rec.value });
      if (rec.ballot !== CHOSEN_BALLOT)
        this.maxSeenCounter = Math.max(this.maxSeenCounter, rec.ballot.counter);
    }
    this.electionDeadline = this.nextElectionDeadline();
  }

  // ---------------------------------------------------------------------------------------------
  // Public surface

  /**
   * Feeds one event. `now` is the shell's clock when it happened (a tick carries its own): what a
   * message handler records, such as when the master was last heard from, must not take the time
   * of the last tick, which may be long past now that ticks come only when due (`nextTickAt`).
   */
  step(event: CoreEvent, now?: number): void {
    if (now !== undefined) this.now = Math.max(this.now, now);
    switch (event.type) {
      case "tick":
        this.now = Math.max(this.now, event.now);
        this.onTick();
        return;
      case "receive":
        this.onMessage(event.from, event.message);
        return;
      case "propose":
        this.onPropose(event.requestId, event.command);
        return;
      case "readIndex":
        this.onReadIndex(event.requestId);
        return;
      case "learnLoaded":
        this.onLearnLoaded(event.to, event.entries);
        return;
      case "proposeConfig":
        this.onProposeConfig(event.requestId, event.change);
        return;
      case "transferMaster":
        this.onTransferMaster(event.requestId, event.to);
        return;
      case "fence":
        this.onFence(event.ballot);
        return;
      case "fenced":
        this.onFenced(event.by, event.promised, event.highestInstance);
        return;
    }
  }

  /** Everything the shell must do since the last call. Forms new proposals from queued commands first. */
  ready(): Ready {
    this.progressHandover();
    this.fillWindow();
    this.settleOwnConfig();
    this.settleRejoin();
    const m = this.mastership;
    if (m?.commitDirty) this.sendHeartbeat();
    else if (m?.chosenUnannounced) {
      // Whoever gets an accept this turn hears what is newly chosen in the same frame.
      const acceptors = new Set(this.out.sendNow.filter((e) => e.message.type === "accept").map((e) => e.to));
      for (const to of acceptors) this.announce(m, to, false);
      m.chosenUnannounced = this.notifyTargets().some((v) => (m.announced.get(v) ?? -1) < m.ballotChosenUpTo);
    }
    const r = this.out;
    this.out = emptyReady();
    return r;
  }

  status(): CoreStatus {
    const m = this.mastership;
    const current = this.history.entryAt(this.chosenUpTo + 1);
    const latest = this.history.latest;
    const pending = latest === current ? null : latest;
    const known = Math.max(this.knownChosenUpTo, this.chosenUpTo);
    const members: MemberStatus[] = [];
    for (const name of membersOf([current.config, latest.config])) {
      const info =
        latest.config.members.find((x) => x.name === name) ??
        current.config.members.find((x) => x.name === name)!;
      let chosenUpTo: number | null = null;
      let lag: number | null = null;
      let live: boolean | null = null;
      if (name === this.self) {
        chosenUpTo = this.chosenUpTo;
        lag = m !== null ? 0 : known - this.chosenUpTo;
        live = m !== null ? true : null;
      } else if (m !== null) {
        chosenUpTo = m.peerChosenUpTo.get(name) ?? null;
        lag = chosenUpTo === null ? null : Math.max(0, this.chosenUpTo - chosenUpTo);
        live = this.isLive(m, name);
      }
      members.push({ name, address: info.address, role: info.role, chosenUpTo, lag, live });
    }
    return {
      role: this.role,
      master: this.master,
      ballot: m?.ballot ?? this.candidate?.ballot ?? ZERO_BALLOT,
      promised: this.promised,
      chosenUpTo: this.chosenUpTo,
      knownChosenUpTo: known,
      peerChosenUpTo: m?.peerChosenUpTo ?? new Map(),
      queued: this.queue.length,
      inFlight: m?.inFlight.size ?? 0,
      configuration: {
        members: current.config.members,
        since: current.since,
        chosenAt: current.chosenAt,
        pending:
          pending === null
            ? null
            : { members: pending.config.members, since: pending.since, chosenAt: pending.chosenAt },
        proposing: m === null ? null : (m.configRequest?.change ?? this.ownConfig?.change ?? null),
        activationDelay: this.activationDelay,
      },
      members,
      abstainingUntil: this.abstaining ? this.abstainUntil : null,
    };
  }

  /** For a member that rejoins without its state: see CoreOptions.abstainUntil. */
  rejoinAnswer(): RejoinAnswer {
    // While it abstains itself, its own forgotten votes reach up to abstainUntil.
    let highest = Math.max(this.chosenUpTo, this.knownChosenUpTo, this.abstainUntil);
    for (const instance of this.votes.keys()) highest = Math.max(highest, instance);
    for (const instance of this.chosenAhead.keys()) highest = Math.max(highest, instance);
    const established = this.chosenUpTo >= 0 || this.master !== null || this.promised.counter > 0;
    return { established, promised: this.promised, highestInstance: highest };
  }

  /**
   * Rejoining without its state: it may have voted for a value before and no longer knows it, so a
   * promise now could let a new master miss a value that is chosen.
   */
  private get abstaining(): boolean {
    return this.learningToBound || this.unfencedConfigs().length > 0;
  }

  private get learningToBound(): boolean {
    return this.chosenUpTo < this.abstainUntil;
  }

  /**
   * Configurations governing what this rejoining member has yet to learn whose majorities its
   * fenced voters may miss: a value chosen there with its forgotten vote could lie past its bound.
   */
  private unfencedConfigs(): Configuration[] {
    const fenced = this.fencedBy;
    if (fenced === null) return [];
    return this.liveConfigs().filter(
      (c) => votersOf(c).filter((v) => v !== this.self && fenced.has(v)).length < rejoinAnswersNeeded(c),
    );
  }

  /** Once it has learned up to its bound: ask for more fences, or drop the check for good. */
  private settleRejoin(): void {
    if (this.fencedBy === null || this.learningToBound || this.fenceRequested) return;
    const unfenced = this.unfencedConfigs();
    if (unfenced.length > 0) {
      this.fenceRequested = true;
      this.out.fenceNeeded = unfenced;
      return;
    }
    // Every vote it forgot is learned as chosen or was never chosen: later configurations need no
    // check (a crash before this is written only repeats it).
    this.fencedBy = null;
    this.persistBatch().fencedBy = null;
  }

  /** This member's role, without building the whole status(). */
  get currentRole(): Role {
    return this.role;
  }

  /** The master this member follows (itself when master), without building the whole status(). */
  get currentMaster(): MemberId | null {
    return this.master;
  }

  /** A master with no instance in flight and no command queued: a new command cannot join a batch. */
  get idleMaster(): boolean {
    const m = this.mastership;
    return m !== null && m.inFlight.size === 0 && this.queue.length === 0;
  }

  /** Highest instance such that every instance up to it is chosen here. */
  get chosenPoint(): number {
    return this.chosenUpTo;
  }

  /** Votes needed to choose the next instance: a majority of the voters in force there. */
  get quorum(): number {
    return majority(this.history.at(this.chosenUpTo + 1));
  }

  // ---------------------------------------------------------------------------------------------
  // Output helpers

  private sendNow(to: MemberId, message: Message): void {
    if (to === this.self) this.onMessage(this.self, message);
    else this.out.sendNow.push({ to, message });
  }

  private sendAfterPersist(to: MemberId, message: Message): void {
    this.out.send.push({ to, message });
  }

  private persistPromised(): void {
    const batch = this.persistBatch();
    batch.promised = this.promised;
    batch.sync = true;
  }

  private persistRecord(rec: LogRecord): void {
    const batch = this.persistBatch();
    batch.records.push(rec);
    // A vote must be synced before it is announced; a chosen mark can be learned again, except by a
    // member that rejoined without its state: up to abstainUntil it may hold the only copy left, if
    // a member it learned from loses its disk next.
    if (!rec.chosen || rec.instance <= this.abstainUntil) batch.sync = true;
  }

  private persistBatch(): NonNullable<Ready["persist"]> {
    if (this.out.persist === null) this.out.persist = { records: [], sync: false };
    return this.out.persist;
  }

  private adminFailed(requestId: number, reason: AdminFailureReason, message: string): void {
    this.out.adminFailed.push({ requestId, reason, message });
  }

  // ---------------------------------------------------------------------------------------------
  // Membership views

  /** Configurations governing some instance not yet chosen here: the one in force and any pending. */
  private liveConfigs(): Configuration[] {
    return this.history.from(this.chosenUpTo + 1);
  }

  /** Everyone who should hear commit notices: every member, voter or learner, of those configurations. */
  private notifyTargets(): MemberId[] {
    return membersOf(this.liveConfigs()).filter((n) => n !== this.self);
  }

  /**
   * Whether this member holds `member` as its master while it hears from it: a voter of a
   * configuration it knows for what it has yet to learn. A member removed while it was cut off, and
   * still running, can win an election among the members of its old configuration; held as master,
   * it would keep this member from promising the group's real candidates.
   */
  private mayLead(member: MemberId): boolean {
    return this.liveConfigs().some((c) => isVoter(c, member));
  }

  /** Learners never campaign, nor does a member that is a voter in no configuration it knows of. */
  private mayCampaign(): boolean {
    return !this.abstaining && this.mayLead(this.self);
  }

  /** False when this member knows it is no voter at `instance`: it then does not vote there. */
  private mayVote(instance: number): boolean {
    return instance > this.chosenUpTo + this.activationDelay || isVoter(this.history.at(instance), this.self);
  }

  private isLive(m: MasterState, name: MemberId): boolean {
    if (name === this.self) return true;
    const at = m.lastHeard.get(name);
    return at !== undefined && this.now - at < this.timing.electionTimeoutMs;
  }

  // ---------------------------------------------------------------------------------------------
  // Time

  /**
   * The earliest time at which a `tick` may have work: a heartbeat, a commit notice no accept has
   * carried, a retransmission, an election or handover deadline, a learn request to send or retry.
   * The shell ticks then (ticking earlier is harmless), so an idle member wakes for what it must
   * do, not at a fixed rate. A master's heartbeat bounds the wait for everything else it retries
   * (prepares to voters of a new configuration go again within a heartbeat of being due).
   */
  nextTickAt(): number {
    const retry = this.timing.retryMs;
    let at: number;
    const m = this.mastership;
    if (this.role === "master" && m !== null) {
      if (m.chosenUnannounced) return this.now;
      at = m.lastHeartbeat + this.timing.heartbeatMs;
      for (const f of m.inFlight.values()) at = Math.min(at, f.sentAt + retry);
      for (const held of m.lazy.values()) {
        const f = m.inFlight.get(held[0]!.instance);
        at = Math.min(at, f === undefined ? this.now : f.sentAt + this.timing.lazyAcceptMs);
      }
      if (m.readRound !== null) at = Math.min(at, m.readRound.sentAt + retry);
      if (m.handover !== null) at = Math.min(at, m.handover.deadline);
    } else {
      at = this.electionDeadline;
      if (this.candidate !== null) at = Math.min(at, this.candidate.sentAt + retry);
    }
    if (this.knownChosenUpTo > this.chosenUpTo || this.learningToBound) {
      const o = this.learnOutstanding;
      at = Math.min(at, o !== null && o.from === this.chosenUpTo + 1 ? o.sentAt + retry : this.now);
    }
    return at;
  }

  private nextElectionDeadline(): number {
    const t = this.timing.electionTimeoutMs;
    return this.now + t + Math.floor(this.random() * t);
  }

  private onTick(): void {
    if (this.role === "master") this.masterTick();
    else if (this.now >= this.electionDeadline) {
      if (this.mayCampaign()) this.startElection(false);
      else this.electionDeadline = this.nextElectionDeadline();
    } else if (this.role === "candidate") this.retransmitPrepare();
    this.maybeLearn();
  }

  private masterTick(): void {
    const m = this.mastership!;
    if (this.now - m.lastHeartbeat >= this.timing.heartbeatMs) this.sendHeartbeat();
    else if (m.chosenUnannounced || m.lazy.size > 0) this.announceAll(m, false);
    for (const [instance, f] of m.inFlight) {
      if (this.now - f.sentAt < this.timing.retryMs) continue;
      f.sentAt = this.now;
      const msg: Message = { type: "accept", ballot: m.ballot, entries: [{ instance, value: f.value }] };
      for (const v of f.voters) if (!f.acks.has(v)) this.sendNow(v, msg);
    }
    if (m.readRound !== null && this.now - m.readRound.sentAt >= this.timing.retryMs) {
      m.readRound.sentAt = this.now;
      this.sendHeartbeat();
    }
  }

  private sendHeartbeat(): void {
    const m = this.mastership!;
    m.lastHeartbeat = this.now;
    m.commitDirty = false;
    this.announceAll(m, true);
  }

  private announceAll(m: MasterState, always: boolean): void {
    const targets = this.notifyTargets();
    for (const v of targets) this.announce(m, v, always);
    m.chosenUnannounced = false;
    // What is held for a voter that has left the group is never sent.
    for (const v of m.lazy.keys()) if (!targets.includes(v)) m.lazy.delete(v);
  }

  /**
   * The commit notice to one member, after what was held back from it (see `sendHeld`); without
   * `always`, only when it tells the member something new.
   */
  private announce(m: MasterState, to: MemberId, always: boolean): void {
    const sentHeld = this.sendHeld(m, to);
    if (!always && !sentHeld && (m.announced.get(to) ?? -1) >= m.ballotChosenUpTo) return;
    m.announced.set(to, m.ballotChosenUpTo);
    this.sendNow(to, {
      type: "commit",
      ballot: m.ballot,
      from: m.ballotFrom,
      to: m.ballotChosenUpTo,
      readSeq: m.readSeq,
    });
  }

  /**
   * What a voter outside the eager quorum was not sent yet: instances chosen meanwhile go as chosen
   * values (nothing to vote on or sync there, no answer to handle here), instances still in flight
   * after lazyAcceptMs as accepts; younger ones wait for the next notice. A late instance means the
   * eager voters that have not voted for it are not keeping up: they lose their place.
   */
  private sendHeld(m: MasterState, to: MemberId): boolean {
    const held = m.lazy.get(to);
    if (held === undefined) return false;
    const chosen: ChosenEntry[] = [];
    const late: ChosenEntry[] = [];
    const young: ChosenEntry[] = [];
    for (const e of held) {
      const f = m.inFlight.get(e.instance);
      if (f === undefined) chosen.push(e);
      else if (this.now - f.sentAt < this.timing.lazyAcceptMs) young.push(e);
      else {
        late.push(e);
        const slow = m.eager.filter((v) => f.voters.includes(v) && !f.acks.has(v));
        for (const v of slow) m.lastVoted.delete(v);
        if (slow.length > 0) m.eager = m.eager.filter((v) => !slow.includes(v));
      }
    }
    if (young.length > 0) m.lazy.set(to, young);
    else m.lazy.delete(to);
    if (chosen.length > 0)
      this.sendNow(to, { type: "learnReply", entries: chosen, chosenUpTo: this.chosenUpTo });
    if (late.length > 0) {
      this.sendNow(to, { type: "accept", ballot: m.ballot, entries: late });
      this.out.lateAccepts += late.length;
    }
    return chosen.length > 0 || late.length > 0;
  }

  /**
   * The voters of `f`, besides this master, that get it at once: with this master, a quorum. The
   * last choice stands while it keeps up; otherwise those that promised this ballot and voted most
   * recently are preferred.
   */
  private eagerVoters(m: MasterState, f: InFlight): readonly MemberId[] {
    const others = f.voters.filter((v) => v !== this.self);
    const need = f.quorum - 1;
    if (this.timing.lazyAcceptMs <= 0 || need >= others.length) return others;
    const kept = m.eager.filter((v) => others.includes(v));
    if (kept.length >= need) return kept.slice(0, need);
    const rank = (v: MemberId) => (m.promisers.has(v) ? 0 : 1);
    const voted = (v: MemberId) => m.lastVoted.get(v) ?? Number.NEGATIVE_INFINITY;
    const rest = others
      .filter((v) => !kept.includes(v))
      .sort((a, b) => rank(a) - rank(b) || voted(b) - voted(a) || (a < b ? -1 : a > b ? 1 : 0));
    m.eager = [...kept, ...rest.slice(0, need - kept.length)];
    return m.eager;
  }

  // ---------------------------------------------------------------------------------------------
  // Leadership

  private startElection(transfer: boolean): void {
    if (this.role === "master") this.leaveMastership();
    else this.stepDown(null);
    const ballot: Ballot = {
      counter: Math.max(this.maxSeenCounter, this.promised.counter) + 1,
      member: this.self,
    };
    this.maxSeenCounter = ballot.counter;
    this.role = "candidate";
    const from = this.chosenUpTo + 1;
    const c: CandidateState = {
      ballot,
      from,
      promises: new Map(),
      asked: new Set(),
      transfer,
      sentAt: this.now,
    };
    this.candidate = c;
    this.electionDeadline = this.nextElectionDeadline();
    // Our own promise is persisted before any prepare leaves: after a crash we then never pick this
    // counter again, so no ballot is ever used for two different values.
    this.promised = ballot;
    this.persistPromised();
    const msg: Message = { type: "prepare", ballot, from };
    // Learners are asked too: one of them may be a voter of a configuration this ballot will use.
    for (const name of [this.self, ...membersOf(this.history.from(from))]) {
      if (c.asked.has(name)) continue;
      c.asked.add(name);
      this.sendAfterPersist(name, msg);
    }
  }

  private retransmitPrepare(): void {
    const c = this.candidate!;
    if (this.now - c.sentAt < this.timing.retryMs) return;
    c.sentAt = this.now;
    const msg: Message = { type: "prepare", ballot: c.ballot, from: c.from };
    for (const v of c.asked) if (!c.promises.has(v)) this.sendAfterPersist(v, msg);
  }

  /** Leave candidate or master role; `master` is who we now believe leads, if anyone. */
  private stepDown(master: MemberId | null): void {
    if (this.role === "master" && this.mastership !== null) this.leaveMastership();
    for (const q of this.queue) this.out.failed.push({ requestId: q.requestId, reason: "not_proposed" });
    this.queue.length = 0;
    this.role = "follower";
    this.candidate = null;
    this.mastership = null;
    // A refusal may name us, from an acceptor that followed an earlier mastership of ours.
    this.master = master === this.self ? null : master;
  }

  /** Pending reads and admin requests fail; queued commands stay for a possible immediate re-election. */
  private leaveMastership(): void {
    const m = this.mastership!;
    const pendingReads = [...(m.readRound?.requestIds ?? []), ...m.readsWaiting];
    for (const requestId of pendingReads) this.out.readsFailed.push({ requestId, reason: "not_master" });
    if (m.configRequest !== null) {
      this.adminFailed(
        m.configRequest.requestId,
        "not_master",
        "the master stepped down before proposing it",
      );
    }
    if (m.handover?.requestId !== undefined && m.handover.requestId !== null) {
      this.adminFailed(
        m.handover.requestId,
        "not_master",
        "the master lost its mastership during the handover",
      );
    }
    this.mastership = null;
  }

  private observeBallot(b: Ballot): void {
    if (b !== CHOSEN_BALLOT && b.counter > this.maxSeenCounter) this.maxSeenCounter = b.counter;
  }

  /** The ballot this member currently leads or campaigns with. */
  private ownBallot(): Ballot | null {
    return this.mastership?.ballot ?? this.candidate?.ballot ?? null;
  }

  /** A higher ballot than ours is in play: stop leading or campaigning. */
  private yieldTo(b: Ballot, master: MemberId | null): void {
    const own = this.ownBallot();
    if (own !== null && compareBallots(b, own) > 0) {
      this.stepDown(master);
      this.electionDeadline = this.nextElectionDeadline();
    }
  }

  private heardFromMaster(from: MemberId): void {
    this.master = from;
    this.lastHeardFromMaster = this.now;
    this.electionDeadline = this.nextElectionDeadline();
  }

  /** True while a live master other than `candidate` holds our allegiance. */
  private masterIsLive(candidate: MemberId): boolean {
    if (this.role === "master") return candidate !== this.self;
    return (
      this.master !== null &&
      this.master !== candidate &&
      this.now - this.lastHeardFromMaster < this.timing.electionTimeoutMs
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Messages

  private onMessage(from: MemberId, msg: Message): void {
    if ("ballot" in msg) this.observeBallot(msg.ballot);
    switch (msg.type) {
      case "prepare":
        return this.onPrepare(from, msg.ballot, msg.from);
      case "promise":
        return this.onPromise(from, msg.ballot, msg.chosenUpTo, msg.accepted);
      case "accept":
        return this.onAccept(from, msg.ballot, msg.entries);
      case "accepted":
        return this.onAccepted(from, msg.ballot, msg.instances);
      case "reject":
        return this.onReject(msg.ballot, msg.promised, msg.master);
      case "commit":
        return this.onCommit(from, msg.ballot, msg.from, msg.to, msg.readSeq);
      case "commitAck":
        return this.onCommitAck(from, msg.ballot, msg.ok, msg.readSeq, msg.chosenUpTo);
      case "learnRequest":
        this.out.loads.push({ to: from, from: msg.from });
        return;
      case "learnReply":
        return this.onLearnReply(from, msg.entries, msg.chosenUpTo);
      case "handover":
        return this.onHandover(from, msg.ballot, msg.to);
    }
  }

  private reject(to: MemberId, ballot: Ballot): void {
    this.sendNow(to, { type: "reject", ballot, promised: this.promised, master: this.master });
  }

  private onPrepare(from: MemberId, ballot: Ballot, fromInstance: number): void {
    // A promise would report none of the votes this member forgot: it answers nothing, as if down.
    if (this.abstaining) return;
    const cmp = compareBallots(ballot, this.promised);
    // A retransmitted prepare for the ballot already promised is answered again.
    if (cmp < 0 || (cmp === 0 && ballot.member !== from)) return this.reject(from, ballot);
    if (from !== this.self && this.masterIsLive(from)) return this.reject(from, ballot);
    if (cmp > 0) {
      this.yieldTo(ballot, null);
      this.promised = ballot;
      this.persistPromised();
      this.electionDeadline = this.nextElectionDeadline();
    }
    const above = Math.max(fromInstance - 1, this.chosenUpTo);
    const accepted: AcceptedEntry[] = [];
    for (const [instance, v] of this.votes) if (instance > above) accepted.push({ instance, ...v });
    for (const [instance, v] of this.chosenAhead) if (instance > above) accepted.push({ instance, ...v });
    accepted.sort((a, b) => a.instance - b.instance);
    this.sendAfterPersist(from, { type: "promise", ballot, chosenUpTo: this.chosenUpTo, accepted });
  }

  /**
   * Promising a rejoining member's ballot keeps every ballot it may have voted at before from
   * gaining a vote here after this member's answer, which reports the votes cast until now. A
   * master or candidate here runs phase 1 again at once, above the fence, as when refused by it.
   */
  private onFence(ballot: Ballot): void {
    this.observeBallot(ballot);
    if (compareBallots(ballot, this.promised) <= 0) return;
    if (this.role !== "follower") return this.startElection(this.candidate?.transfer ?? false);
    this.promised = ballot;
    this.persistPromised();
  }

  private onFenced(by: readonly MemberId[], promised: Ballot, highestInstance: number): void {
    this.fenceRequested = false;
    if (this.fencedBy === null) return;
    for (const name of by) this.fencedBy.add(name);
    this.observeBallot(promised);
    if (compareBallots(promised, this.promised) > 0) {
      this.promised = promised;
      this.persistPromised();
    }
    const batch = this.persistBatch();
    this.abstainUntil = Math.max(this.abstainUntil, highestInstance);
    if (this.abstainUntil >= 0) batch.abstainUntil = this.abstainUntil;
    batch.fencedBy = [...this.fencedBy];
    batch.sync = true;
  }

  private onPromise(
    from: MemberId,
    ballot: Ballot,
    chosenUpTo: number,
    accepted: readonly AcceptedEntry[],
  ): void {
    const m = this.mastership;
    if (m !== null && ballotsEqual(m.ballot, ballot))
      return this.absorbPromise(m, from, chosenUpTo, accepted);
    const c = this.candidate;
    if (c === null || !ballotsEqual(c.ballot, ballot)) return;
    c.promises.set(from, { chosenUpTo, accepted });
    // A configuration seen as accepted may govern instances this ballot will decide: its members
    // are asked too (our own promise is already persisted, so the Prepare may leave at once).
    for (const e of accepted) {
      if (e.value.kind !== "config") continue;
      for (const mem of e.value.config.members) {
        if (c.asked.has(mem.name)) continue;
        c.asked.add(mem.name);
        this.sendNow(mem.name, { type: "prepare", ballot: c.ballot, from: c.from });
      }
    }
    if (this.campaignWon(c)) this.becomeMaster(c);
  }

  /**
   * Phase 1 is complete when a majority of every configuration that may govern an instance at or
   * above `from` has promised: those known from the chosen prefix, and those of configuration
   * values seen in the promises. Configurations learned later are asked before they are used
   * (see `fillWindow` and `maybeCompleteReads`).
   */
  private campaignWon(c: CandidateState): boolean {
    const promisers = c.promises;
    for (const cfg of this.history.from(c.from)) if (!hasMajority(cfg, promisers)) return false;
    for (const p of promisers.values()) {
      for (const e of p.accepted) {
        if (e.value.kind === "config" && !hasMajority(e.value.config, promisers)) return false;
      }
    }
    return true;
  }

  private becomeMaster(c: CandidateState): void {
    let maxChosen = this.chosenUpTo;
    let maxChosenHolder: MemberId | null = null;
    const best = new Map<number, AcceptedEntry>();
    for (const [member, p] of c.promises) {
      if (p.chosenUpTo > maxChosen) {
        maxChosen = p.chosenUpTo;
        maxChosenHolder = member;
      }
      for (const e of p.accepted) {
        const prev = best.get(e.instance);
        if (prev === undefined || compareBallots(e.ballot, prev.ballot) > 0) best.set(e.instance, e);
      }
    }
    let highest = maxChosen;
    for (const i of best.keys()) if (i > highest) highest = i;
    for (const i of [...best.keys()]) if (i <= maxChosen) best.delete(i);

    this.role = "master";
    this.candidate = null;
    this.master = this.self;
    const m: MasterState = {
      ballot: c.ballot,
      ballotFrom: maxChosen + 1,
      ballotChosenUpTo: maxChosen,
      prepareFrom: c.from,
      promisers: new Set(c.promises.keys()),
      aheadPromisers: new Set(),
      prepareSentAt: new Map(),
      found: best,
      recoveryUpTo: highest,
      nextInstance: maxChosen + 1,
      inFlight: new Map(),
      lastHeartbeat: Number.NEGATIVE_INFINITY,
      commitDirty: true,
      announced: new Map(),
      chosenUnannounced: false,
      eager: [],
      lazy: new Map(),
      lastVoted: new Map(),
      readSeq: 0,
      readRound: null,
      readsWaiting: [],
      peerChosenUpTo: new Map(),
      lastHeard: new Map([...c.promises.keys()].map((k) => [k, this.now])),
      configRequest: null,
      handover: null,
    };
    this.mastership = m;
    if (maxChosenHolder !== null) {
      this.knownChosenUpTo = Math.max(this.knownChosenUpTo, maxChosen);
      this.learnHint = maxChosenHolder;
    }
    // What the quorum may have chosen above maxChosen is re-proposed at our ballot, and holes are
    // filled with no-ops, by fillWindow: each instance once its configuration is known and a
    // majority of that configuration has promised.
    this.maybeLearn();
  }

  /** A promise for our ballot that arrives after the election (late, or asked for a new configuration). */
  private absorbPromise(
    m: MasterState,
    from: MemberId,
    chosenUpTo: number,
    accepted: readonly AcceptedEntry[],
  ): void {
    m.lastHeard.set(from, this.now);
    m.prepareSentAt.delete(from);
    if (chosenUpTo >= m.nextInstance) {
      m.aheadPromisers.add(from);
      return;
    }
    m.aheadPromisers.delete(from);
    m.promisers.add(from);
    if (chosenUpTo > this.knownChosenUpTo) {
      this.knownChosenUpTo = chosenUpTo;
      this.learnHint = from;
    }
    m.recoveryUpTo = Math.max(m.recoveryUpTo, chosenUpTo);
    for (const e of accepted) {
      m.recoveryUpTo = Math.max(m.recoveryUpTo, e.instance);
      if (e.instance < m.nextInstance) continue;
      const prev = m.found.get(e.instance);
      if (prev === undefined || compareBallots(e.ballot, prev.ballot) > 0) m.found.set(e.instance, e);
    }
    this.maybeLearn();
    this.maybeCompleteReads();
  }

  /** Ask the voters of `cfg` that have not promised our ballot to do so (retried at retryMs). */
  private askPromises(m: MasterState, cfg: Configuration): void {
    const msg: Message = { type: "prepare", ballot: m.ballot, from: m.prepareFrom };
    for (const v of votersOf(cfg)) {
      if (m.promisers.has(v)) continue;
      const at = m.prepareSentAt.get(v);
      if (at !== undefined && this.now - at < this.timing.retryMs) continue;
      m.prepareSentAt.set(v, this.now);
      this.sendNow(v, msg);
    }
  }

  private onAccept(from: MemberId, ballot: Ballot, entries: readonly ChosenEntry[]): void {
    const cmp = compareBallots(ballot, this.promised);
    if (cmp < 0) return this.reject(from, ballot);
    if (cmp > 0) {
      this.yieldTo(ballot, ballot.member);
      this.promised = ballot;
      this.persistPromised();
    }
    if (from !== this.self && this.mayLead(ballot.member)) this.heardFromMaster(ballot.member);
    const instances: number[] = [];
    for (const e of entries) {
      if (e.instance <= this.chosenUpTo || this.chosenAhead.has(e.instance)) {
        instances.push(e.instance);
        continue;
      }
      if (!this.mayVote(e.instance)) continue;
      instances.push(e.instance);
      this.votes.set(e.instance, { ballot, value: e.value });
      this.persistRecord({ instance: e.instance, ballot, value: e.value, chosen: false });
    }
    this.sendAfterPersist(from, { type: "accepted", ballot, instances });
  }

  private onAccepted(from: MemberId, ballot: Ballot, instances: readonly number[]): void {
    const m = this.mastership;
    if (m === null || !ballotsEqual(m.ballot, ballot)) return;
    m.lastHeard.set(from, this.now);
    for (const i of instances) {
      const f = m.inFlight.get(i);
      if (f === undefined || !f.voters.includes(from)) continue;
      m.lastVoted.set(from, this.now);
      f.acks.add(from);
      if (f.acks.size < f.quorum) continue;
      m.inFlight.delete(i);
      this.markChosen(i, f.value, ballot);
    }
    const before = m.ballotChosenUpTo;
    while (m.ballotChosenUpTo + 1 < m.nextInstance && !m.inFlight.has(m.ballotChosenUpTo + 1)) {
      m.ballotChosenUpTo++;
    }
    if (m.ballotChosenUpTo > before) m.chosenUnannounced = true;
    this.maybeCompleteReads();
  }

  private onReject(ballot: Ballot, promised: Ballot, master: MemberId | null): void {
    // A refusal's promise may be a ballot no message of ours carried: the next one we pick must
    // beat it.
    this.observeBallot(promised);
    const own = this.ownBallot();
    if (own === null || !ballotsEqual(own, ballot)) return;
    if (compareBallots(promised, own) > 0) {
      // A master refused by a higher promise re-runs phase 1 at once with a higher ballot, so a
      // member that campaigned while cut off cannot depose a healthy master. If another master
      // is really live, the other acceptors refuse us and name it, and we step down then.
      if (this.role === "master") this.startElection(false);
      else this.yieldTo(promised, master);
      return;
    }
    // Refused because a live master holds that acceptor's allegiance: back off and follow it —
    // unless the old master handed over to us, in which case the others hear of it shortly.
    if (this.role === "candidate" && !this.candidate!.transfer && master !== null && master !== this.self) {
      this.stepDown(master);
      this.electionDeadline = this.nextElectionDeadline();
    }
  }

  private onCommit(from: MemberId, ballot: Ballot, fromInstance: number, to: number, readSeq: number): void {
    if (compareBallots(ballot, this.promised) < 0) return this.reject(from, ballot);
    this.yieldTo(ballot, ballot.member);
    if (this.role !== "master" && this.mayLead(ballot.member)) this.heardFromMaster(ballot.member);
    // Our vote at exactly this ballot in [from, to] is the chosen value: only one value is ever
    // proposed per (instance, ballot), and the master says a quorum accepted it.
    for (const [instance, vote] of this.votes) {
      if (instance >= fromInstance && instance <= to && ballotsEqual(vote.ballot, ballot)) {
        this.markChosen(instance, vote.value, ballot);
      }
    }
    if (to > this.knownChosenUpTo) {
      this.knownChosenUpTo = to;
      this.learnHint = from;
    }
    // Acks serve read rounds and lag reports: answer every new read round at once, otherwise at
    // most once per heartbeat interval, which halves the messages a busy master handles.
    const last = this.lastCommitAck;
    if (
      last === null ||
      !ballotsEqual(last.ballot, ballot) ||
      readSeq > last.readSeq ||
      this.now - last.at >= this.timing.heartbeatMs
    ) {
      this.lastCommitAck = { ballot, readSeq, at: this.now };
      this.sendNow(from, { type: "commitAck", ballot, ok: true, readSeq, chosenUpTo: this.chosenUpTo });
    }
    this.maybeLearn();
  }

  private onCommitAck(
    from: MemberId,
    ballot: Ballot,
    ok: boolean,
    readSeq: number,
    chosenUpTo: number,
  ): void {
    const m = this.mastership;
    if (m === null || !ballotsEqual(m.ballot, ballot)) return;
    m.peerChosenUpTo.set(from, chosenUpTo);
    m.lastHeard.set(from, this.now);
    if (ok && m.readRound !== null && readSeq >= m.readRound.seq) m.readRound.acks.add(from);
    this.maybeCompleteReads();
  }

  /**
   * The master at `ballot` hands over to `to`. `to` campaigns at once; everyone else takes `to` as
   * the live master, so they promise to it and refuse other candidates for an election timeout.
   */
  private onHandover(from: MemberId, ballot: Ballot, to: MemberId): void {
    if (ballot.member !== from || compareBallots(ballot, this.promised) < 0) return;
    this.yieldTo(ballot, from);
    if (to === this.self) {
      if (this.role !== "master" && this.mayCampaign()) this.startElection(true);
      return;
    }
    if (this.role === "master") return;
    if (this.role === "candidate") this.stepDown(to);
    this.heardFromMaster(to);
  }

  // ---------------------------------------------------------------------------------------------
  // Learning

  private markChosen(instance: number, value: Value, ballot: Ballot): void {
    if (instance <= this.chosenUpTo || this.chosenAhead.has(instance)) return;
    const vote = this.votes.get(instance);
    const recorded = vote !== undefined && vote.value.id === value.id ? vote.ballot : ballot;
    this.votes.delete(instance);
    this.chosenAhead.set(instance, { ballot: recorded, value });
    this.persistRecord({ instance, ballot: recorded, value, chosen: true });
    this.advance();
  }

  private advance(): void {
    const start = this.chosenUpTo;
    for (;;) {
      const next = this.chosenAhead.get(this.chosenUpTo + 1);
      if (next === undefined) break;
      this.chosenUpTo++;
      this.chosenAhead.delete(this.chosenUpTo);
      if (next.value.kind === "config") this.history.add(this.chosenUpTo, next.value.config);
      this.out.committed.push({
        instance: this.chosenUpTo,
        value: next.value,
        requestIds: this.settleOwnProposal(this.chosenUpTo, next.value),
      });
    }
    if (this.chosenUpTo > start) {
      this.persistBatch().chosenUpTo = this.chosenUpTo;
      this.history.prune(this.chosenUpTo + 1);
    }
  }

  /** Request ids to acknowledge if our proposal won `instance`; a lost proposal fails its requests. */
  private settleOwnProposal(instance: number, chosen: Value): readonly number[] | null {
    const oc = this.ownConfig;
    if (oc !== null && oc.instance === instance) {
      if (oc.valueId === chosen.id) oc.won = true;
      else {
        this.ownConfig = null;
        this.adminFailed(oc.requestId, "lost", `another value was chosen at instance ${instance}`);
      }
    }
    const own = this.ownProposals.get(instance);
    if (own === undefined) return null;
    this.ownProposals.delete(instance);
    if (own.valueId === chosen.id) return own.requestIds;
    for (const requestId of own.requestIds) this.out.failed.push({ requestId, reason: "lost" });
    return null;
  }

  /**
   * A chosen change of ours is reported once it is in force; a member that is no longer master
   * reports it as soon as it is chosen, since the next master drives it into force.
   */
  private settleOwnConfig(): void {
    const oc = this.ownConfig;
    if (oc === null || !oc.won) return;
    if (this.role === "master" && this.chosenUpTo < oc.instance + this.activationDelay - 1) return;
    this.ownConfig = null;
    this.out.adminDone.push({ requestId: oc.requestId, instance: oc.instance });
  }

  private maybeLearn(): void {
    // Abstaining, it learns up to abstainUntil even with no master to tell it what is chosen.
    if (this.knownChosenUpTo <= this.chosenUpTo && !this.learningToBound) return;
    const from = this.chosenUpTo + 1;
    // A master never learns what its own ballot decides: its commit notices must only ever
    // cover values it drove through phase 2 itself.
    if (this.mastership !== null && from >= this.mastership.ballotFrom) return;
    const o = this.learnOutstanding;
    if (o !== null && o.from === from && this.now - o.sentAt < this.timing.retryMs) return;
    const to = this.pickLearnSource();
    if (to === null) return;
    this.learnOutstanding = { to, from, sentAt: this.now };
    this.sendNow(to, { type: "learnRequest", from });
  }

  private pickLearnSource(): MemberId | null {
    // Any member may have what we lack, learners included: the only one that knows an instance
    // is chosen can be a learner that learned it from a master since deposed.
    const others = this.notifyTargets();
    if (this.learnHint !== null && this.learnHint !== this.self && !others.includes(this.learnHint)) {
      others.push(this.learnHint);
    }
    if (others.length === 0) return null;
    const o = this.learnOutstanding;
    // After a timeout, try someone else: the hinted peer may be gone.
    if (o !== null && o.from === this.chosenUpTo + 1) {
      return others[Math.floor(this.random() * others.length)]!;
    }
    if (this.learnHint !== null && this.learnHint !== this.self) return this.learnHint;
    if (this.master !== null && this.master !== this.self) return this.master;
    return others[Math.floor(this.random() * others.length)]!;
  }

  private onLearnLoaded(to: MemberId, entries: readonly ChosenEntry[]): void {
    this.sendNow(to, { type: "learnReply", entries, chosenUpTo: this.chosenUpTo });
  }

  private onLearnReply(from: MemberId, entries: readonly ChosenEntry[], chosenUpTo: number): void {
    const ballotFrom = this.mastership?.ballotFrom ?? Number.POSITIVE_INFINITY;
    for (const e of entries) {
      if (e.instance < ballotFrom) this.markChosen(e.instance, e.value, CHOSEN_BALLOT);
    }
    if (chosenUpTo > this.knownChosenUpTo) {
      this.knownChosenUpTo = chosenUpTo;
      this.learnHint = from;
    }
    // An empty answer means the peer has not synced those instances yet: wait for the retry
    // interval instead of asking again at once.
    if (entries.length > 0 && this.learnOutstanding?.to === from) this.learnOutstanding = null;
    this.maybeLearn();
    this.maybeCompleteReads();
  }

  // ---------------------------------------------------------------------------------------------
  // Proposing

  private newValueId(): string {
    return `${this.self}/${this.incarnation}/${this.valueSeq++}`;
  }

  private noop(): Value {
    return { kind: "noop", id: this.newValueId() };
  }

  private onPropose(requestId: number, command: Uint8Array): void {
    if (this.role !== "master") {
      this.out.failed.push({ requestId, reason: "not_master" });
      return;
    }
    if (this.queue.length >= this.maxQueuedCommands) {
      this.out.failed.push({ requestId, reason: "overloaded" });
      return;
    }
    this.queue.push({ requestId, command });
  }

  /**
   * Propose at the next instances, as far as the window allows: first what phase 1 found, then
   * no-ops up to the highest instance it found, then a queued configuration change (once nothing
   * is in flight), then client commands, then no-ops while a chosen configuration is not yet in
   * force. Each instance waits until its configuration is known (the window never reaches past
   * the activation delay) and a majority of that configuration has promised our ballot.
   */
  private fillWindow(): void {
    const m = this.mastership;
    if (m === null || m.handover !== null) return;
    const entries: ChosenEntry[] = [];
    for (;;) {
      const j = m.nextInstance;
      if (j > this.chosenUpTo + this.window) break;
      const cfg = this.history.at(j);
      if (!isVoter(cfg, this.self)) {
        // Removed (or demoted) from j on: finish what is in flight, then hand over.
        m.handover = { requestId: null, to: null, deadline: this.now + 2 * this.timing.electionTimeoutMs };
        break;
      }
      if (!hasMajority(cfg, m.promisers)) {
        if (hasMajority(cfg, { has: (n) => m.promisers.has(n) || m.aheadPromisers.has(n) })) {
          // Only members ahead of us could complete the quorum, and a master never learns at
          // its own ballot's instances: start over with a phase 1 that learns first.
          this.startElection(false);
          return;
        }
        this.askPromises(m, cfg);
        break;
      }
      const value = this.nextValue(m, j);
      if (value === null) break;
      m.nextInstance++;
      const voters = votersOf(cfg);
      m.inFlight.set(j, { value, voters, quorum: majority(cfg), acks: new Set(), sentAt: this.now });
      entries.push({ instance: j, value });
    }
    if (entries.length === 0) return;
    const atOnce = new Map<MemberId, ChosenEntry[]>();
    for (const e of entries) {
      const f = m.inFlight.get(e.instance)!;
      const eager = this.eagerVoters(m, f);
      for (const v of f.voters) {
        const into = v === this.self || eager.includes(v) ? atOnce : m.lazy;
        const list = into.get(v);
        if (list === undefined) into.set(v, [e]);
        else list.push(e);
      }
    }
    for (const [v, list] of atOnce) this.sendNow(v, { type: "accept", ballot: m.ballot, entries: list });
  }

  private nextValue(m: MasterState, j: number): Value | null {
    const found = m.found.get(j);
    if (found !== undefined) {
      m.found.delete(j);
      return found.value;
    }
    if (j <= m.recoveryUpTo) return this.noop();
    const latest = this.history.latest;
    if (m.configRequest !== null && latest.since <= j) {
      // Proposed only when everything before it is chosen, so it is checked against the real
      // latest configuration; commands wait meanwhile.
      if (m.inFlight.size > 0 || this.chosenUpTo !== j - 1) return null;
      const req = m.configRequest;
      m.configRequest = null;
      const check = validateChange(latest.config, req.change, { has: (n) => this.isLive(m, n) });
      if (check.ok) {
        const value: Value = { kind: "config", id: this.newValueId(), config: check.config };
        this.ownConfig = {
          requestId: req.requestId,
          change: req.change,
          instance: j,
          valueId: value.id,
          won: false,
        };
        return value;
      }
      this.adminFailed(req.requestId, check.reason, check.message);
    }
    const fullBatch = this.queue.length >= this.maxBatchCommands;
    if (this.queue.length > 0 && (m.inFlight.size < this.eagerInFlight || fullBatch))
      return this.takeBatch(j);
    // A chosen configuration governs from a fixed instance on: get there even when idle.
    if (latest.since > j) return this.noop();
    return null;
  }

  private takeBatch(instance: number): Value {
    const commands: Uint8Array[] = [];
    const requestIds: number[] = [];
    let bytes = 0;
    let taken = 0;
    while (taken < this.queue.length && commands.length < this.maxBatchCommands) {
      const q = this.queue[taken]!;
      if (commands.length > 0 && bytes + q.command.length > this.maxBatchBytes) break;
      commands.push(q.command);
      requestIds.push(q.requestId);
      bytes += q.command.length;
      taken++;
    }
    this.queue.splice(0, taken);
    const value: Value = { kind: "commands", id: this.newValueId(), commands };
    this.ownProposals.set(instance, { valueId: value.id, requestIds });
    return value;
  }

  // ---------------------------------------------------------------------------------------------
  // Membership changes and handover

  /** Why no change can start now, or null. */
  private changeInProgress(m: MasterState): string | null {
    if (m.configRequest !== null || this.ownConfig !== null) {
      const c = m.configRequest?.change ?? this.ownConfig!.change;
      return `a configuration change is in progress (${c.kind} ${c.name})`;
    }
    for (const [i, f] of m.inFlight) {
      if (f.value.kind === "config") return `a configuration value is being decided at instance ${i}`;
    }
    for (const [i, e] of m.found) {
      if (e.value.kind === "config") return `a configuration value found at instance ${i} is not decided yet`;
    }
    const latest = this.history.latest;
    if (latest.since > this.chosenUpTo + 1) {
      return `the configuration chosen at instance ${latest.chosenAt} is in force only from instance ${latest.since}`;
    }
    return null;
  }

  private onProposeConfig(requestId: number, change: ConfigChange): void {
    const m = this.mastership;
    if (m === null || m.handover !== null) {
      this.adminFailed(requestId, "not_master", "this member is not the master");
      return;
    }
    const busy = this.changeInProgress(m);
    if (busy !== null) {
      this.adminFailed(requestId, "conflict", busy);
      return;
    }
    // Checked now against what is known, and again when proposed against the latest configuration.
    const check = validateChange(this.history.latest.config, change, { has: (n) => this.isLive(m, n) });
    if (!check.ok) {
      this.adminFailed(requestId, check.reason, check.message);
      return;
    }
    m.configRequest = { requestId, change };
  }

  private onTransferMaster(requestId: number, to: MemberId): void {
    const m = this.mastership;
    if (m === null || m.handover !== null) {
      const why = m === null ? "this member is not the master" : "this master is already handing over";
      this.adminFailed(requestId, m === null ? "not_master" : "conflict", why);
      return;
    }
    if (to === this.self) {
      this.adminFailed(requestId, "invalid", `${to} is already the master`);
      return;
    }
    const current = this.history.at(this.chosenUpTo + 1);
    if (!isVoter(current, to) || !isVoter(this.history.latest.config, to)) {
      const role = roleOf(this.history.latest.config, to);
      this.adminFailed(requestId, "invalid", `${to} is not a voter (${role ?? "not a member"})`);
      return;
    }
    if (m.configRequest !== null) {
      this.adminFailed(requestId, "conflict", "a configuration change is waiting to be proposed");
      return;
    }
    m.handover = { requestId, to, deadline: this.now + 2 * this.timing.electionTimeoutMs };
    m.commitDirty = true;
  }

  /** The live voter, other than us, that has chosen the most, if any can take over. */
  private pickSuccessor(m: MasterState): MemberId | null {
    let best: MemberId | null = null;
    let bestChosen = -2;
    const latest = this.history.latest.config;
    for (const v of votersOf(this.history.at(this.chosenUpTo + 1))) {
      if (v === this.self || !isVoter(latest, v) || !this.isLive(m, v)) continue;
      const c = m.peerChosenUpTo.get(v) ?? -1;
      if (c > bestChosen) {
        best = v;
        bestChosen = c;
      }
    }
    return best;
  }

  /**
   * A handover waits until nothing is in flight and the successor has everything chosen, then
   * tells every member and steps down. A requested handover that takes too long is abandoned; a
   * removed master that finds no successor in time just steps down.
   */
  private progressHandover(): void {
    const m = this.mastership;
    const h = m?.handover;
    if (m === null || m === undefined || h === null || h === undefined) return;
    if (this.now >= h.deadline) {
      if (h.requestId !== null) {
        m.handover = null;
        this.adminFailed(h.requestId, "timeout", `${h.to} did not catch up in time; this master carries on`);
        return;
      }
      this.stepDown(null);
      this.electionDeadline = this.nextElectionDeadline();
      return;
    }
    if (m.inFlight.size > 0) return;
    const to = h.to ?? this.pickSuccessor(m);
    if (to === null || (m.peerChosenUpTo.get(to) ?? -1) < this.chosenUpTo) return;
    const msg: Message = { type: "handover", ballot: m.ballot, to };
    for (const name of this.notifyTargets()) this.sendNow(name, msg);
    m.handover = null;
    if (h.requestId !== null) this.out.adminDone.push({ requestId: h.requestId, instance: this.chosenUpTo });
    this.stepDown(to);
    this.heardFromMaster(to);
  }

  // ---------------------------------------------------------------------------------------------
  // Linearizable reads (read index: confirm the ballot with a quorum, no clocks involved)

  private onReadIndex(requestId: number): void {
    const m = this.mastership;
    if (m === null) {
      this.out.readsFailed.push({ requestId, reason: "not_master" });
      return;
    }
    m.readsWaiting.push(requestId);
    this.maybeCompleteReads();
  }

  private maybeCompleteReads(): void {
    const m = this.mastership;
    if (m === null) return;
    const round = m.readRound;
    if (round !== null) {
      const acked = { has: (n: MemberId) => n === this.self || round.acks.has(n) };
      if (round.configs.every((c) => hasMajority(c, acked))) {
        for (const requestId of round.requestIds) this.out.readsReady.push({ requestId, index: round.index });
        m.readRound = null;
      }
    }
    // Until everything phase 1 found is chosen here, our chosen point may miss writes that an
    // earlier master acknowledged, so reads wait for recovery to finish.
    if (m.readRound !== null || m.readsWaiting.length === 0 || this.chosenUpTo < m.recoveryUpTo) return;
    // Every configuration that governs an instance the next writes could land in must have
    // promised our ballot and must confirm it: an older master could otherwise still get a value
    // chosen right after the index by voters we never asked.
    const index = this.chosenUpTo;
    const configs = this.history.between(index + 1, index + this.activationDelay);
    for (const c of configs) {
      if (!hasMajority(c, m.promisers)) {
        this.askPromises(m, c);
        return;
      }
    }
    m.readSeq++;
    m.readRound = {
      seq: m.readSeq,
      index,
      requestIds: m.readsWaiting.splice(0),
      acks: new Set(),
      sentAt: this.now,
      configs,
    };
    if (configs.every((c) => hasMajority(c, new Set([this.self])))) return this.maybeCompleteReads();
    m.commitDirty = true;
  }
}
