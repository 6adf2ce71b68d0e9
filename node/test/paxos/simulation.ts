// Deterministic simulation of a whole group around the pure core, from one seed: a network that
// loses, duplicates, delays and reorders messages and can be partitioned; disks whose writes are
// only durable once their (simulated) fsync completes; crashes that lose everything unsynced;
// members whose clocks run at different rates. Every run checks the safety invariants as it goes
// and liveness once the faults stop.

import { type CoreEvent, PaxosCore, type Ready, type Timing } from "../../src/paxos/core.js";
import type { Ballot, ChosenEntry, Envelope, LogRecord, MemberId, Value } from "../../src/paxos/types.js";
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
  trace?: (line: string) => void;
}

const TIMING: Timing = { heartbeatMs: 40, electionTimeoutMs: 250, retryMs: 80 };
const TICK_MS = 10;
const LEARN_BATCH = 8;
/** Time after the faults stop within which the group must be serving again. */
const SETTLE_MS = 1000;
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
}

interface Member {
  readonly name: MemberId;
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
}

const decoder = new TextDecoder();

export function runSimulation(opts: SimOptions): SimResult {
  const rng = new Rng(opts.seed);
  const trace = opts.trace;
  const queue = new EventQueue();
  let now = 0;
  let events = 0;
  const names = Array.from({ length: opts.members }, (_, i) => `m${i + 1}`);
  const members = new Map<MemberId, Member>();
  for (const name of names) {
    members.set(name, {
      name,
      core: null,
      life: 0,
      durable: { promised: ZERO_BALLOT, chosenUpTo: -1, records: new Map() },
      unsynced: [],
      pipelineTail: 0,
      executed: -1,
      clockRate: rng.between(0.85, 1.15),
      clockOffset: rng.between(0, 5000),
      pending: new Map(),
      pendingReads: new Map(),
    });
  }

  // Fault state.
  let lossRate = 0;
  let dupRate = 0;
  let partition: Map<MemberId, number> | null = null;
  const faultsActive = () => now < opts.faultsUntil;

  // Global truth for the invariants.
  const chosenValues = new Map<number, Value>();
  const commands = new Map<number, ClientCommand>();
  const requestToCommand = new Map<number, number>();
  let nextRequestId = 1;
  let nextCommandId = 1;
  let highestAcknowledgedInstance = -1;
  let reads = 0;
  let elections = 0;

  const fail = (msg: string): never => {
    throw new InvariantViolation(`seed ${opts.seed} at t=${now.toFixed(2)}: ${msg}`);
  };

  const localTime = (m: Member) => Math.floor(now * m.clockRate + m.clockOffset);

  // ------------------------------------------------------------------------------------------
  // Members

  function start(m: Member): void {
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
    m.core = new PaxosCore({
      self: m.name,
      voters: names,
      incarnation: String(m.life),
      random: () => rng.next(),
      now: localTime(m),
      recovered: { promised: m.durable.promised, chosenUpTo: m.durable.chosenUpTo, unchosen },
      timing: TIMING,
      window: 8,
      maxBatchCommands: 16,
    });
    m.pipelineTail = now;
    trace?.(`${now.toFixed(2)} ${m.name} start life=${m.life} chosenUpTo=${m.durable.chosenUpTo}`);
    scheduleTick(m, m.life);
  }

  function crash(m: Member): void {
    if (m.core === null) return;
    trace?.(`${now.toFixed(2)} ${m.name} CRASH`);
    m.core = null;
    m.life++;
    m.unsynced.length = 0;
    // Requests in flight at a crashed member have an unknown outcome: the client never retries them.
    m.pending.clear();
    m.pendingReads.clear();
  }

  function scheduleTick(m: Member, life: number): void {
    const jitter = rng.between(0, 2);
    queue.push(now + TICK_MS / m.clockRate + jitter, () => {
      if (m.life !== life || m.core === null) return;
      step(m, { type: "tick", now: localTime(m) });
      scheduleTick(m, life);
    });
  }

  function step(m: Member, ev: CoreEvent): void {
    const core = m.core!;
    const wasMaster = core.status().role === "master";
    core.step(ev);
    if (!wasMaster && core.status().role === "master") {
      elections++;
      trace?.(`${now.toFixed(2)} ${m.name} becomes master ${JSON.stringify(core.status().ballot)}`);
    }
    processReady(m, core.ready());
  }

  function processReady(m: Member, rd: Ready): void {
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
          const rec = m.durable.records.get(i);
          if (rec === undefined || !rec.chosen) break;
          entries.push({ instance: i, value: rec.value });
        }
        queue.push(now, () => {
          if (m.life === life && m.core !== null) step(m, { type: "learnLoaded", to: load.to, entries });
        });
      }
    });
  }

  function applyDurably(m: Member, batch: NonNullable<Ready["persist"]>): void {
    const d = m.durable;
    if (batch.promised !== undefined) d.promised = batch.promised;
    for (const rec of batch.records) {
      const prev = d.records.get(rec.instance);
      if (prev?.chosen && !rec.chosen) fail(`${m.name}: chosen record ${rec.instance} overwritten by a vote`);
      d.records.set(rec.instance, rec);
    }
    if (batch.chosenUpTo !== undefined) d.chosenUpTo = batch.chosenUpTo;
  }

  function execute(m: Member, instance: number, value: Value): void {
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
    if (prev === undefined) chosenValues.set(instance, value);
    else if (prev.id !== value.id) fail(`instance ${instance} chosen twice: ${prev.id} and ${value.id}`);
  }

  // ------------------------------------------------------------------------------------------
  // Network

  function send(from: MemberId, env: Envelope): void {
    if (partition !== null && partition.get(from) !== partition.get(env.to)) return;
    if (faultsActive() && rng.chance(lossRate)) return;
    const copies = faultsActive() && rng.chance(dupRate) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const slow = faultsActive() && rng.chance(0.05);
      const delay = slow ? rng.between(5, 60) : rng.between(0.05, 1.5);
      const to = members.get(env.to)!;
      const life = to.life;
      queue.push(now + delay, () => deliver(from, env.to, env.message, life));
    }
  }

  function deliver(from: MemberId, to: MemberId, message: Envelope["message"], life: number): void {
    const m = members.get(to)!;
    if (m.core === null || m.life !== life) return;
    if (partition !== null && partition.get(from) !== partition.get(to)) return;
    step(m, { type: "receive", from, message });
  }

  // ------------------------------------------------------------------------------------------
  // Clients

  function submit(cmd: ClientCommand, at: Member): void {
    if (at.core === null) return;
    const requestId = nextRequestId++;
    requestToCommand.set(requestId, cmd.id);
    at.pending.set(requestId, cmd.id);
    cmd.unknownAttempts++;
    step(at, { type: "propose", requestId, command: cmd.bytes });
  }

  function acknowledge(m: Member, instance: number, value: Value, requestIds: readonly number[]): void {
    if (value.kind !== "commands") fail(`acknowledged a no-op at ${instance}`);
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

  function settleFailure(m: Member, requestId: number): void {
    const commandId = m.pending.get(requestId);
    if (commandId === undefined) return;
    m.pending.delete(requestId);
    const cmd = commands.get(commandId)!;
    cmd.unknownAttempts--;
    cmd.definiteFailures++;
    // Certainly not chosen: the client may send the same command again.
    const master = m.core?.status().master;
    const target =
      master !== null && master !== undefined ? members.get(master)! : members.get(rng.pick(names))!;
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
    submit(cmd, members.get(rng.pick(names))!);
  }

  function newRead(): void {
    const live = [...members.values()].filter((m) => m.core?.status().role === "master");
    if (live.length === 0) return;
    const m = rng.pick(live);
    const requestId = nextRequestId++;
    m.pendingReads.set(requestId, highestAcknowledgedInstance);
    step(m, { type: "readIndex", requestId });
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
      const master = [...members.values()].find((x) => x.core?.status().role === "master");
      const m = master !== undefined && rng.chance(0.5) ? master : members.get(rng.pick(names))!;
      if (m.core !== null) {
        crash(m);
        const downFor = rng.between(10, 400);
        queue.push(now + downFor, () => {
          if (m.core === null) start(m);
        });
      }
    } else if (roll < 0.5) {
      partition = new Map(names.map((n) => [n, rng.int(2)]));
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

  queue.push(opts.faultsUntil, () => {
    partition = null;
    lossRate = 0;
    dupRate = 0;
    trace?.(`${now.toFixed(2)} faults stop`);
    for (const m of members.values()) if (m.core === null) start(m);
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
  // Liveness: once the faults stop, every member catches up and every command sent after a
  // settling period is acknowledged.
  const executed = [...members.values()].map((m) => m.executed);
  if (new Set(executed).size !== 1)
    fail(`members did not converge after the faults: executed ${executed.join(",")}`);
  for (const cmd of commands.values()) {
    if (cmd.createdAt >= opts.faultsUntil + SETTLE_MS && cmd.acknowledgedAt === null) {
      fail(
        `command c${cmd.id}, sent at ${cmd.createdAt.toFixed(1)} after the faults stopped, was never acknowledged`,
      );
    }
  }
  return { acknowledged, chosen: contiguous + 1, elections, reads, events };
}
