// Drives the pure core: feeds it events (ticks, peer messages, client requests), and carries out
// its Ready in the order durability demands — persist (one group-committed, synced batch), then
// send what depended on it, then execute chosen values in order, then answer clients.

import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { setImmediate as afterIoCallbacks } from "node:timers/promises";
import type { Logger } from "pino";
import { CheckpointStore } from "../checkpoint/checkpoint-store.js";
import { applyPendingInstall, restoreFromLocalCheckpoint } from "../checkpoint/install.js";
import { CHECKPOINT_PATH } from "../checkpoint/transfer.js";
import { isVoter, learnersOf, roleOf, votersOf } from "../paxos/config.js";
import {
  type CommittedEntry,
  type CoreEvent,
  type FailureReason,
  PaxosCore,
  type Ready,
  type Timing,
} from "../paxos/core.js";
import type { Ballot, Configuration, LogRecord, Message, Value } from "../paxos/types.js";
import type { AdminRoutes } from "../server/admin-routes.js";
import type { Metrics } from "../server/metrics.js";
import { type KvService, type NodeStatus, type ReadConsistency, ServiceError } from "../server/service.js";
import { encodeKvCommand, type KvCommand } from "../sm/kv-command.js";
import { KvStateMachine } from "../sm/kv-state-machine.js";
import { PaxosLog, type RecoveredLogState } from "../storage/paxos-log.js";
import { isCoreMessage, type PeerMessage } from "../transport/peer-message.js";
import { PeerTransport } from "../transport/peer-transport.js";
import { CheckpointDriver } from "./checkpoints.js";
import {
  answerFence,
  answerGroup,
  discoverGroup,
  FENCE_PATH,
  fenceVoters,
  GROUP_PATH,
  type GroupAnswer,
  type Rejoin,
} from "./discovery.js";
import { AdminRefusal, membershipRoutes } from "./membership.js";
import { PendingRequests, ProgressWaiters } from "./waiters.js";

export interface RuntimeOptions {
  readonly member: string;
  readonly group: string;
  /** Every voter, self included: name -> "host:port" of its peer port. */
  readonly peers: ReadonlyMap<string, string>;
  readonly dataDir: string;
  readonly host: string;
  readonly peerPort: number;
  readonly token?: string;
  readonly holdCount: number;
  readonly checkpointEvery: number;
  readonly checkpointMinIntervalMs: number;
  readonly maxLogSize?: number;
  /** Test hook, off by default: corrupt this chunk (0-based) of the first checkpoint sent. */
  readonly corruptChunkForTest?: number;
  /** Test hook, off by default: delay each checkpoint chunk sent by this many milliseconds. */
  readonly chunkDelayMsForTest?: number;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly timing?: Partial<Timing>;
  readonly window?: number;
  /** How long a client write or read may wait before it is answered with a timeout. */
  readonly requestTimeoutMs?: number;
  /** Storage failed: the member cannot go on safely. The process entry exits 1. */
  readonly onFatal: (error: Error) => void;
  /** A checkpoint from a peer is installed: the process entry exits 75 to start afresh from it. */
  readonly onCheckpointLoaded: (instance: number, from: string) => void;
}

const MIN_TICK_MS = 10;
const MAX_TICK_MS = 1000;
/** paxos_member_lag is refreshed at most this often: the lags need the whole membership. */
const LAG_GAUGE_MS = 1000;
/** Log records deleted per batch when a received checkpoint replaces the old log. */
const INSTALL_DELETE_BATCH = 10_000;
const LEARN_BATCH_COUNT = 512;
const LEARN_BATCH_BYTES = 4 * 1024 * 1024;
/** A member further behind the master than this is not ready. */
const READY_MAX_LAG = 1000;
/** A peer silent this long (several heartbeats) is not sent requests that need an answer. */
const PEER_SILENCE_MS = 1000;
/** How long a request waits for a master to appear (an election) before 503. */
const MASTER_WAIT_MS = 3000;

type WriteResult = { instance: number };

export class NodeRuntime implements KvService {
  private readonly core: PaxosCore;
  private readonly transport: PeerTransport;
  private readonly checkpoints: CheckpointDriver;
  /** Every member this one exchanges messages with: `--peers`, then the chosen configurations. */
  private peerAddresses: ReadonlyMap<string, string>;
  /** Membership changes and master transfers asked of the local core. */
  private readonly adminRequests = new PendingRequests<number>();
  private loggedPeersDiffer = false;
  private lagGaugesAt = Number.NEGATIVE_INFINITY;
  private readonly executed: ProgressWaiters;
  /** Writes proposed here, by core request id. */
  private readonly proposals = new PendingRequests<WriteResult>();
  /** Writes forwarded to the master, by forward request id. */
  private readonly forwards = new PendingRequests<WriteResult>();
  /** Read indexes asked of the local core. */
  private readonly localReads = new PendingRequests<number>();
  /** Read indexes asked of the master. */
  private readonly remoteReads = new PendingRequests<number>();
  /** When each peer last reached us. */
  private readonly lastHeardFrom = new Map<string, number>();
  private readonly requestTimeoutMs: number;
  private readonly log: Logger;
  private tickTimer: NodeJS.Timeout | null = null;
  /** When the armed tick fires (meaningful while tickTimer is set). */
  private tickAt = 0;
  private ticksStopped = false;
  private flushScheduled = false;
  private flushSoonScheduled = false;
  private transportFlushScheduled = false;
  /** Post-persist work of each Ready, strictly in order: each waits for the previous one. */
  private pipeline: Promise<void> = Promise.resolve();
  /** Chosen values are executed strictly in instance order. */
  private execution: Promise<void> = Promise.resolve();
  private closing = false;
  private storageFailed = false;
  /** Aborted on close: ends a rejoin's questions to the other members. */
  private readonly stopping = new AbortController();
  private lastRole: string | null = null;

  private constructor(
    private readonly opts: RuntimeOptions,
    private readonly paxosLog: PaxosLog,
    private readonly sm: KvStateMachine,
    recovered: RecoveredLogState,
    private readonly replayedOnStart: number,
    checkpointStore: CheckpointStore,
    cleaner: Awaited<ReturnType<typeof CheckpointDriver.openCleaner>>,
    initial: InitialMembership,
  ) {
    this.log = opts.logger;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.executed = new ProgressWaiters(sm.lastExecutedInstance());
    this.peerAddresses = initial.addresses;
    const recorded = sm.configurations().at(-1);
    this.core = new PaxosCore({
      self: opts.member,
      voters: votersOf(initial.config),
      learners: learnersOf(initial.config),
      addresses: Object.fromEntries(initial.addresses),
      configurations: sm.configurations(),
      incarnation: randomBytes(6).toString("hex"),
      random: Math.random,
      now: performance.now(),
      recovered,
      abstainUntil: recovered.abstainUntil,
      fencedBy: recovered.fencedBy,
      ...(opts.timing !== undefined ? { timing: opts.timing } : {}),
      ...(opts.window !== undefined ? { window: opts.window } : {}),
    });
    if (recorded !== undefined) this.warnIfPeersDiffer(recorded.config);
    this.checkpoints = new CheckpointDriver(opts, checkpointStore, sm, cleaner, {
      chosenUpTo: () => this.core.chosenPoint,
      quorum: () => this.core.quorum,
      peerAddress: (member) => this.peerAddresses.get(member),
      otherMembers: () => [...this.peerAddresses.keys()].filter((p) => p !== opts.member),
      send: (to, message) => this.transport.send(to, message),
      checkpointLoaded: (instance, from) => opts.onCheckpointLoaded(instance, from),
    });
    const m = opts.metrics;
    this.transport = new PeerTransport({
      self: opts.member,
      host: opts.host,
      port: opts.peerPort,
      ...(opts.token !== undefined ? { token: opts.token } : {}),
      peers: this.peerAddresses,
      logger: opts.logger.child({ component: "transport" }),
      events: {
        rejectedFrame: (peer, reason) => m.rejectedFrames.inc({ peer, reason }),
        linkState: (peer, state) => m.peerLinkUp.set({ peer }, state === "connected" ? 1 : 0),
        dropped: (peer, count) => m.droppedMessages.inc({ peer }, count),
      },
      onMessage: (from, message) => this.onPeerMessage(from, message),
      channels: {
        [CHECKPOINT_PATH]: (ws, member) => this.checkpoints.serve(ws, member),
        [GROUP_PATH]: (ws) => answerGroup(ws, this.groupAnswer()),
        [FENCE_PATH]: (ws, member) => answerFence(ws, member, (ballot) => this.fence(ballot)),
      },
    });
  }

  /**
   * Opens storage, installs a checkpoint received before the last exit, replays the log after the
   * state machine's position, and builds the core. Not yet serving.
   */
  static async open(opts: RuntimeOptions): Promise<NodeRuntime> {
    const m = opts.metrics;
    const log = opts.logger;
    const store = await CheckpointStore.open(
      `${opts.dataDir}/checkpoints`,
      log.child({ component: "checkpoint" }),
    );
    let paxosLog: PaxosLog | null = null;
    let sm: KvStateMachine | null = null;
    try {
      paxosLog = await PaxosLog.open(`${opts.dataDir}/log`, {
        onSync: (seconds, records) => {
          m.fsyncSeconds.observe(seconds);
          m.batchRecords.observe(records);
        },
      });
      const openedLog = paxosLog;
      const installed = await applyPendingInstall({
        dataDir: opts.dataDir,
        store,
        logger: log,
        // Everything up to the checkpoint is reflected in it: older votes and chosen values of this
        // member's previous life are obsolete, and a gap below them would only mislead learners.
        beforeComplete: async (instance) => {
          const durably = { sync: true };
          while ((await openedLog.deleteBelow(instance + 1, INSTALL_DELETE_BATCH, durably)).deleted > 0);
        },
      });
      if (installed !== null)
        log.info({ instance: installed }, "installed the checkpoint received from a peer");
      const smOptions = {
        checkpoints: store,
        onMalformedCommand: (instance: number, index: number, err: Error) =>
          log.warn({ instance, index, err }, "skipped a malformed command (every member skips it)"),
        onWriteFailure: (err: Error) => opts.onFatal(err),
      };
      sm = await KvStateMachine.open(`${opts.dataDir}/sm`, smOptions);
      const behind = sm.lastExecutedInstance();
      if (store.instanceId() > behind) {
        await sm.close();
        sm = null;
        await restoreFromLocalCheckpoint({ dataDir: opts.dataDir, store, logger: log, executed: behind });
        sm = await KvStateMachine.open(`${opts.dataDir}/sm`, smOptions);
      }
      const executed = sm.lastExecutedInstance();
      const recovered = withExecutedPrefix(await paxosLog.recover(), executed);
      if (recovered.chosenUpTo > executed && recovered.minInstance > executed + 1) {
        throw new Error(
          `the PaxosLog lacks instances ${executed + 1}..${recovered.minInstance - 1} right after the state ` +
            `machine's instance ${executed} (checkpoint ${store.instanceId()}): refusing to start with a gap. ` +
            "Move the data directory away to let this member fetch a checkpoint from a peer.",
        );
      }
      let replayed = 0;
      for await (const e of paxosLog.replay(executed + 1, recovered.chosenUpTo)) {
        await executeValue(sm, e.instance, e.value);
        replayed++;
      }
      log.info(
        {
          checkpoint: store.instanceId(),
          stateMachineAt: executed,
          chosenUpTo: recovered.chosenUpTo,
          replayed,
          promised: recovered.promised,
        },
        "recovered the PaxosLog and replayed what the state machine lacked",
      );
      const openedSm = sm;
      // Executed instances are chosen, and the cleaner only needs a bound it must never pass.
      const cleaner = await CheckpointDriver.openCleaner(opts, paxosLog, sm, () =>
        openedSm.lastExecutedInstance(),
      );
      const fresh =
        recovered.promised.counter === 0 &&
        recovered.chosenUpTo === -1 &&
        recovered.unchosen.length === 0 &&
        sm.lastExecutedInstance() === -1 &&
        store.instanceId() === -1;
      const { membership, state } = await startingMembership(opts, paxosLog, recovered, {
        fresh,
        configurationChosen: sm.configurations().length > 0,
      });
      return new NodeRuntime(opts, paxosLog, sm, state, replayed, store, cleaner, membership);
    } catch (e) {
      await sm?.close();
      await paxosLog?.close();
      await store.close();
      throw e;
    }
  }

  async start(): Promise<void> {
    await this.transport.start();
    this.followConfiguration();
    this.checkpoints.start();
    this.armTick();
    this.updateGauges();
  }

  get peerPort(): number {
    return this.transport.port;
  }

  // ---------------------------------------------------------------------------------------------
  // Driving the core

  /**
   * Feeds one event to the core. Its Ready is carried out at the end of this turn of the event loop,
   * so that everything arriving in one turn (client writes above all) shares one Ready: one batch
   * of commands, one synced write. With `soon` it is carried out once the current callback is done
   * (for a peer message, every message of that socket read is in by then): peer messages are the
   * protocol's critical path and form no batches of their own, and neither does a command that
   * reaches an idle master.
   */
  private step(event: CoreEvent, soon = false): void {
    if (this.closing && event.type !== "tick" && event.type !== "receive") return;
    this.core.step(event, performance.now());
    if (soon) this.scheduleFlushSoon();
    else this.scheduleFlush();
  }

  private scheduleFlushSoon(): void {
    if (this.flushSoonScheduled) return;
    this.flushSoonScheduled = true;
    process.nextTick(() => {
      this.flushSoonScheduled = false;
      this.flush();
    });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Everything that arrives in the same turn of the event loop shares one Ready, one batch
    // of commands and one synced write.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /**
   * One timer waits for the core's next deadline (`nextTickAt`): an idle member wakes for its
   * heartbeats and elections, not 100 times a second. At least MIN_TICK_MS apart, which is also how
   * long a commit notice that no accept has carried waits for one; at most MAX_TICK_MS, a backstop.
   */
  private armTick(): void {
    if (this.ticksStopped) return;
    const now = performance.now();
    const at = Math.min(Math.max(this.core.nextTickAt(), now + MIN_TICK_MS), now + MAX_TICK_MS);
    if (this.tickTimer !== null) {
      if (this.tickAt <= at) return;
      clearTimeout(this.tickTimer);
    }
    this.tickAt = at;
    this.tickTimer = setTimeout(() => {
      this.tickTimer = null;
      this.step({ type: "tick", now: performance.now() });
    }, at - now);
  }

  private flush(): void {
    const rd = this.core.ready();
    this.armTick();
    for (const env of rd.sendNow) this.transport.send(env.to, env.message);
    // This turn's messages are all gathered: out they go before the persist below is started, so
    // the peers' half of the work (their network hop and fsync) overlaps ours. When values were
    // chosen, their clients are answered first (execution runs in this turn's microtasks) and the
    // messages leave at the end of the turn: waking the peers before the answer would make them
    // compete with it for the CPU.
    if (rd.committed.length === 0) this.transport.flush();
    for (const f of rd.failed) this.proposals.reject(f.requestId, failureError(f.reason));
    for (const f of rd.readsFailed) this.localReads.reject(f.requestId, failureError(f.reason));
    for (const r of rd.readsReady) this.localReads.resolve(r.requestId, r.index);
    for (const d of rd.adminDone) this.adminRequests.resolve(d.requestId, d.instance);
    if (rd.fenceNeeded !== null) this.fenceMore(rd.fenceNeeded);
    if (rd.lateAccepts > 0) this.opts.metrics.lateAccepts.inc(rd.lateAccepts);
    for (const f of rd.adminFailed)
      this.adminRequests.reject(f.requestId, new AdminRefusal(f.reason, f.message));
    const persisted =
      rd.persist !== null
        ? this.paxosLog.persist(rd.persist, {
            sync: rd.persist.sync,
            background: this.core.currentRole === "master",
          })
        : null;
    // A chosen value is already durable on a quorum, so executing it need not wait for our own
    // chosen mark to be synced: that keeps one fsync, not two, on a write's critical path. Values no
    // client of ours waits for are executed after this turn's messages are out: a follower learns
    // them from the accept of the next write, and its vote for that one is what the master awaits.
    if (rd.committed.length > 0) {
      const clientsWait = rd.committed.some((c) => c.requestIds !== null);
      const turnDone = clientsWait ? this.execution : this.execution.then(() => afterIoCallbacks());
      this.execution = turnDone.then(() => this.execute(rd.committed)).catch((e) => this.fatal(e));
    }
    if (persisted !== null || rd.send.length > 0 || rd.loads.length > 0) {
      this.pipeline = this.pipeline
        .then(async () => {
          if (persisted !== null) await persisted;
          this.afterPersist(rd);
        })
        .catch((e) => this.fatal(e));
    }
    this.updateGauges();
  }

  private afterPersist(rd: Ready): void {
    for (const env of rd.send) {
      if (env.to === this.opts.member)
        this.step({ type: "receive", from: env.to, message: env.message }, true);
      else this.transport.send(env.to, env.message);
    }
    // One synced write completes the persists of several Readies in one run of microtasks; a tick
    // after that run sends all their messages together, without waiting for the next loop turn.
    if (rd.send.length > 0 && !this.transportFlushScheduled) {
      this.transportFlushScheduled = true;
      process.nextTick(() => {
        this.transportFlushScheduled = false;
        this.transport.flush();
      });
    }
    for (const load of rd.loads) {
      if (this.checkpoints.answerIfCompacted(load.to, load.from)) continue;
      this.paxosLog
        .readChosen(load.from, LEARN_BATCH_COUNT, LEARN_BATCH_BYTES)
        .then((entries) => this.step({ type: "learnLoaded", to: load.to, entries }))
        .catch((e) => this.log.error({ err: e, from: load.from }, "cannot read the log to answer a learner"));
    }
  }

  private async execute(committed: readonly CommittedEntry[]): Promise<void> {
    const m = this.opts.metrics;
    for (const c of committed) {
      const commands = c.value.kind === "commands" ? c.value.commands : [];
      // After a crash the state machine may be ahead of the synced chosen marks; the core then
      // hands out again values the state machine already reflects.
      if (c.instance > this.sm.lastExecutedInstance()) await executeValue(this.sm, c.instance, c.value);
      if (c.value.kind === "config") this.configurationChosen(c.instance, c.value.config);
      this.executed.advance(c.instance);
      m.chosenInstances.inc();
      if (c.requestIds === null) continue;
      m.batchCommands.observe(commands.length);
      for (const requestId of c.requestIds) {
        const elapsedMs = this.proposals.resolve(requestId, { instance: c.instance });
        if (elapsedMs !== null) m.commitLatency.observe(elapsedMs / 1000);
      }
    }
  }

  /**
   * A configuration was chosen: links follow its members (and a pending one's), and a difference
   * from `--peers` is logged once — the log wins.
   */
  private configurationChosen(instance: number, config: Configuration): void {
    this.log.info({ instance, members: config.members }, "membership configuration chosen");
    this.followConfiguration();
    this.warnIfPeersDiffer(config);
  }

  private warnIfPeersDiffer(config: Configuration): void {
    const fromFlags = [...this.opts.peers.keys()].sort().join(",");
    const chosen = config.members
      .map((m) => m.name)
      .sort()
      .join(",");
    if (chosen === fromFlags || this.loggedPeersDiffer) return;
    this.loggedPeersDiffer = true;
    this.log.warn(
      { peers: fromFlags, chosenMembers: chosen },
      "the chosen configuration differs from --peers; the chosen configuration wins",
    );
  }

  private followConfiguration(): void {
    const next = new Map(this.peerAddresses);
    for (const m of this.core.status().members) if (m.address !== "") next.set(m.name, m.address);
    const same =
      next.size === this.peerAddresses.size && [...next].every(([k, v]) => this.peerAddresses.get(k) === v);
    if (same) return;
    this.peerAddresses = next;
    this.transport.setPeers(next);
  }

  /** What a member without its state asks this one (discovery.ts). */
  private groupAnswer(): GroupAnswer {
    const s = this.core.status();
    const pending = s.configuration.pending;
    return {
      members: s.configuration.members,
      ...(pending === null ? {} : { pending: pending.members }),
      ...this.core.rejoinAnswer(),
    };
  }

  /**
   * Promises a rejoining member's ballot and answers once that promise is synced: the answer
   * reports every vote cast here before the promise, and none at a lower ballot can follow it.
   */
  private async fence(ballot: Ballot): Promise<GroupAnswer> {
    const before = this.groupAnswer();
    if (this.closing || !before.established) return before;
    this.core.step({ type: "fence", ballot }, performance.now());
    const answer = this.groupAnswer();
    this.flush();
    await this.pipeline;
    if (this.storageFailed) throw new Error("storage failed before the promise was synced");
    this.log.info(
      { ballot, answer: { promised: answer.promised, highestInstance: answer.highestInstance } },
      "promised a rejoining member's ballot",
    );
    return answer;
  }

  /**
   * A rejoining member learned of configurations its fenced voters miss majorities of: it fences
   * enough of their voters too, however long that takes, and abstains meanwhile.
   */
  private fenceMore(configs: readonly Configuration[]): void {
    this.log.info(
      { voters: configs.map((c) => votersOf(c)) },
      "rejoining: learned of a configuration whose majorities the voters that answered may miss; asking its voters too",
    );
    fenceVoters(
      configs.map((c) => c.members),
      null,
      {
        self: this.opts.member,
        ...(this.opts.token !== undefined ? { token: this.opts.token } : {}),
        logger: this.log,
        signal: this.stopping.signal,
      },
    ).then(
      (r) => {
        this.log.info(
          { fencedBy: r.from, fence: r.fence, abstainUntil: r.abstainUntil },
          "rejoining: fenced them",
        );
        this.step({ type: "fenced", by: r.from, promised: r.promised, highestInstance: r.abstainUntil });
      },
      (e) => {
        if (!this.closing)
          this.log.error({ err: e }, "rejoining: cannot fence the voters of a configuration; abstaining");
      },
    );
  }

  private fatal(e: unknown): void {
    this.storageFailed = true;
    this.log.fatal({ err: e }, "storage failure: the member cannot go on safely");
    this.opts.onFatal(e instanceof Error ? e : new Error(String(e)));
  }

  /** Runs after every Ready: the full status() is built only for the lag gauges, once a second. */
  private updateGauges(): void {
    const core = this.core;
    const m = this.opts.metrics;
    m.instanceChosen.set(core.chosenPoint);
    m.instanceExecuted.set(this.executed.value);
    const role = core.currentRole;
    if (role !== this.lastRole) {
      if (this.lastRole !== null) m.role.set({ role: this.lastRole }, 0);
      m.role.set({ role }, 1);
      if (this.lastRole !== null) this.log.info({ role, master: core.currentMaster }, "role changed");
      this.lastRole = role;
    }
    const now = performance.now();
    if (now - this.lagGaugesAt >= LAG_GAUGE_MS) {
      this.lagGaugesAt = now;
      const s = core.status();
      const isMaster = s.role === "master";
      for (const member of s.members) {
        const lag = this.lagOf(member.name, isMaster, s);
        if (lag !== null) m.memberLag.set({ peer: member.name }, lag);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Peer messages

  private onPeerMessage(from: string, message: PeerMessage): void {
    this.lastHeardFrom.set(from, performance.now());
    if (isCoreMessage(message)) {
      this.step({ type: "receive", from, message: message as Message }, true);
      return;
    }
    switch (message.type) {
      case "forward":
        this.proposeHere(message.command).then(
          (r) =>
            this.transport.send(from, {
              type: "forwardReply",
              requestId: message.requestId,
              outcome: "ok",
              instance: r.instance,
            }),
          (e) =>
            this.transport.send(from, {
              type: "forwardReply",
              requestId: message.requestId,
              outcome: forwardOutcome(e),
              instance: 0,
            }),
        );
        return;
      case "forwardReply":
        if (message.outcome === "ok")
          this.forwards.resolve(message.requestId, { instance: message.instance });
        else this.forwards.reject(message.requestId, forwardError(message.outcome));
        return;
      case "readIndex":
        this.readIndexHere().then(
          (index) =>
            this.transport.send(from, {
              type: "readIndexReply",
              requestId: message.requestId,
              outcome: "ok",
              index,
            }),
          (e) =>
            this.transport.send(from, {
              type: "readIndexReply",
              requestId: message.requestId,
              outcome: e instanceof NotMasterError ? "not_master" : "timeout",
              index: 0,
            }),
        );
        return;
      case "learnCompacted":
        this.checkpoints.onCompacted(from, message);
        return;
      case "readIndexReply":
        if (message.outcome === "ok") this.remoteReads.resolve(message.requestId, message.index);
        else
          this.remoteReads.reject(
            message.requestId,
            message.outcome === "not_master" ? new NotMasterError() : timeoutError(),
          );
        return;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Client API

  put(key: string, value: Uint8Array): Promise<{ instance: number }> {
    return this.write({ op: "put", key, value });
  }

  delete(key: string): Promise<{ instance: number }> {
    return this.write({ op: "delete", key });
  }

  async get(key: string, consistency: ReadConsistency): Promise<Uint8Array | undefined> {
    if (consistency === "linearizable") {
      const index = await this.withMaster((master) =>
        master === this.opts.member ? this.readIndexHere() : this.readIndexAt(master),
      );
      await this.executed.wait(index, this.requestTimeoutMs, () => readTimeoutError());
    }
    return this.sm.get(key);
  }

  private async write(command: KvCommand): Promise<WriteResult> {
    const bytes = encodeKvCommand(command);
    const result = await this.withMaster((master) =>
      master === this.opts.member ? this.proposeHere(bytes) : this.forwardTo(master, bytes),
    );
    // Answer once the write is executed here too, so a local read after it sees it.
    await this.executed.wait(result.instance, this.requestTimeoutMs, () => timeoutError());
    return result;
  }

  /**
   * Runs `attempt` against the current master; while no master is known, or the one we asked
   * turned out not to be master, retries until MASTER_WAIT_MS has passed. Only failures that
   * certainly proposed nothing are retried, so a retry never duplicates a write.
   */
  private async withMaster<T>(attempt: (master: string) => Promise<T>): Promise<T> {
    const deadline = performance.now() + MASTER_WAIT_MS;
    for (;;) {
      if (this.closing) throw new ServiceError("shutting_down", "the member is shutting down");
      const master = this.core.currentMaster;
      if (master !== null) {
        try {
          return await attempt(master);
        } catch (e) {
          if (!(e instanceof NotMasterError)) throw e;
        }
      }
      if (performance.now() >= deadline) {
        throw new ServiceError(
          "no_quorum",
          "no master is available: the group has no quorum or is electing one",
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private proposeHere(command: Uint8Array): Promise<WriteResult> {
    if (this.closing) return Promise.reject(new ServiceError("shutting_down", "the member is shutting down"));
    return this.proposals.start(this.requestTimeoutMs, timeoutError, (requestId) => {
      this.opts.metrics.proposals.inc();
      // On an idle master there is nothing for this command to wait for: it is proposed as soon as
      // this request's callback is done instead of at the end of the loop iteration.
      this.step({ type: "propose", requestId, command }, this.core.idleMaster);
    });
  }

  private forwardTo(master: string, command: Uint8Array): Promise<WriteResult> {
    if (!this.canExchangeWith(master)) return Promise.reject(new NotMasterError());
    return this.forwards.start(this.requestTimeoutMs, timeoutError, (requestId) =>
      this.transport.send(master, { type: "forward", requestId, command }),
    );
  }

  /**
   * A request to a peer is only worth sending when both directions work: our link to it is up,
   * and it has reached us lately (its heartbeats arrive on its link to us, which carries the
   * answer). Otherwise the request fails at once, certainly unsent, and is retried; sent into a
   * half-open pair it would wait out its whole timeout and end as an unknown outcome.
   */
  private canExchangeWith(peer: string): boolean {
    const heard = this.lastHeardFrom.get(peer);
    return (
      this.transport.linkStates()[peer] === "connected" &&
      heard !== undefined &&
      performance.now() - heard < PEER_SILENCE_MS
    );
  }

  private readIndexHere(): Promise<number> {
    return this.localReads.start(this.requestTimeoutMs, readTimeoutError, (requestId) =>
      this.step({ type: "readIndex", requestId }),
    );
  }

  private readIndexAt(master: string): Promise<number> {
    if (!this.canExchangeWith(master)) return Promise.reject(new NotMasterError());
    return this.remoteReads.start(this.requestTimeoutMs, readTimeoutError, (requestId) =>
      this.transport.send(master, { type: "readIndex", requestId }),
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Status

  status(): NodeStatus {
    const s = this.core.status();
    const isMaster = s.role === "master";
    return {
      member: this.opts.member,
      group: this.opts.group,
      role:
        s.role === "follower" && roleOf({ members: s.configuration.members }, this.opts.member) === "learner"
          ? "learner"
          : s.role,
      master: s.master,
      members: s.members.map((m) => ({
        name: m.name,
        address: m.address,
        role: m.role,
        lag: m.name === this.opts.member || isMaster ? this.lagOf(m.name, isMaster, s) : null,
      })),
      instances: {
        chosen: s.chosenUpTo,
        executed: this.executed.value,
        checkpoint: this.sm.getCheckpointInstanceId(),
        minKept: this.checkpoints.minKept(),
        replayedOnStart: this.replayedOnStart,
        abstainUntil: s.abstainingUntil,
      },
      cleaner: this.checkpoints.cleanerStatus(),
      transfer: this.checkpoints.transferStatus(),
    };
  }

  private lagOf(name: string, isMaster: boolean, s: ReturnType<PaxosCore["status"]>): number | null {
    if (name === this.opts.member) return Math.max(0, s.knownChosenUpTo - this.executed.value);
    if (!isMaster) return null;
    const peer = s.peerChosenUpTo.get(name);
    return peer === undefined ? null : Math.max(0, s.chosenUpTo - peer);
  }

  isReady(): boolean {
    const s = this.core.status();
    return (
      !this.closing &&
      !this.checkpoints.isReceiving() &&
      s.master !== null &&
      s.knownChosenUpTo - this.executed.value <= READY_MAX_LAG
    );
  }

  /** Cleaner, checkpoint and membership admin calls, for the HTTP server's admin table. */
  adminRoutes(): AdminRoutes {
    return [
      ...this.checkpoints.adminRoutes(),
      ...membershipRoutes({
        status: () => this.core.status(),
        propose: (change) => this.askCore((requestId) => ({ type: "proposeConfig", requestId, change })),
        transferMaster: (to) => this.askCore((requestId) => ({ type: "transferMaster", requestId, to })),
      }),
    ];
  }

  private askCore(event: (requestId: number) => CoreEvent): Promise<number> {
    if (this.closing) return Promise.reject(new ServiceError("shutting_down", "the member is shutting down"));
    // A change is answered once in force, which takes activationDelay more instances: the master
    // fills them with no-ops, so this is bounded like a write.
    return this.adminRequests.start(this.requestTimeoutMs, timeoutError, (requestId) =>
      this.step(event(requestId)),
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Shutdown

  /** Finish what is in flight (bounded), then close links and storage. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.stopping.abort();
    const deadline = performance.now() + 5000;
    while (this.proposals.size > 0 && performance.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    this.ticksStopped = true;
    if (this.tickTimer !== null) clearTimeout(this.tickTimer);
    const stopped = new ServiceError("shutting_down", "the member is shutting down");
    for (const p of [this.proposals, this.forwards, this.localReads, this.remoteReads, this.adminRequests])
      p.rejectAll(stopped);
    this.executed.rejectAll(stopped);
    await this.transport.close();
    await this.checkpoints.close();
    await this.pipeline;
    await this.execution;
    await this.sm.close();
    await this.paxosLog.close();
  }
}

/** The master we asked is not (or no longer) master: nothing was proposed, safe to retry. */
class NotMasterError extends Error {
  override readonly name = "NotMasterError";
}

function timeoutError(): ServiceError {
  return new ServiceError("timeout", "the write was not confirmed in time; it may still be chosen");
}

function readTimeoutError(): ServiceError {
  return new ServiceError("no_quorum", "the read could not be confirmed by a quorum in time");
}

function failureError(reason: FailureReason): Error {
  switch (reason) {
    case "not_master":
    case "not_proposed":
    case "lost":
      // Certainly not chosen: the caller retries against whoever is master now.
      return new NotMasterError(reason);
    case "overloaded":
      return new ServiceError("overloaded", "the master's proposal queue is full");
  }
}

function forwardOutcome(e: unknown): "not_master" | "no_quorum" | "overloaded" | "timeout" {
  if (e instanceof NotMasterError) return "not_master";
  if (e instanceof ServiceError) {
    if (e.code === "overloaded") return "overloaded";
    if (e.code === "no_quorum" || e.code === "shutting_down") return "no_quorum";
  }
  return "timeout";
}

function forwardError(outcome: "not_master" | "no_quorum" | "overloaded" | "timeout"): Error {
  switch (outcome) {
    case "not_master":
      return new NotMasterError("the member asked is not the master");
    case "no_quorum":
      return new ServiceError("no_quorum", "the master could not propose the write");
    case "overloaded":
      return new ServiceError("overloaded", "the master's proposal queue is full");
    case "timeout":
      return timeoutError();
  }
}

/**
 * The log state as seen from a state machine that already reflects every instance <= executed
 * (after a checkpoint was installed, the log may end below it or hold stale records there).
 */
function withExecutedPrefix(r: RecoveredLogState, executed: number): RecoveredLogState {
  if (executed <= r.chosenUpTo) return r;
  let chosenUpTo = executed;
  const unchosen: LogRecord[] = [];
  for (const rec of r.unchosen) {
    if (rec.instance <= chosenUpTo) continue;
    if (unchosen.length === 0 && rec.chosen && rec.instance === chosenUpTo + 1) chosenUpTo = rec.instance;
    else unchosen.push(rec);
  }
  return { ...r, chosenUpTo, unchosen };
}

/** Chosen values reach the state machine here: commands, no-ops (nothing) and configurations. */
function executeValue(sm: KvStateMachine, instance: number, value: Value): Promise<void> {
  if (value.kind === "config") return sm.executeConfiguration(instance, value.config);
  return sm.execute(instance, value.kind === "commands" ? value.commands : []);
}

interface InitialMembership {
  /** What the core starts with, until the log chooses a configuration. */
  readonly config: Configuration;
  /** Every member's peer address, self included, and the rest of --peers: where links go. */
  readonly addresses: ReadonlyMap<string, string>;
}

/**
 * The configuration this start builds the core from, and the acceptor state it starts with. A
 * member that recorded the configuration it started with takes that record. Otherwise this is its
 * first start (or its log predates the record): a member without any state founds the group or
 * joins it (discovery.ts), one with state takes --peers, and either way the result is recorded,
 * with a rejoin's promise, before the core starts, so a crash from here on restarts with both:
 * neither "fresh" nor taking a --peers that a scale step has changed.
 */
async function startingMembership(
  opts: RuntimeOptions,
  paxosLog: PaxosLog,
  recovered: RecoveredLogState,
  { fresh, configurationChosen }: { fresh: boolean; configurationChosen: boolean },
): Promise<{ membership: InitialMembership; state: RecoveredLogState }> {
  const log = opts.logger;
  if (recovered.initialConfiguration !== null) {
    const membership = membershipOf(recovered.initialConfiguration, opts);
    if (!configurationChosen && !sameNames(membership.config, opts.peers)) {
      log.info(
        { peers: [...opts.peers.keys()], started: membership.config.members },
        "--peers differs from the configuration this member started with; that one holds until the log chooses one",
      );
    }
    return { membership, state: recovered };
  }
  const { membership, rejoin } = fresh
    ? await initialMembership(opts)
    : { membership: foundingMembership(opts), rejoin: null };
  await paxosLog.persist({
    records: [],
    initialConfiguration: membership.config,
    ...(rejoin === null ? {} : { promised: rejoin.promised, fencedBy: rejoin.from }),
    ...(rejoin !== null && rejoin.abstainUntil >= 0 ? { abstainUntil: rejoin.abstainUntil } : {}),
  });
  if (!fresh) {
    log.info(
      { voters: votersOf(membership.config) },
      "recorded --peers as the configuration this member started with (a log written by an older version)",
    );
  }
  if (rejoin === null) return { membership, state: recovered };
  const { promised, abstainUntil, from, fence } = rejoin;
  // Worth a warning when the group lists this member as a voter: it lost its state. A new
  // member, the usual case otherwise, goes through the same steps.
  log[isVoter(membership.config, opts.member) ? "warn" : "info"](
    { promised, abstainUntil, answeredBy: from, fence },
    "no state here and the group is running: joining with the promised ballot of its other voters, " +
      "and promising nothing until every instance up to abstainUntil is learned",
  );
  return { membership, state: { ...recovered, promised, abstainUntil, fencedBy: [...from] } };
}

function foundingMembership(opts: RuntimeOptions): InitialMembership {
  const members = [...opts.peers].map(([name, address]) => ({ name, address, role: "voter" as const }));
  return { config: { members }, addresses: opts.peers };
}

/** The recorded configuration; links, as on a first start, also go to every member of --peers. */
function membershipOf(config: Configuration, opts: RuntimeOptions): InitialMembership {
  const addresses = new Map<string, string>();
  for (const m of config.members) if (m.address !== "") addresses.set(m.name, m.address);
  for (const [name, address] of opts.peers) addresses.set(name, address);
  return { config, addresses };
}

function sameNames(config: Configuration, peers: ReadonlyMap<string, string>): boolean {
  return config.members.length === peers.size && config.members.every((m) => peers.has(m.name));
}

/**
 * A member without state asks its seeds whether it founds the group or joins a running one, and,
 * when it joins, what it must start with (see discovery.ts).
 */
async function initialMembership(
  opts: RuntimeOptions,
): Promise<{ membership: InitialMembership; rejoin: Rejoin | null }> {
  const found = await discoverGroup({
    self: opts.member,
    peers: opts.peers,
    host: opts.host,
    peerPort: opts.peerPort,
    ...(opts.token !== undefined ? { token: opts.token } : {}),
    logger: opts.logger,
  });
  if (found.founding) return { membership: foundingMembership(opts), rejoin: null };
  const own = opts.peers.get(opts.member) ?? "";
  const self = found.members.find((m) => m.name === opts.member);
  if (self?.role !== "voter") {
    opts.logger.info(
      { voters: votersOf({ members: found.members }) },
      "joining a running group as a learner; it must add and promote this member",
    );
  }
  const members =
    self === undefined
      ? [...found.members, { name: opts.member, address: own, role: "learner" as const }]
      : found.members;
  const addresses = new Map(members.filter((m) => m.address !== "").map((m) => [m.name, m.address]));
  if (own !== "" && !addresses.has(opts.member)) addresses.set(opts.member, own);
  return { membership: { config: { members }, addresses }, rejoin: found.rejoin };
}
