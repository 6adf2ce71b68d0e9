// The checkpoint half of a member's runtime: making checkpoints on schedule, the log cleaner,
// serving checkpoints to peers that fell behind, and fetching one when this member fell behind
// (then the process ends itself, exit 75, to start afresh from it).

import { rm } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import type WebSocket from "ws";
import { CatchUpPlanner } from "../checkpoint/catch-up.js";
import type { CheckpointStore } from "../checkpoint/checkpoint-store.js";
import { type CleanerSettings, LogCleaner, parseCleanerUpdate } from "../checkpoint/cleaner.js";
import { CheckpointSender, receiveCheckpoint, type TransferProgress } from "../checkpoint/transfer.js";
import type { AdminRoutes } from "../server/admin-routes.js";
import { HttpError } from "../server/admin-routes.js";
import type { KvStateMachine } from "../sm/kv-state-machine.js";
import type { PaxosLog } from "../storage/paxos-log.js";
import type { PeerMessage } from "../transport/peer-message.js";
import type { RuntimeOptions } from "./node-runtime.js";

export type CheckpointOptions = Pick<
  RuntimeOptions,
  | "member"
  | "dataDir"
  | "token"
  | "holdCount"
  | "checkpointEvery"
  | "checkpointMinIntervalMs"
  | "maxLogSize"
  | "corruptChunkForTest"
  | "chunkDelayMsForTest"
  | "logger"
  | "metrics"
>;

/** What the driver needs from the runtime around it. */
export interface CheckpointHost {
  chosenUpTo(): number;
  quorum(): number;
  peerAddress(member: string): string | undefined;
  otherMembers(): readonly string[];
  send(to: string, message: PeerMessage): void;
  /** A verified checkpoint is installed; the process must end with exit code 75. */
  checkpointLoaded(instance: number, from: string): void;
}

export interface TransferStatus {
  readonly receiving: (TransferProgress & { readonly from: string }) | null;
  readonly sending: readonly TransferProgress[];
}

/** How long other peers get to answer with log entries before a transfer starts. */
const CATCH_UP_GRACE_MS = 1000;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;
const SCHEDULE_MS = 500;

export class CheckpointDriver {
  readonly sender: CheckpointSender;
  private readonly planner = new CatchUpPlanner(CATCH_UP_GRACE_MS);
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private making: Promise<void> | null = null;
  private lastMadeAt = Number.NEGATIVE_INFINITY;
  private makerPaused = false;
  private receiving: (TransferProgress & { from: string }) | null = null;
  private receiveAbort: AbortController | null = null;
  private retryAt = 0;
  private retryDelayMs = RETRY_MIN_MS;
  private closed = false;

  constructor(
    private readonly opts: CheckpointOptions,
    private readonly store: CheckpointStore,
    private readonly sm: KvStateMachine,
    readonly cleaner: LogCleaner,
    private readonly host: CheckpointHost,
  ) {
    this.log = opts.logger.child({ component: "checkpoint" });
    const m = opts.metrics;
    let sentBytes = new Map<string, number>();
    this.sender = new CheckpointSender({
      source: store,
      logger: this.log,
      ...(opts.corruptChunkForTest !== undefined ? { corruptChunkForTest: opts.corruptChunkForTest } : {}),
      ...(opts.chunkDelayMsForTest !== undefined ? { chunkDelayMsForTest: opts.chunkDelayMsForTest } : {}),
      onProgress: (p) => {
        const key = `${p.member}/${p.instanceId}`;
        m.transferBytes.inc({ direction: "send" }, p.bytes - (sentBytes.get(key) ?? 0));
        sentBytes.set(key, p.bytes);
        if (sentBytes.size > 64) sentBytes = new Map([[key, p.bytes]]);
      },
    });
  }

  static async openCleaner(
    opts: CheckpointOptions,
    paxosLog: PaxosLog,
    sm: KvStateMachine,
    chosenUpTo: () => number,
  ): Promise<LogCleaner> {
    const m = opts.metrics;
    return LogCleaner.open({
      log: paxosLog,
      stateFile: `${opts.dataDir}/cleaner.json`,
      logger: opts.logger.child({ component: "cleaner" }),
      checkpointInstanceId: () => sm.getCheckpointInstanceId(),
      chosenUpTo,
      flagHoldCount: opts.holdCount,
      ...(opts.maxLogSize !== undefined ? { maxLogBytes: opts.maxLogSize } : {}),
      events: {
        deleted: (n) => m.cleanerDeleted.inc(n),
        forced: () => m.cleanerForced.inc(),
      },
    });
  }

  start(): void {
    this.cleaner.start();
    this.timer = setInterval(() => this.onSchedule(), SCHEDULE_MS);
    this.updateGauges();
  }

  /** The peer-port handler for `/paxos/checkpoint/v1`. */
  serve(ws: WebSocket, member: string): void {
    this.opts.metrics.transfersActive.inc({ direction: "send" });
    ws.once("close", () => this.opts.metrics.transfersActive.dec({ direction: "send" }));
    this.sender.serve(ws, member);
  }

  /** A learn request for `from`: false when the log no longer holds it (a compacted answer was sent). */
  answerIfCompacted(to: string, from: number): boolean {
    const minKept = this.cleaner.minKept();
    if (from >= minKept) return false;
    this.host.send(to, {
      type: "learnCompacted",
      from,
      minKept,
      checkpoint: this.sm.getCheckpointInstanceId(),
    });
    return true;
  }

  onCompacted(peer: string, msg: { from: number; minKept: number; checkpoint: number }): void {
    const first = this.planner.report({ peer, ...msg, at: performance.now() }, this.host.chosenUpTo());
    if (!first) return;
    this.log.info(
      { peer, learnPoint: msg.from, peerMinKept: msg.minKept, peerCheckpoint: msg.checkpoint },
      "a peer's log no longer holds the instance we need; asking the others",
    );
    for (const other of this.host.otherMembers()) {
      if (other !== peer) this.host.send(other, { type: "learnRequest", from: msg.from });
    }
  }

  isReceiving(): boolean {
    return this.receiving !== null;
  }

  transferStatus(): TransferStatus {
    return { receiving: this.receiving, sending: this.sender.active() };
  }

  minKept(): number {
    return this.cleaner.minKept();
  }

  /** The cleaner's settings plus when --max-log-size last forced it to clean while paused. */
  cleanerStatus(): CleanerSettings & { lastForcedAt: string | null } {
    return { ...this.cleaner.settings(), lastForcedAt: this.cleaner.lastForcedAt };
  }

  adminRoutes(): AdminRoutes {
    return [
      {
        method: "GET",
        path: "/v1/admin/cleaner",
        handle: () => this.cleaner.settings(),
      },
      {
        method: "PUT",
        path: "/v1/admin/cleaner",
        handle: async ({ body }) => {
          let update: ReturnType<typeof parseCleanerUpdate>;
          try {
            update = parseCleanerUpdate(body);
          } catch (e) {
            throw new HttpError(400, "bad_request", (e as Error).message);
          }
          const settings = await this.cleaner.update(update);
          this.updateGauges();
          return settings;
        },
      },
      {
        method: "POST",
        path: "/v1/admin/checkpoint",
        handle: async () => {
          if (this.makerPaused) {
            throw new HttpError(409, "conflict", "the checkpoint maker is paused; continue it first");
          }
          await this.makeCheckpoint("requested");
          return { checkpoint: this.sm.getCheckpointInstanceId() };
        },
      },
      {
        method: "PUT",
        path: "/v1/admin/checkpointer",
        handle: ({ body }) => {
          const state = (body as { state?: unknown } | undefined)?.state;
          const keys = body !== null && typeof body === "object" ? Object.keys(body) : [];
          if ((state !== "running" && state !== "paused") || keys.length !== 1) {
            throw new HttpError(400, "bad_request", 'the body must be {"state": "running"|"paused"}');
          }
          this.makerPaused = state === "paused";
          if (this.makerPaused) this.sm.pauseCheckpointMaker();
          else this.sm.continueCheckpointMaker();
          this.log.info({ state }, "checkpoint maker state changed");
          return { state };
        },
      },
    ];
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.receiveAbort?.abort();
    await this.sender.close();
    await this.cleaner.close();
    await this.making;
  }

  // ---------------------------------------------------------------------------------------------

  private onSchedule(): void {
    this.updateGauges();
    if (this.closed) return;
    const executed = this.sm.lastExecutedInstance();
    if (
      !this.makerPaused &&
      this.making === null &&
      executed - this.sm.getCheckpointInstanceId() >= this.opts.checkpointEvery &&
      performance.now() - this.lastMadeAt >= this.opts.checkpointMinIntervalMs
    ) {
      void this.makeCheckpoint("scheduled").catch(() => {});
    }
    if (this.receiving === null && performance.now() >= this.retryAt) {
      const decision = this.planner.decide(performance.now(), this.host.chosenUpTo(), this.host.quorum());
      if (decision !== null) void this.fetchCheckpoint(decision.source);
    }
  }

  private makeCheckpoint(why: string): Promise<void> {
    this.making ??= (async () => {
      try {
        const r = await this.sm.makeCheckpoint();
        this.lastMadeAt = performance.now();
        if (r === null) return;
        const m = this.opts.metrics;
        m.checkpointMakeSeconds.observe(r.durationMs / 1000);
        m.checkpointPauseSeconds.observe(r.pauseMs / 1000);
        this.log.info({ why, ...r }, "checkpoint made");
        this.updateGauges();
      } catch (e) {
        this.log.error({ err: e, why }, "making a checkpoint failed");
        throw e;
      } finally {
        this.making = null;
      }
    })();
    return this.making;
  }

  private async fetchCheckpoint(source: string): Promise<void> {
    const address = this.host.peerAddress(source);
    if (address === undefined) return;
    const m = this.opts.metrics;
    const abort = new AbortController();
    this.receiveAbort = abort;
    this.receiving = {
      from: source,
      member: this.opts.member,
      instanceId: -1,
      files: 0,
      filesDone: 0,
      bytes: 0,
      totalBytes: 0,
    };
    m.transfersActive.inc({ direction: "receive" });
    const tmpDir = await this.store.tempDir();
    let counted = 0;
    let filesCounted = 0;
    this.log.info({ from: source, address, chosenUpTo: this.host.chosenUpTo() }, "fetching a checkpoint");
    try {
      const state = await receiveCheckpoint({
        address,
        self: this.opts.member,
        ...(this.opts.token !== undefined ? { token: this.opts.token } : {}),
        tmpDir,
        peer: source,
        signal: abort.signal,
        logger: this.log,
        onProgress: (p) => {
          this.receiving = { ...p, from: source };
          m.transferBytes.inc({ direction: "receive" }, p.bytes - counted);
          m.transferFiles.inc({ direction: "receive" }, p.filesDone - filesCounted);
          counted = p.bytes;
          filesCounted = p.filesDone;
        },
      });
      if (state.instanceId <= this.sm.lastExecutedInstance()) {
        throw new Error(
          `the checkpoint from ${source} (instance ${state.instanceId}) is not newer than our state (${this.sm.lastExecutedInstance()})`,
        );
      }
      await this.sm.loadCheckpointState(state);
      m.transfers.inc({ direction: "receive", outcome: "ok" });
      this.log.info(
        { from: source, instance: state.instanceId, files: state.files.length, bytes: counted },
        "checkpoint received, verified and installed; restarting to load it",
      );
      // Nothing more to do in this process: no more checkpoints, no more transfers.
      this.closed = true;
      this.host.checkpointLoaded(state.instanceId, source);
    } catch (e) {
      m.transfers.inc({ direction: "receive", outcome: "failed" });
      await rm(tmpDir, { recursive: true, force: true }).catch(() => {});
      if (!this.closed) {
        this.log.warn({ err: e, from: source, retryInMs: this.retryDelayMs }, "checkpoint transfer failed");
        this.retryAt = performance.now() + this.retryDelayMs;
        this.retryDelayMs = Math.min(RETRY_MAX_MS, this.retryDelayMs * 2);
        this.planner.reset();
      }
    } finally {
      m.transfersActive.dec({ direction: "receive" });
      this.receiving = null;
      this.receiveAbort = null;
    }
  }

  private updateGauges(): void {
    const m = this.opts.metrics;
    m.checkpointInstance.set(this.sm.getCheckpointInstanceId());
    m.logMinKept.set(this.cleaner.minKept());
    m.cleanerRunning.set(this.cleaner.settings().state === "running" ? 1 : 0);
  }
}
