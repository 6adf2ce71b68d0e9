// Deterministic simulation of a whole group around the pure core, from one seed: a network that
// loses, duplicates, delays and reorders messages and can be partitioned; disks whose writes are
// only durable once their (simulated) fsync completes; crashes that lose everything unsynced;
// members whose clocks run at different rates; optionally membership changes (learners added,
// promoted, voters removed, the master among them) and master handovers. Every run checks the
// safety invariants as it goes and liveness once the faults stop.

import { hasMajority, isOneStep, majority, rejoinAnswersNeeded, votersOf } from "../../src/paxos/config.js";
import {
  type CoreEvent,
  fenceBallot,
  PaxosCore,
  type Ready,
  type RejoinAnswer,
  rejoinState,
  type Timing,
} from "../../src/paxos/core.js";
import type {
  Ballot,
  ChosenEntry,
  ConfigChange,
  Configuration,
  Envelope,
  LogRecord,
  MemberId,
  Value,
} from "../../src/paxos/types.js";
import { ZERO_BALLOT } from "../../src/paxos/types.js";

/** mulberry32: small, fast, and good enough to drive a simulation reproducibly. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  between(lo: number, hi: number): number {
    return lo + this.next() * (hi - lo);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

export class InvariantViolation extends Error {
  override readonly name = "InvariantViolation";
}

export interface SimOptions {
  seed: number;
  members: number;
  /** Faults are injected during [0, faultsUntil); afterwards the network heals and everyone restarts. */
  faultsUntil: number;
  /** Total simulated time; the tail after faultsUntil must show progress. */
  duration: number;
  /** Propose random membership changes and master handovers while the faults run. */
  membership?: boolean;
  /** The core's activation delay (the window is 8); by default the core's own. */
  activationDelay?: number;
  /**
   * Some crashes also lose the member's disk: it restarts empty and rejoins as the runtime does,
   * abstaining until it has learned what a minority-proof set of the other voters knows
   * ("protected"), or, to show what that rule prevents, straight back as a voter ("unprotected").
   */
  amnesia?: "protected" | "unprotected";
  trace?: (line: string) => void;
}

const TIMING: Timing = { heartbeatMs: 40, electionTimeoutMs: 250, retryMs: 80, lazyAcceptMs: 10 };
const TICK_MS = 10;
const MAX_TICK_MS = 1000;
const LEARN_BATCH = 8;
/** Time after the faults stop within which the group must be serving again. */
const SETTLE_MS = 1000;
const WINDOW = 8;
/** A group never grows beyond this many members, voters and learners together. */
const MAX_MEMBERS = 5;
/** Clients stop this long before the end, so their last commands have time to finish. */
const CLIENT_QUIET_MS = 300;

interface QueueItem {
  time: number;
  seq: number;
  run: () => void;
}

/** Binary min-heap by (time, seq): equal times run in scheduling order, so runs are reproducible. */
class EventQueue {
  private readonly heap: QueueItem[] = [];
  private seq = 0;
  push(time: number, run: () => void): void {
    const item = { time, seq: this.seq++, run };
    const h = this.heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): QueueItem | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last !== undefined) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
  private less(a: QueueItem, b: QueueItem): boolean {
    return a.time < b.time || (a.time === b.time && a.seq < b.seq);
  }
}

interface DurableLog {
  promised: Ballot;
  chosenUpTo: number;
  records: Map<number, LogRecord>;
  /** Written before a member that lost its disk starts again (see CoreOptions.abstainUntil). */
  abstainUntil: number;
  fencedBy: MemberId[] | null;
}

interface SimMember {
  readonly name: MemberId;
  /** What the member is started with: the voters it knows of, and itself as a learner if it joined. */
  readonly initialVoters: readonly MemberId[];
  readonly joined: boolean;
  /** After it lost its disk: the configuration the running group told it about, which it starts with. */
  rejoinConfig: Configuration | null;
  /** Lost its disk and has not started since. */
  lostDisk: boolean;
  /** Bumped by every rejoin attempt: only the latest may start the member. */
  rejoinAttempt: number;
  core: PaxosCore | null;
  /** Bumped on every crash: completions scheduled by an earlier life are ignored. */
  life: number;
  readonly durable: DurableLog;
  /** Written without sync: durable once a later synced write completes, lost in a crash. */
  readonly unsynced: NonNullable<Ready["persist"]>[];
  /** When the last scheduled ready finishes; readies complete in order, like a real pipeline. */
  pipelineTail: number;
  /** The state machine: executed instances, in order (kept durable in the model). */
  executed: number;
  readonly clockRate: number;
  readonly clockOffset: number;
  /** The armed tick, as the runtime arms one: when it fires (null when none) and its number. */
  tickAt: number | null;
  tickSeq: number;
  /** Client requests waiting for an answer from this member's current life. */
  readonly pending: Map<number, number>;
  /** Read requests waiting: request id -> highest instance acknowledged to a client when the read began. */
  readonly pendingReads: Map<number, number>;
}

interface ClientCommand {
  readonly id: number;
  readonly createdAt: number;
  readonly bytes: Uint8Array;
  acknowledgedAt: number | null;
  /** Attempts whose outcome is unknown: only these could possibly have been chosen. */
  unknownAttempts: number;
  definiteFailures: number;
}

export interface SimResult {
  readonly acknowledged: number;
  readonly chosen: number;
  readonly elections: number;
  readonly reads: number;
  readonly events: number;
  /** Configuration changes reported done, and their kinds. */
  readonly changes: number;
  readonly changeKinds: ReadonlySet<ConfigChange["kind"]>;
  /** Handovers reported done. */
  readonly transfers: number;
  /** True when some change removed the member that was master when it was asked. */
  readonly removedMaster: boolean;
}

const decoder = new TextDecoder();

export function runSimulation(opts: SimOptions): SimResult {
  const rng = new Rng(opts.seed);
  const trace = opts.trace;
  const queue = new EventQueue();
  const alpha = opts.activationDelay;
  // One seed in five sends every accept to every voter at once, as lazyAcceptMs 0 configures.
  const timing: Timing = { ...TIMING, lazyAcceptMs: opts.seed % 5 === 0 ? 0 : TIMING.lazyAcceptMs };
  let now = 0;
  let events = 0;
  const founders = Array.from({ length: opts.members }, (_, i) => `m${i + 1}`);
  const members = new Map<MemberId, SimMember>();
  const addressOf = (name: MemberId) => `addr-${name}`;

  function addMember(name: MemberId, initialVoters: readonly MemberId[], joined: boolean): SimMember {
    const m: SimMember = {
      name,
      initialVoters,
      joined,
      rejoinConfig: null,
      lostDisk: false,
      rejoinAttempt: 0,
      core: null,
      life: 0,
      durable: {
        promised: ZERO_BALLOT,
        chosenUpTo: -1,
        records: new Map(),
        abstainUntil: -1,
        fencedBy: null,
      },
      unsynced: [],
      pipelineTail: 0,
      executed: -1,
      clockRate: rng.between(0.85, 1.15),
      clockOffset: rng.between(0, 5000),
      tickAt: null,
      tickSeq: 0,
      pending: new Map(),
      pendingReads: new Map(),
    };
    members.set(name, m);
    return m;
  }
  for (const name of founders) addMember(name, founders, false);
  const allNames = () => [...members.keys()];

  // Fault state.
  let lossRate = 0;
  let dupRate = 0;
  let partition: Map<MemberId, number> | null = null;
  const faultsActive = () => now < opts.faultsUntil;
  const side = (name: MemberId) => partition?.get(name) ?? 0;

  // Global truth for the invariants.
  const chosenValues = new Map<number, Value>();
  /** Every durable vote: instance -> "ballot|value id" -> voters. */
  const votes = new Map<number, Map<string, Set<MemberId>>>();
  const commands = new Map<number, ClientCommand>();
  const requestToCommand = new Map<number, number>();
  let nextRequestId = 1;
  let nextCommandId = 1;
  let highestAcknowledgedInstance = -1;
  let reads = 0;
  let elections = 0;
  let changes = 0;
  let transfers = 0;
  let removedMaster = false;
  const changeKinds = new Set<ConfigChange["kind"]>();
  /** Admin requests in flight: request id -> what was asked, for the trace and the checks. */
  const adminRequests = new Map<number, { kind: ConfigChange["kind"] | "transfer"; by: MemberId }>();
  let nextMemberNumber = opts.members + 1;

  const fail = (msg: string): never => {
    throw new InvariantViolation(`seed ${opts.seed} at t=${now.toFixed(2)}: ${msg}`);
  };

  const localTime = (m: SimMember) => Math.floor(now * m.clockRate + m.clockOffset);

  // ------------------------------------------------------------------------------------------
  // Configurations of the global chosen log (the same rule as the core's, computed independently)

  const activation = alpha ?? 32;
  const initialConfig: Configuration = {
    members: founders.map((name) => ({ name, address: addressOf(name), role: "voter" as const })),
  };
  /** Chosen configuration values in instance order: [instance, config]. */
  const chosenConfigs: [number, Configuration][] = [];

  function globalConfigAt(instance: number): Configuration {
    let c = initialConfig;
    for (const [k, config] of chosenConfigs) if (k + activation <= instance) c = config;
    return c;
  }

  function latestGlobalConfig(): Configuration {
    return chosenConfigs.at(-1)?.[1] ?? initialConfig;
  }

  function recordChosenConfig(instance: number, config: Configuration): void {
    const prev = chosenConfigs.at(-1);
    if (prev !== undefined) {
      // One change at a time: the previous configuration was in force before this one was chosen.
      if (instance < prev[0] + activation) {
        fail(`configuration chosen at ${instance} while the one chosen at ${prev[0]} was still pending`);
      }
    }
    const before = prev?.[1] ?? initialConfig;
    if (!isOneStep(before, config)) {
      fail(`configuration at ${instance} is not one step from the previous: ${JSON.stringify(config)}`);
    }
    chosenConfigs.push([instance, config]);
  }

  // ------------------------------------------------------------------------------------------
  // Members

  function start(m: SimMember): void {
    m.life++;
    // Replay what the durable log has chosen beyond the state machine, as the real runtime does.
    for (let i = m.executed + 1; i <= m.durable.chosenUpTo; i++) {
      const rec = m.durable.records.get(i);
      if (rec === undefined || !rec.chosen)
        fail(`${m.name}: durable chosenUpTo ${m.durable.chosenUpTo} but ${i} missing`);
      execute(m, i, rec!.value);
    }
    const unchosen = [...m.durable.records.values()]
      .filter((r) => r.instance > m.durable.chosenUpTo)
      .sort((a, b) => a.instance - b.instance);
    // Like the runtime: the configurations of the chosen log go back in.
    const configurations: { instance: number; config: Configuration }[] = [];
    for (const rec of m.durable.records.values()) {
      if (rec.chosen && rec.instance <= m.durable.chosenUpTo && rec.value.kind === "config") {
        configurations.push({ instance: rec.instance, config: rec.value.config });
      }
    }
    const rejoin = m.rejoinConfig;
    const voters = rejoin === null ? m.initialVoters : votersOf(rejoin);
    const learners =
      rejoin === null
        ? m.joined
          ? [m.name]
          : []
        : rejoin.members.filter((x) => x.role === "learner").map((x) => x.name);
    // Not in the group's configuration any more: it joins as a new member would, as a learner.
    if (!voters.includes(m.name) && !learners.includes(m.name)) learners.push(m.name);
    m.core = new PaxosCore({
      self: m.name,
      voters,
      learners,
      addresses: Object.fromEntries([m.name, ...voters, ...learners].map((n) => [n, addressOf(n)])),
      abstainUntil: m.durable.abstainUntil,
      fencedBy: m.durable.fencedBy,
      configurations,
      incarnation: String(m.life),
      random: () => rng.next(),
      now: localTime(m),
      recovered: { promised: m.durable.promised, chosenUpTo: m.durable.chosenUpTo, unchosen },
      timing,
      window: WINDOW,
      ...(alpha !== undefined ? { activationDelay: alpha } : {}),
      maxBatchCommands: 16,
    });
    m.pipelineTail = now;
    trace?.(`${now.toFixed(2)} ${m.name} start life=${m.life} chosenUpTo=${m.durable.chosenUpTo}`);
    m.tickAt = null;
    armTick(m);
  }

  /**
   * A member that lost its disk starts again as the runtime's discovery has it. Running members
   * answer; the one that has seen the most instances names the configuration (and the pending one),
   * which the member starts with. It asks the other voters of each that are running for their
   * promised ballot, as many as it takes to meet every majority's other members, has them promise
   * a ballot above all of those (the fence), and once each has synced that promise persists the
   * highest ballot and instance they reported with it (the naming member's included) before its
   * core starts. Whatever the configuration says of it: a member removed before it lost its disk
   * may still have votes that a member cut off since then counts on. Until enough members answer,
   * it waits, as the runtime does; an answerer that crashes before its promise is synced makes it
   * ask again.
   */
  function rejoinEmpty(m: SimMember): void {
    const attempt = ++m.rejoinAttempt;
    const answering = [...members.values()].filter((x) => x !== m && x.core?.rejoinAnswer().established);
    const answers = new Map(answering.map((x) => [x.name, x.core!.rejoinAnswer()]));
    let namer: SimMember | undefined;
    for (const x of answering) {
      if (
        namer === undefined ||
        answers.get(x.name)!.highestInstance > answers.get(namer.name)!.highestInstance
      )
        namer = x;
    }
    const waitAndRetry = () =>
      queue.push(now + 50, () => {
        if (m.core === null && m.lostDisk && m.rejoinAttempt === attempt) rejoinEmpty(m);
      });
    if (namer === undefined) return waitAndRetry();
    const view = namer.core!.status().configuration;
    const configs = [
      { members: view.members },
      ...(view.pending === null ? [] : [{ members: view.pending.members }]),
    ];
    const join = () => {
      m.rejoinConfig = configs[0]!;
      m.lostDisk = false;
      start(m);
    };
    if (opts.amnesia !== "protected") return join();
    const named = answers.get(namer.name)!;
    fenceVoters(m, configs, named, waitAndRetry, (joined, fenced, fence) => {
      if (m.core !== null || !m.lostDisk || m.rejoinAttempt !== attempt) return;
      m.durable.promised = joined.promised;
      m.durable.abstainUntil = joined.abstainUntil;
      m.durable.fencedBy = fenced;
      trace?.(
        `${now.toFixed(2)} ${m.name} rejoins empty: ${namer.name} names the configuration, fenced ` +
          `${fenced.join(",")} at ${JSON.stringify(fence)}, promised ${JSON.stringify(joined.promised)}, ` +
          `abstains until ${joined.abstainUntil}`,
      );
      join();
    });
  }

  /**
   * The runtime's fenceVoters: enough running voters of each configuration answer, promise a
   * fence above their answers, and report once that promise is synced. `retry` when too few run or
   * one crashes before its promise is synced.
   */
  function fenceVoters(
    m: SimMember,
    configs: readonly Configuration[],
    seen: RejoinAnswer | null,
    retry: () => void,
    done: (joined: { promised: Ballot; abstainUntil: number }, fenced: MemberId[], fence: Ballot) => void,
  ): void {
    const asked: MemberId[] = [];
    for (const c of configs) {
      const others = votersOf(c).filter(
        (n) => n !== m.name && members.get(n)?.core?.rejoinAnswer().established,
      );
      const needed = rejoinAnswersNeeded(c);
      const count = () => asked.filter((n) => others.includes(n)).length;
      while (count() < needed) {
        const left = others.filter((n) => !asked.includes(n));
        if (left.length === 0) return retry();
        asked.push(rng.pick(left));
      }
    }
    const known = seen === null ? [] : [seen];
    const fence = fenceBallot(m.name, [...known, ...asked.map((n) => members.get(n)!.core!.rejoinAnswer())]);
    const fenced = asked.map((name) => {
      const x = members.get(name)!;
      step(x, { type: "fence", ballot: fence });
      // The runtime answers once this Ready's persist is synced: when its pipeline gets there.
      return { x, life: x.life, answer: x.core!.rejoinAnswer(), syncedAt: x.pipelineTail };
    });
    queue.push(Math.max(now, ...fenced.map((f) => f.syncedAt)), () => {
      if (fenced.some((f) => f.x.life !== f.life)) return retry();
      done(rejoinState([...known, ...fenced.map((f) => f.answer)]), asked, fence);
    });
  }

  /** A rejoining member's `fenceNeeded`, answered with a `fenced` event in the same life. */
  function fenceMore(m: SimMember, configs: readonly Configuration[]): void {
    const life = m.life;
    const retry = () =>
      queue.push(now + 50, () => {
        if (m.life === life && m.core !== null) fenceMore(m, configs);
      });
    trace?.(`${now.toFixed(2)} ${m.name} must fence more: ${JSON.stringify(configs.map(votersOf))}`);
    fenceVoters(m, configs, null, retry, (joined, fenced) => {
      if (m.life !== life || m.core === null) return;
      trace?.(
        `${now.toFixed(2)} ${m.name} fenced ${fenced.join(",")}, abstains until ${joined.abstainUntil}`,
      );
      step(m, {
        type: "fenced",
        by: fenced,
        promised: joined.promised,
        highestInstance: joined.abstainUntil,
      });
    });
  }

  /**
   * Whether `m` may lose its disk now. With two voters, a member rejoining without its disk needs
   * the other to finish what it had in flight; should that one crash first, both wait for each
   * other (see the core's README). The only voter of a group refuses to start without its disk, as
   * in the runtime. The configuration before the latest still governs the instances below the
   * latest's activation, so both count; so does one that members voted for, which may be chosen
   * without anyone knowing yet (its proposer crashed, say, which ends its admin request).
   */
  function mayLoseDisk(m: SimMember): boolean {
    if ([...adminRequests.values()].some((r) => changesVoters(r.kind))) return false;
    const recent = [initialConfig, ...chosenConfigs.map(([, c]) => c)].slice(-2);
    for (const x of members.values()) {
      for (const rec of x.durable.records.values())
        if (!rec.chosen && rec.value.kind === "config") recent.push(rec.value.config);
    }
    return recent.every((c) => {
      const voters = votersOf(c);
      return voters.length !== 2 && !(voters.length === 1 && voters[0] === m.name);
    });
  }

  /** Until what a rejoining member learns is on its disk, it may be the only copy left. */
  function anyoneRejoining(): boolean {
    return [...members.values()].some((x) => x.lostDisk || !durablyCaughtUp(x));
  }

  function durablyCaughtUp(x: SimMember): boolean {
    for (let i = x.durable.chosenUpTo + 1; i <= x.durable.abstainUntil; i++) {
      if (x.durable.records.get(i)?.chosen !== true) return false;
    }
    return true;
  }

  /** The disk is gone too: acceptor state, chosen log and state machine. */
  function wipe(m: SimMember): void {
    trace?.(`${now.toFixed(2)} ${m.name} LOSES ITS DISK`);
    m.durable.promised = ZERO_BALLOT;
    m.durable.chosenUpTo = -1;
    m.durable.records.clear();
    m.durable.abstainUntil = -1;
    m.durable.fencedBy = null;
    m.executed = -1;
    m.lostDisk = true;
  }

  function crash(m: SimMember): void {
    if (m.core === null) return;
    trace?.(`${now.toFixed(2)} ${m.name} CRASH`);
    m.core = null;
    m.life++;
    m.unsynced.length = 0;
    // Requests in flight at a crashed member have an unknown outcome: the client never retries them.
    m.pending.clear();
    m.pendingReads.clear();
    for (const [id, req] of adminRequests) if (req.by === m.name) adminRequests.delete(id);
  }

  /**
   * As the runtime: one tick armed for the core's next deadline, no sooner than TICK_MS and no later
   * than MAX_TICK_MS of the member's own clock; a later deadline never pushes an armed tick back.
   */
  function armTick(m: SimMember): void {
    const local = localTime(m);
    const wait = Math.min(Math.max(m.core!.nextTickAt() - local, TICK_MS), MAX_TICK_MS);
    const at = now + wait / m.clockRate + rng.between(0, 2);
    if (m.tickAt !== null && m.tickAt <= at) return;
    m.tickAt = at;
    const seq = ++m.tickSeq;
    const life = m.life;
    queue.push(at, () => {
      if (m.life !== life || m.core === null || m.tickSeq !== seq) return;
      m.tickAt = null;
      step(m, { type: "tick", now: localTime(m) });
    });
  }

  function step(m: SimMember, ev: CoreEvent): void {
    const core = m.core!;
    const wasMaster = core.status().role === "master";
    core.step(ev, localTime(m));
    if (!wasMaster && core.status().role === "master") {
      elections++;
      trace?.(`${now.toFixed(2)} ${m.name} becomes master ${JSON.stringify(core.status().ballot)}`);
    }
    processReady(m, core.ready());
    armTick(m);
  }

  function processReady(m: SimMember, rd: Ready): void {
    for (const env of rd.sendNow) send(m.name, env);
    // Like the runtime: chosen values are executed at once (they are durable on a quorum), and
    // answers to clients go out with them; everything else waits for this Ready's fsync.
    for (const c of rd.committed) {
      execute(m, c.instance, c.value);
      if (c.requestIds !== null) acknowledge(m, c.instance, c.value, c.requestIds);
    }
    for (const f of rd.failed) settleFailure(m, f.requestId);
    for (const r of rd.readsReady) {
      const before = m.pendingReads.get(r.requestId);
      if (before === undefined) continue;
      m.pendingReads.delete(r.requestId);
      if (r.index < before) fail(`${m.name}: read index ${r.index} misses acknowledged instance ${before}`);
      reads++;
    }
    for (const r of rd.readsFailed) m.pendingReads.delete(r.requestId);
    for (const d of rd.adminDone) adminDone(m, d.requestId, d.instance);
    if (rd.fenceNeeded !== null) fenceMore(m, rd.fenceNeeded);
    for (const f of rd.adminFailed) {
      const req = adminRequests.get(f.requestId);
      adminRequests.delete(f.requestId);
      trace?.(`${now.toFixed(2)} ${m.name} ${req?.kind} failed: ${f.reason} ${f.message}`);
    }
    const life = m.life;
    const fsync = rd.persist === null ? 0 : rd.persist.sync ? rng.between(0.2, 1.5) : 0.01;
    const at = Math.max(now, m.pipelineTail) + fsync;
    m.pipelineTail = at;
    queue.push(at, () => {
      if (m.life !== life || m.core === null) return;
      if (rd.persist !== null) {
        // An unsynced write reaches the disk only with the next synced one (the WAL is ordered);
        // a crash before that loses it.
        m.unsynced.push(rd.persist);
        if (rd.persist.sync) {
          for (const batch of m.unsynced.splice(0)) applyDurably(m, batch);
        }
      }
      for (const env of rd.send) {
        if (env.to === m.name) queue.push(now, () => deliver(m.name, env.to, env.message, life));
        else send(m.name, env);
      }
      for (const load of rd.loads) {
        const entries: ChosenEntry[] = [];
        for (let i = load.from; entries.length < LEARN_BATCH; i++) {
          const rec = visibleRecord(m, i);
          if (rec === undefined || !rec.chosen) break;
          entries.push({ instance: i, value: rec.value });
        }
        queue.push(now, () => {
          if (m.life === life && m.core !== null) step(m, { type: "learnLoaded", to: load.to, entries });
        });
      }
    });
  }

  /** What a read of the log sees: unsynced writes too (they are in memory), until a crash loses them. */
  function visibleRecord(m: SimMember, instance: number): LogRecord | undefined {
    for (let i = m.unsynced.length - 1; i >= 0; i--) {
      const rec = m.unsynced[i]!.records.find((r) => r.instance === instance);
      if (rec !== undefined) return rec;
    }
    return m.durable.records.get(instance);
  }

  function applyDurably(m: SimMember, batch: NonNullable<Ready["persist"]>): void {
    const d = m.durable;
    if (batch.promised !== undefined) d.promised = batch.promised;
    if (batch.abstainUntil !== undefined) d.abstainUntil = batch.abstainUntil;
    if (batch.fencedBy !== undefined) d.fencedBy = batch.fencedBy === null ? null : [...batch.fencedBy];
    for (const rec of batch.records) {
      const prev = d.records.get(rec.instance);
      if (prev?.chosen && !rec.chosen) fail(`${m.name}: chosen record ${rec.instance} overwritten by a vote`);
      d.records.set(rec.instance, rec);
      if (!rec.chosen) {
        const byValue = votes.get(rec.instance) ?? new Map<string, Set<MemberId>>();
        votes.set(rec.instance, byValue);
        const key = `${rec.ballot.counter}.${rec.ballot.member}|${rec.value.id}`;
        const voters = byValue.get(key) ?? new Set<MemberId>();
        byValue.set(key, voters);
        voters.add(m.name);
      }
    }
    if (batch.chosenUpTo !== undefined) d.chosenUpTo = batch.chosenUpTo;
  }

  function execute(m: SimMember, instance: number, value: Value): void {
    const prev = chosenValues.get(instance);
    // The state machine may be ahead of the synced chosen marks after a crash; such values are
    // handed out again and must be the same.
    if (instance <= m.executed) {
      if (prev !== undefined && prev.id !== value.id)
        fail(`instance ${instance} re-learned as ${value.id}, was ${prev.id}`);
      return;
    }
    if (instance !== m.executed + 1) fail(`${m.name} executes ${instance} after ${m.executed}`);
    m.executed = instance;
    if (prev === undefined) {
      chosenValues.set(instance, value);
      if (value.kind === "config") recordChosenConfig(instance, value.config);
    } else if (prev.id !== value.id) fail(`instance ${instance} chosen twice: ${prev.id} and ${value.id}`);
  }

  // ------------------------------------------------------------------------------------------
  // Network

  function send(from: MemberId, env: Envelope): void {
    if (side(from) !== side(env.to)) return;
    if (faultsActive() && rng.chance(lossRate)) return;
    const to = members.get(env.to);
    // A message to a member the simulation never started (a stale name) is lost.
    if (to === undefined) return;
    const copies = faultsActive() && rng.chance(dupRate) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const slow = faultsActive() && rng.chance(0.05);
      const delay = slow ? rng.between(5, 60) : rng.between(0.05, 1.5);
      const life = to.life;
      queue.push(now + delay, () => deliver(from, env.to, env.message, life));
    }
  }

  function deliver(from: MemberId, to: MemberId, message: Envelope["message"], life: number): void {
    const m = members.get(to)!;
    if (m.core === null || m.life !== life) return;
    if (side(from) !== side(to)) return;
    step(m, { type: "receive", from, message });
  }

  // ------------------------------------------------------------------------------------------
  // Clients

  function submit(cmd: ClientCommand, at: SimMember): void {
    if (at.core === null) return;
    const requestId = nextRequestId++;
    requestToCommand.set(requestId, cmd.id);
    at.pending.set(requestId, cmd.id);
    cmd.unknownAttempts++;
    step(at, { type: "propose", requestId, command: cmd.bytes });
  }

  function acknowledge(m: SimMember, instance: number, value: Value, requestIds: readonly number[]): void {
    if (value.kind !== "commands") fail(`acknowledged a ${value.kind} at ${instance}`);
    requestIds.forEach((requestId, i) => {
      const commandId = m.pending.get(requestId);
      if (commandId === undefined) return;
      m.pending.delete(requestId);
      const cmd = commands.get(commandId)!;
      if (value.kind === "commands" && decoder.decode(value.commands[i]) !== `c${commandId}`) {
        fail(`request ${requestId} acknowledged with someone else's command`);
      }
      cmd.unknownAttempts--;
      cmd.acknowledgedAt = instance;
      highestAcknowledgedInstance = Math.max(highestAcknowledgedInstance, instance);
    });
  }

  function settleFailure(m: SimMember, requestId: number): void {
    const commandId = m.pending.get(requestId);
    if (commandId === undefined) return;
    m.pending.delete(requestId);
    const cmd = commands.get(commandId)!;
    cmd.unknownAttempts--;
    cmd.definiteFailures++;
    // Certainly not chosen: the client may send the same command again.
    // Sent to the master this member names, or anywhere when it names none but itself or one
    // outside its configuration (removed members may name each other, as old news).
    const st = m.core?.status();
    const master = st?.master ?? null;
    const inConfig = st?.members.some((x) => x.name === master) ?? false;
    const named = master !== null && master !== m.name && inConfig ? members.get(master) : undefined;
    const target = named ?? members.get(rng.pick(allNames()))!;
    queue.push(now + rng.between(5, 30), () => {
      if (cmd.acknowledgedAt === null && cmd.unknownAttempts === 0) submit(cmd, target);
    });
  }

  function newCommand(): void {
    const id = nextCommandId++;
    const cmd: ClientCommand = {
      id,
      createdAt: now,
      bytes: new TextEncoder().encode(`c${id}`),
      acknowledgedAt: null,
      unknownAttempts: 0,
      definiteFailures: 0,
    };
    commands.set(id, cmd);
    submit(cmd, members.get(rng.pick(allNames()))!);
  }

  function masters(): SimMember[] {
    return [...members.values()].filter((m) => m.core?.status().role === "master");
  }

  function newRead(): void {
    const live = masters();
    if (live.length === 0) return;
    const m = rng.pick(live);
    const requestId = nextRequestId++;
    m.pendingReads.set(requestId, highestAcknowledgedInstance);
    step(m, { type: "readIndex", requestId });
  }

  // ------------------------------------------------------------------------------------------
  // Membership: what an operator does, through the master

  function adminDone(m: SimMember, requestId: number, instance: number): void {
    const req = adminRequests.get(requestId);
    adminRequests.delete(requestId);
    if (req === undefined) fail(`${m.name}: unknown admin request ${requestId} reported done`);
    trace?.(`${now.toFixed(2)} ${m.name} ${req!.kind} done at ${instance}`);
    if (req!.kind === "transfer") {
      transfers++;
      return;
    }
    const v = chosenValues.get(instance);
    if (v?.kind !== "config") fail(`${req!.kind} reported done at ${instance}, which chose ${v?.kind}`);
    if (m.core?.status().role === "master" && m.executed < instance + activation - 1) {
      fail(`${req!.kind} reported done on the master before it is in force`);
    }
    changes++;
    changeKinds.add(req!.kind);
  }

  function proposeChange(master: SimMember, change: ConfigChange): void {
    const requestId = nextRequestId++;
    adminRequests.set(requestId, { kind: change.kind, by: master.name });
    trace?.(`${now.toFixed(2)} ${master.name} asked: ${JSON.stringify(change)}`);
    if (change.kind === "remove" && change.name === master.name) removedMaster = true;
    step(master, { type: "proposeConfig", requestId, change });
  }

  /** Whether a change of this kind may change how many voters there are. */
  function changesVoters(kind: ConfigChange["kind"] | "transfer"): boolean {
    return kind === "remove" || kind === "promote";
  }

  function membershipAction(): void {
    const candidates = masters();
    if (candidates.length === 0) return;
    const master = rng.pick(candidates);
    const st = master.core!.status();
    const config = st.configuration.pending ?? st.configuration;
    const voters = config.members.filter((x) => x.role === "voter").map((x) => x.name);
    const learner = config.members.find((x) => x.role === "learner");
    const roll = rng.next();
    if (roll < 0.15 && voters.length > 1) {
      const to = rng.pick(voters.filter((v) => v !== master.name));
      const requestId = nextRequestId++;
      adminRequests.set(requestId, { kind: "transfer", by: master.name });
      trace?.(`${now.toFixed(2)} ${master.name} asked: transfer to ${to}`);
      step(master, { type: "transferMaster", requestId, to });
    } else if (learner !== undefined && roll < 0.7) {
      // A promotion may make two voters, which a rejoining member must not meet (see mayLoseDisk).
      // Other promotions while a member rejoins are what its later fences are for (fenceNeeded).
      if (!anyoneRejoining() || voters.length !== 1)
        proposeChange(master, { kind: "promote", name: learner.name });
    } else if (config.members.length < MAX_MEMBERS && (config.members.length <= 3 || roll < 0.85)) {
      // Start the new member first, as the operator does: it knows the voters and itself.
      const waiting = [...members.values()].find(
        (x) => x.joined && !config.members.some((c) => c.name === x.name) && x.durable.chosenUpTo < 0,
      );
      const joiner = waiting ?? addMember(`m${nextMemberNumber++}`, voters, true);
      if (joiner.core === null && joiner.life === 0) start(joiner);
      proposeChange(master, { kind: "addLearner", name: joiner.name, address: addressOf(joiner.name) });
    } else {
      const removable = config.members.map((x) => x.name);
      const name = rng.chance(0.35) ? master.name : rng.pick(removable);
      // Like the operator, which removes a voter only while the others are caught up.
      if (!anyoneRejoining()) proposeChange(master, { kind: "remove", name });
    }
  }

  // ------------------------------------------------------------------------------------------
  // Scenario

  for (const m of members.values()) start(m);

  const clientLoop = () => {
    if (now >= opts.duration - CLIENT_QUIET_MS) return;
    newCommand();
    if (rng.chance(0.3)) newRead();
    queue.push(now + rng.between(1, 15), clientLoop);
  };
  queue.push(rng.between(0, 5), clientLoop);

  const faultLoop = () => {
    if (!faultsActive()) return;
    const roll = rng.next();
    if (roll < 0.3) {
      // Half of the crashes hit the master, where most of the interesting state lives.
      const master = masters()[0];
      const m = master !== undefined && rng.chance(0.5) ? master : members.get(rng.pick(allNames()))!;
      if (m.core !== null) {
        // One lost disk at a time: with two voters of three gone, values only they held may be
        // lost, and the survivors rightly wait rather than decide again. Decided before the crash
        // forgets the member's requests in flight, which may still be chosen.
        const losesDisk =
          opts.amnesia !== undefined && rng.chance(0.3) && !anyoneRejoining() && mayLoseDisk(m);
        crash(m);
        if (losesDisk) wipe(m);
        const downFor = rng.between(10, 400);
        queue.push(now + downFor, () => {
          if (m.core !== null) return;
          if (m.lostDisk) rejoinEmpty(m);
          else start(m);
        });
      }
    } else if (roll < 0.5) {
      partition = new Map(allNames().map((n) => [n, rng.int(2)]));
      trace?.(`${now.toFixed(2)} partition ${JSON.stringify([...partition])}`);
    } else if (roll < 0.65) {
      partition = null;
      trace?.(`${now.toFixed(2)} heal`);
    } else if (roll < 0.85) {
      lossRate = rng.chance(0.5) ? rng.between(0, 0.3) : 0;
      dupRate = rng.chance(0.5) ? rng.between(0, 0.2) : 0;
    }
    queue.push(now + rng.between(20, 250), faultLoop);
  };
  queue.push(rng.between(20, 100), faultLoop);

  if (opts.membership === true) {
    const membershipLoop = () => {
      if (!faultsActive()) return;
      membershipAction();
      queue.push(now + rng.between(40, 200), membershipLoop);
    };
    queue.push(rng.between(50, 150), membershipLoop);
  }

  queue.push(opts.faultsUntil, () => {
    partition = null;
    lossRate = 0;
    dupRate = 0;
    trace?.(`${now.toFixed(2)} faults stop`);
    for (const m of members.values()) {
      if (m.core !== null || m.life === 0) continue;
      if (m.lostDisk) rejoinEmpty(m);
      else start(m);
    }
  });

  for (;;) {
    const item = queue.pop();
    if (item === undefined || item.time > opts.duration) break;
    now = item.time;
    events++;
    item.run();
  }

  // ------------------------------------------------------------------------------------------
  // Final checks

  let contiguous = -1;
  while (chosenValues.has(contiguous + 1)) contiguous++;
  const seen = new Map<number, number>();
  for (let i = 0; i <= contiguous; i++) {
    const v = chosenValues.get(i)!;
    // Every chosen value was accepted at one ballot by a majority of the voters of its
    // configuration; votes of members that were no voters there (learners) never count.
    const config = globalConfigAt(i);
    const accepted = [...(votes.get(i) ?? new Map<string, Set<MemberId>>())].some(
      ([key, voters]) => key.endsWith(`|${v.id}`) && hasMajority(config, voters),
    );
    if (!accepted) {
      fail(
        `instance ${i} (${v.id}) chosen without a majority (${majority(config)}) of voters ` +
          `${votersOf(config).join(",")} accepting it at one ballot: ${JSON.stringify([...(votes.get(i) ?? [])].map(([k, s]) => [k, [...s]]))}`,
      );
    }
    if (v.kind !== "commands") continue;
    for (const c of v.commands) {
      const id = Number(decoder.decode(c).slice(1));
      if (seen.has(id)) fail(`command c${id} chosen twice: instances ${seen.get(id)} and ${i}`);
      seen.set(id, i);
    }
  }
  let acknowledged = 0;
  for (const cmd of commands.values()) {
    if (cmd.acknowledgedAt === null) continue;
    acknowledged++;
    if (seen.get(cmd.id) !== cmd.acknowledgedAt) {
      fail(`command c${cmd.id} acknowledged at ${cmd.acknowledgedAt} but found at ${seen.get(cmd.id)}`);
    }
  }
  if (trace !== undefined) {
    for (const m of members.values()) {
      const st = m.core?.status();
      if (st === undefined) {
        trace(`end ${m.name}: down, executed ${m.executed}`);
        continue;
      }
      const { peerChosenUpTo, configuration, members: rows, ...rest } = st;
      trace(
        `end ${m.name}: ${JSON.stringify(rest)} in force ${JSON.stringify(configuration)} ` +
          `members ${JSON.stringify(rows)}`,
      );
    }
  }
  // Liveness: once the faults stop, every member of the final configuration catches up and every
  // command sent after a settling period is acknowledged. Removed members may stay behind.
  const finalMembers = latestGlobalConfig().members.map((x) => members.get(x.name)!);
  const executed = finalMembers.map((m) => m.executed);
  if (new Set(executed).size !== 1) {
    fail(
      `members did not converge after the faults: ${finalMembers.map((m) => `${m.name}=${m.executed}`).join(",")}`,
    );
  }
  for (const cmd of commands.values()) {
    if (cmd.createdAt >= opts.faultsUntil + SETTLE_MS && cmd.acknowledgedAt === null) {
      fail(
        `command c${cmd.id}, sent at ${cmd.createdAt.toFixed(1)} after the faults stopped, was never acknowledged`,
      );
    }
  }
  return {
    acknowledged,
    chosen: contiguous + 1,
    elections,
    reads,
    events,
    changes,
    changeKinds,
    transfers,
    removedMaster,
  };
}
