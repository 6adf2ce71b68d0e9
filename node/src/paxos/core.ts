// The consensus core: multi-Paxos with a master, as a deterministic state machine.
//
// Events go in through step(); everything the shell must do comes out of ready(): what to
// persist (synced), what to send before and after that persist, which chosen values to execute,
// and which client requests failed. No I/O, no timers, no clock reads, no ambient randomness:
// time arrives in `tick` events and randomness through the injected `random`.
// The protocol and its safety argument are in README.md beside this file.

import {
  type AcceptedEntry,
  type Ballot,
  ballotsEqual,
  type ChosenEntry,
  compareBallots,
  type Envelope,
  type LogRecord,
  type MemberId,
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
}

export const DEFAULT_TIMING: Timing = { heartbeatMs: 100, electionTimeoutMs: 1000, retryMs: 200 };

export interface CoreOptions {
  self: MemberId;
  voters: readonly MemberId[];
  /** Unique per process start, so value ids never repeat across restarts. */
  incarnation: string;
  random: () => number;
  now: number;
  recovered: { promised: Ballot; chosenUpTo: number; unchosen: readonly LogRecord[] };
  timing?: Partial<Timing>;
  /** Instances a master keeps in flight at once. */
  window?: number;
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
  persist: { promised?: Ballot; records: LogRecord[]; chosenUpTo?: number; sync: boolean } | null;
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
}

export type CoreEvent =
  | { type: "tick"; now: number }
  | { type: "receive"; from: MemberId; message: Message }
  | { type: "propose"; requestId: number; command: Uint8Array }
  | { type: "readIndex"; requestId: number }
  | { type: "learnLoaded"; to: MemberId; entries: readonly ChosenEntry[] };

interface InFlight {
  readonly value: Value;
  readonly acks: Set<MemberId>;
  sentAt: number;
}

interface MasterState {
  readonly ballot: Ballot;
  /** Every instance in [ballotFrom, ballotChosenUpTo] was chosen by this master at its ballot. */
  readonly ballotFrom: number;
  ballotChosenUpTo: number;
  /** Highest instance found in phase 1; reads wait until everything up to it is chosen here. */
  readonly recoveryUpTo: number;
  nextInstance: number;
  readonly inFlight: Map<number, InFlight>;
  lastHeartbeat: number;
  /** The commit notice changed (more chosen, or a read round started): send it with this ready. */
  commitDirty: boolean;
  readSeq: number;
  /** Read confirmation round in progress: its sequence, its reads, the index they will get. */
  readRound: { seq: number; index: number; requestIds: number[]; acks: Set<MemberId>; sentAt: number } | null;
  readsWaiting: number[];
  /** Last ack from each peer: its contiguous chosen point, for lag and learning decisions. */
  readonly peerChosenUpTo: Map<MemberId, number>;
}

interface CandidateState {
  readonly ballot: Ballot;
  readonly from: number;
  readonly promises: Map<MemberId, { chosenUpTo: number; accepted: readonly AcceptedEntry[] }>;
  sentAt: number;
}

interface QueuedCommand {
  readonly requestId: number;
  readonly command: Uint8Array;
}

export interface CoreStatus {
  readonly role: Role;
  readonly master: MemberId | null;
  readonly ballot: Ballot;
  readonly promised: Ballot;
  readonly chosenUpTo: number;
  readonly knownChosenUpTo: number;
  /** Master only: each voter's contiguous chosen point as last reported. */
  readonly peerChosenUpTo: ReadonlyMap<MemberId, number>;
  readonly queued: number;
  readonly inFlight: number;
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
  };
}

export class PaxosCore {
  readonly self: MemberId;
  private readonly voters: readonly MemberId[];
  private readonly timing: Timing;
  private readonly window: number;
  private readonly maxBatchCommands: number;
  private readonly maxBatchBytes: number;
  private readonly maxQueuedCommands: number;
  private readonly eagerInFlight: number;
  private readonly incarnation: string;
  private readonly random: () => number;
  private now: number;

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

  private out: Ready = emptyReady();

  constructor(opts: CoreOptions) {
    if (!opts.voters.includes(opts.self)) {
      throw new Error(`member ${opts.self} is not among the voters ${opts.voters.join(",")}`);
    }
    this.self = opts.self;
    this.voters = [...opts.voters];
    this.timing = { ...DEFAULT_TIMING, ...opts.timing };
    this.window = opts.window ?? 32;
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

  step(event: CoreEvent): void {
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
    }
  }

  /** Everything the shell must do since the last call. Forms new proposals from queued commands first. */
  ready(): Ready {
    this.fillWindow();
    if (this.mastership?.commitDirty) this.sendHeartbeat();
    const r = this.out;
    this.out = emptyReady();
    return r;
  }

  status(): CoreStatus {
    return {
      role: this.role,
      master: this.master,
      ballot: this.mastership?.ballot ?? this.candidate?.ballot ?? ZERO_BALLOT,
      promised: this.promised,
      chosenUpTo: this.chosenUpTo,
      knownChosenUpTo: Math.max(this.knownChosenUpTo, this.chosenUpTo),
      peerChosenUpTo: this.mastership?.peerChosenUpTo ?? new Map(),
      queued: this.queue.length,
      inFlight: this.mastership?.inFlight.size ?? 0,
    };
  }

  get quorum(): number {
    return Math.floor(this.voters.length / 2) + 1;
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

  private broadcastNow(message: Message): void {
    for (const v of this.voters) this.sendNow(v, message);
  }

  private persistPromised(): void {
    const batch = this.persistBatch();
    batch.promised = this.promised;
    batch.sync = true;
  }

  private persistRecord(rec: LogRecord): void {
    const batch = this.persistBatch();
    batch.records.push(rec);
    // A vote must be synced before it is announced; a chosen mark can be learned again.
    if (!rec.chosen) batch.sync = true;
  }

  private persistBatch(): NonNullable<Ready["persist"]> {
    if (this.out.persist === null) this.out.persist = { records: [], sync: false };
    return this.out.persist;
  }

  // ---------------------------------------------------------------------------------------------
  // Time

  private nextElectionDeadline(): number {
    const t = this.timing.electionTimeoutMs;
    return this.now + t + Math.floor(this.random() * t);
  }

  private onTick(): void {
    if (this.role === "master") this.masterTick();
    else if (this.now >= this.electionDeadline) this.startElection();
    else if (this.role === "candidate") this.retransmitPrepare();
    this.maybeLearn();
  }

  private masterTick(): void {
    const m = this.mastership!;
    if (this.now - m.lastHeartbeat >= this.timing.heartbeatMs) this.sendHeartbeat();
    for (const [instance, f] of m.inFlight) {
      if (this.now - f.sentAt < this.timing.retryMs) continue;
      f.sentAt = this.now;
      const msg: Message = { type: "accept", ballot: m.ballot, entries: [{ instance, value: f.value }] };
      for (const v of this.voters) if (!f.acks.has(v)) this.sendNow(v, msg);
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
    const msg: Message = {
      type: "commit",
      ballot: m.ballot,
      from: m.ballotFrom,
      to: m.ballotChosenUpTo,
      readSeq: m.readSeq,
    };
    for (const v of this.voters) if (v !== this.self) this.sendNow(v, msg);
  }

  // ---------------------------------------------------------------------------------------------
  // Leadership

  private startElection(): void {
    if (this.role === "master") this.leaveMastership();
    else this.stepDown(null);
    const ballot: Ballot = {
      counter: Math.max(this.maxSeenCounter, this.promised.counter) + 1,
      member: this.self,
    };
    this.maxSeenCounter = ballot.counter;
    this.role = "candidate";
    this.candidate = { ballot, from: this.chosenUpTo + 1, promises: new Map(), sentAt: this.now };
    this.electionDeadline = this.nextElectionDeadline();
    // Our own promise is persisted before any prepare leaves: after a crash we then never pick this
    // counter again, so no ballot is ever used for two different values.
    this.promised = ballot;
    this.persistPromised();
    const msg: Message = { type: "prepare", ballot, from: this.candidate.from };
    for (const v of this.voters) this.sendAfterPersist(v, msg);
  }

  private retransmitPrepare(): void {
    const c = this.candidate!;
    if (this.now - c.sentAt < this.timing.retryMs) return;
    c.sentAt = this.now;
    const msg: Message = { type: "prepare", ballot: c.ballot, from: c.from };
    for (const v of this.voters) if (!c.promises.has(v)) this.sendAfterPersist(v, msg);
  }

  /** Leave candidate or master role; `master` is who we now believe leads, if anyone. */
  private stepDown(master: MemberId | null): void {
    if (this.role === "master") this.leaveMastership();
    for (const q of this.queue) this.out.failed.push({ requestId: q.requestId, reason: "not_proposed" });
    this.queue.length = 0;
    this.role = "follower";
    this.candidate = null;
    this.mastership = null;
    this.master = master;
  }

  /** Pending reads fail; queued commands stay for a possible immediate re-election. */
  private leaveMastership(): void {
    const m = this.mastership!;
    const pendingReads = [...(m.readRound?.requestIds ?? []), ...m.readsWaiting];
    for (const requestId of pendingReads) this.out.readsFailed.push({ requestId, reason: "not_master" });
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
    }
  }

  private reject(to: MemberId, ballot: Ballot): void {
    this.sendNow(to, { type: "reject", ballot, promised: this.promised, master: this.master });
  }

  private onPrepare(from: MemberId, ballot: Ballot, fromInstance: number): void {
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

  private onPromise(
    from: MemberId,
    ballot: Ballot,
    chosenUpTo: number,
    accepted: readonly AcceptedEntry[],
  ): void {
    const c = this.candidate;
    if (c === null || !ballotsEqual(c.ballot, ballot)) return;
    c.promises.set(from, { chosenUpTo, accepted });
    if (c.promises.size >= this.quorum) this.becomeMaster(c);
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

    this.role = "master";
    this.candidate = null;
    this.master = this.self;
    const m: MasterState = {
      ballot: c.ballot,
      ballotFrom: maxChosen + 1,
      ballotChosenUpTo: maxChosen,
      recoveryUpTo: highest,
      nextInstance: highest + 1,
      inFlight: new Map(),
      lastHeartbeat: Number.NEGATIVE_INFINITY,
      commitDirty: true,
      readSeq: 0,
      readRound: null,
      readsWaiting: [],
      peerChosenUpTo: new Map(),
    };
    this.mastership = m;
    if (maxChosenHolder !== null) {
      this.knownChosenUpTo = Math.max(this.knownChosenUpTo, maxChosen);
      this.learnHint = maxChosenHolder;
    }
    // Re-propose, at our ballot, whatever the quorum may have chosen above maxChosen; fill holes
    // with no-ops so the log has no gaps.
    const entries: ChosenEntry[] = [];
    for (let i = maxChosen + 1; i <= highest; i++) {
      const value = best.get(i)?.value ?? { kind: "noop" as const, id: this.newValueId() };
      m.inFlight.set(i, { value, acks: new Set(), sentAt: this.now });
      entries.push({ instance: i, value });
    }
    if (entries.length > 0) this.broadcastNow({ type: "accept", ballot: m.ballot, entries });
    this.maybeLearn();
  }

  private onAccept(from: MemberId, ballot: Ballot, entries: readonly ChosenEntry[]): void {
    const cmp = compareBallots(ballot, this.promised);
    if (cmp < 0) return this.reject(from, ballot);
    if (cmp > 0) {
      this.yieldTo(ballot, ballot.member);
      this.promised = ballot;
      this.persistPromised();
    }
    if (from !== this.self) this.heardFromMaster(ballot.member);
    const instances: number[] = [];
    for (const e of entries) {
      instances.push(e.instance);
      if (e.instance <= this.chosenUpTo || this.chosenAhead.has(e.instance)) continue;
      this.votes.set(e.instance, { ballot, value: e.value });
      this.persistRecord({ instance: e.instance, ballot, value: e.value, chosen: false });
    }
    this.sendAfterPersist(from, { type: "accepted", ballot, instances });
  }

  private onAccepted(from: MemberId, ballot: Ballot, instances: readonly number[]): void {
    const m = this.mastership;
    if (m === null || !ballotsEqual(m.ballot, ballot)) return;
    for (const i of instances) {
      const f = m.inFlight.get(i);
      if (f === undefined) continue;
      f.acks.add(from);
      if (f.acks.size < this.quorum) continue;
      m.inFlight.delete(i);
      this.markChosen(i, f.value, ballot);
    }
    const before = m.ballotChosenUpTo;
    while (m.ballotChosenUpTo + 1 < m.nextInstance && !m.inFlight.has(m.ballotChosenUpTo + 1)) {
      m.ballotChosenUpTo++;
    }
    if (m.ballotChosenUpTo > before) m.commitDirty = true;
    this.maybeCompleteReads();
  }

  private onReject(ballot: Ballot, promised: Ballot, master: MemberId | null): void {
    const own = this.ownBallot();
    if (own === null || !ballotsEqual(own, ballot)) return;
    if (compareBallots(promised, own) > 0) {
      // A master refused by a higher promise re-runs phase 1 at once with a higher ballot, so a
      // member that campaigned while cut off cannot depose a healthy master. If another master
      // is really live, the other acceptors refuse us and name it, and we step down then.
      if (this.role === "master") this.startElection();
      else this.yieldTo(promised, master);
      return;
    }
    // Refused because a live master holds that acceptor's allegiance: back off and follow it.
    if (this.role === "candidate" && master !== null && master !== this.self) {
      this.stepDown(master);
      this.electionDeadline = this.nextElectionDeadline();
    }
  }

  private onCommit(from: MemberId, ballot: Ballot, fromInstance: number, to: number, readSeq: number): void {
    if (compareBallots(ballot, this.promised) < 0) return this.reject(from, ballot);
    this.yieldTo(ballot, ballot.member);
    if (this.role !== "master") this.heardFromMaster(ballot.member);
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
    if (ok && m.readRound !== null && readSeq >= m.readRound.seq) m.readRound.acks.add(from);
    this.maybeCompleteReads();
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
      this.out.committed.push({
        instance: this.chosenUpTo,
        value: next.value,
        requestIds: this.settleOwnProposal(this.chosenUpTo, next.value),
      });
    }
    if (this.chosenUpTo > start) this.persistBatch().chosenUpTo = this.chosenUpTo;
  }

  /** Request ids to acknowledge if our proposal won `instance`; a lost proposal fails its requests. */
  private settleOwnProposal(instance: number, chosen: Value): readonly number[] | null {
    const own = this.ownProposals.get(instance);
    if (own === undefined) return null;
    this.ownProposals.delete(instance);
    if (own.valueId === chosen.id) return own.requestIds;
    for (const requestId of own.requestIds) this.out.failed.push({ requestId, reason: "lost" });
    return null;
  }

  private maybeLearn(): void {
    if (this.knownChosenUpTo <= this.chosenUpTo) return;
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
    const others = this.voters.filter((v) => v !== this.self);
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

  /** Turn queued commands into new instances, as many as the pipeline window allows. */
  private fillWindow(): void {
    const m = this.mastership;
    if (m === null || this.queue.length === 0) return;
    const entries: ChosenEntry[] = [];
    let taken = 0;
    while (taken < this.queue.length && m.nextInstance <= this.chosenUpTo + this.window) {
      const fullBatch = this.queue.length - taken >= this.maxBatchCommands;
      if (m.inFlight.size >= this.eagerInFlight && !fullBatch) break;
      const commands: Uint8Array[] = [];
      const requestIds: number[] = [];
      let bytes = 0;
      while (taken < this.queue.length && commands.length < this.maxBatchCommands) {
        const q = this.queue[taken]!;
        if (commands.length > 0 && bytes + q.command.length > this.maxBatchBytes) break;
        commands.push(q.command);
        requestIds.push(q.requestId);
        bytes += q.command.length;
        taken++;
      }
      const value: Value = { kind: "commands", id: this.newValueId(), commands };
      const instance = m.nextInstance++;
      m.inFlight.set(instance, { value, acks: new Set(), sentAt: this.now });
      this.ownProposals.set(instance, { valueId: value.id, requestIds });
      entries.push({ instance, value });
    }
    this.queue.splice(0, taken);
    if (entries.length > 0) this.broadcastNow({ type: "accept", ballot: m.ballot, entries });
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
    if (round !== null && round.acks.size + 1 >= this.quorum) {
      for (const requestId of round.requestIds) this.out.readsReady.push({ requestId, index: round.index });
      m.readRound = null;
    }
    // Until everything phase 1 found is chosen here, our chosen point may miss writes that an
    // earlier master acknowledged, so reads wait for recovery to finish.
    if (m.readRound !== null || m.readsWaiting.length === 0 || this.chosenUpTo < m.recoveryUpTo) return;
    m.readSeq++;
    m.readRound = {
      seq: m.readSeq,
      index: this.chosenUpTo,
      requestIds: m.readsWaiting.splice(0),
      acks: new Set(),
      sentAt: this.now,
    };
    if (this.quorum === 1) return this.maybeCompleteReads();
    m.commitDirty = true;
  }
}
