// Prometheus instruments of one member. Each member gets its own registry (never prom-client's global
// one) so that several members can live in one process, as they do in tests. Metric names are an
// interface: the operator and dashboards read them, so rename nothing without a migration note.

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { NodeStatus } from "./service.js";

export type Role = NodeStatus["role"];

const ROLES: readonly Role[] = ["master", "follower", "candidate", "learner"];

/** Commit latency spans a batched local fsync (~0.2 ms) to a stalled quorum (seconds). */
const COMMIT_LATENCY_BUCKETS = [
  0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5,
];
const FSYNC_BUCKETS = [0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
const HTTP_DURATION_BUCKETS = [
  0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
];

export interface Metrics {
  readonly registry: Registry;
  /** paxos_proposals_total: instances this member proposed (phase 2 started). */
  readonly proposals: Counter;
  /** paxos_chosen_instances_total: instances learned as chosen here. */
  readonly chosenInstances: Counter;
  /** paxos_commit_latency_seconds: client command received -> chosen and executed. */
  readonly commitLatency: Histogram;
  /** paxos_fsync_seconds: duration of one synced write batch. */
  readonly fsyncSeconds: Histogram;
  /** paxos_batch_commands: client commands per instance value. */
  readonly batchCommands: Histogram;
  /** paxos_batch_records: log records per synced write. */
  readonly batchRecords: Histogram;
  /** paxos_peer_link_up{peer}: 1 while the link to `peer` is open and authenticated. */
  readonly peerLinkUp: Gauge<"peer">;
  /** paxos_rejected_frames_total{peer,reason}: malformed or unauthenticated frames dropped. */
  readonly rejectedFrames: Counter<"peer" | "reason">;
  /** paxos_dropped_messages_total{peer}: messages dropped because a send queue was full. */
  readonly droppedMessages: Counter<"peer">;
  /**
   * paxos_late_accepts_total: instances a master sent to a voter outside its eager quorum because
   * they were still unchosen after lazyAcceptMs (the eager followers did not keep up).
   */
  readonly lateAccepts: Counter;
  /** paxos_instance_chosen: highest instance chosen here. */
  readonly instanceChosen: Gauge;
  /** paxos_instance_executed: highest instance executed by the state machine here. */
  readonly instanceExecuted: Gauge;
  /** paxos_http_requests_total{route,code}. */
  readonly httpRequests: Counter<"route" | "code">;
  /** paxos_http_request_duration_seconds{route}. */
  readonly httpRequestDuration: Histogram<"route">;
  /** paxos_role{role}: 1 for the current role, 0 for the others. */
  readonly role: Gauge<"role">;
  /** paxos_member_lag{peer}: instances `peer` is behind the master, as far as this member knows. */
  readonly memberLag: Gauge<"peer">;
  /** paxos_checkpoint_instance: instance of the current checkpoint (-1: none). */
  readonly checkpointInstance: Gauge;
  /** paxos_checkpoint_make_seconds: duration of making one checkpoint. */
  readonly checkpointMakeSeconds: Histogram;
  /** paxos_checkpoint_pause_seconds: how long making a checkpoint held up the state machine. */
  readonly checkpointPauseSeconds: Histogram;
  /** paxos_log_min_kept: lowest instance still in the PaxosLog. */
  readonly logMinKept: Gauge;
  /** paxos_cleaner_running: 1 while the cleaner may delete, 0 while paused. */
  readonly cleanerRunning: Gauge;
  /** paxos_cleaner_deleted_total: PaxosLog entries deleted by the cleaner. */
  readonly cleanerDeleted: Counter;
  /** paxos_cleaner_forced_total: times the log passed --max-log-size and was cleaned while paused. */
  readonly cleanerForced: Counter;
  /** paxos_checkpoint_transfer_bytes_total{direction}: checkpoint bytes sent or received. */
  readonly transferBytes: Counter<"direction">;
  /** paxos_checkpoint_transfer_files_total{direction}: checkpoint files sent or received completely. */
  readonly transferFiles: Counter<"direction">;
  /** paxos_checkpoint_transfers_total{direction,outcome}: finished transfers, "ok" or "failed". */
  readonly transfers: Counter<"direction" | "outcome">;
  /** paxos_checkpoint_transfer_active{direction}: transfers in progress. */
  readonly transfersActive: Gauge<"direction">;
  setRole(role: Role): void;
  /** Records one answered HTTP request. `route` is a template, never a raw path (bounded cardinality). */
  observeHttpRequest(route: string, status: number, seconds: number): void;
}

const EVENT_LOOP_SAMPLE_MS = 100;

export function createMetrics(labels: { member: string; group: string }): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels({ member: labels.member, group: labels.group });
  // prom-client samples event-loop delay every 10 ms by default: a timer that wakes an idle member
  // 100 times a second, most of its idle CPU. Every 100 ms still catches each stall of 100 ms or
  // more, and shorter ones in proportion to their length.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  const registers = [registry];

  const role = new Gauge({
    name: "paxos_role",
    help: "1 for the role this member currently has, 0 for the others",
    labelNames: ["role"] as const,
    registers,
  });
  for (const r of ROLES) role.set({ role: r }, 0);

  const httpRequests = new Counter({
    name: "paxos_http_requests_total",
    help: "HTTP requests answered, by route template and status code",
    labelNames: ["route", "code"] as const,
    registers,
  });
  const httpRequestDuration = new Histogram({
    name: "paxos_http_request_duration_seconds",
    help: "Time from receiving an HTTP request to handing its answer to the socket",
    labelNames: ["route"] as const,
    buckets: HTTP_DURATION_BUCKETS,
    registers,
  });
  // prom-client hashes the label set on every call; the HTTP hot path reuses the children instead.
  const httpChildren = new Map<string, { count: { inc(): void }; duration: { observe(v: number): void } }>();

  return {
    registry,
    proposals: new Counter({
      name: "paxos_proposals_total",
      help: "Instances this member proposed",
      registers,
    }),
    chosenInstances: new Counter({
      name: "paxos_chosen_instances_total",
      help: "Instances learned as chosen by this member",
      registers,
    }),
    commitLatency: new Histogram({
      name: "paxos_commit_latency_seconds",
      help: "Time from receiving a client command to its instance being chosen and executed",
      buckets: COMMIT_LATENCY_BUCKETS,
      registers,
    }),
    fsyncSeconds: new Histogram({
      name: "paxos_fsync_seconds",
      help: "Duration of one synced write batch",
      buckets: FSYNC_BUCKETS,
      registers,
    }),
    batchCommands: new Histogram({
      name: "paxos_batch_commands",
      help: "Client commands per instance value",
      buckets: BATCH_BUCKETS,
      registers,
    }),
    batchRecords: new Histogram({
      name: "paxos_batch_records",
      help: "Log records per synced write",
      buckets: BATCH_BUCKETS,
      registers,
    }),
    peerLinkUp: new Gauge({
      name: "paxos_peer_link_up",
      help: "1 while the link to the peer is open and authenticated, else 0",
      labelNames: ["peer"] as const,
      registers,
    }),
    rejectedFrames: new Counter({
      name: "paxos_rejected_frames_total",
      help: "Peer frames dropped because they were malformed or unauthenticated",
      labelNames: ["peer", "reason"] as const,
      registers,
    }),
    droppedMessages: new Counter({
      name: "paxos_dropped_messages_total",
      help: "Messages to a peer dropped because its send queue was full",
      labelNames: ["peer"] as const,
      registers,
    }),
    lateAccepts: new Counter({
      name: "paxos_late_accepts_total",
      help: "Instances a master sent to a voter outside its eager quorum because they were still unchosen after lazyAcceptMs",
      registers,
    }),
    instanceChosen: new Gauge({
      name: "paxos_instance_chosen",
      help: "Highest instance chosen here",
      registers,
    }),
    instanceExecuted: new Gauge({
      name: "paxos_instance_executed",
      help: "Highest instance executed by the state machine here",
      registers,
    }),
    httpRequests,
    httpRequestDuration,
    role,
    memberLag: new Gauge({
      name: "paxos_member_lag",
      help: "Instances the peer is behind the master, as far as this member knows",
      labelNames: ["peer"] as const,
      registers,
    }),
    checkpointInstance: new Gauge({
      name: "paxos_checkpoint_instance",
      help: "Instance of the current checkpoint: every instance <= it is reflected in it (-1: none)",
      registers,
    }),
    checkpointMakeSeconds: new Histogram({
      name: "paxos_checkpoint_make_seconds",
      help: "Duration of making one checkpoint",
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300],
      registers,
    }),
    checkpointPauseSeconds: new Histogram({
      name: "paxos_checkpoint_pause_seconds",
      help: "How long making one checkpoint held up the state machine",
      buckets: [0.00001, 0.0001, 0.001, 0.01, 0.1, 1],
      registers,
    }),
    logMinKept: new Gauge({
      name: "paxos_log_min_kept",
      help: "Lowest instance still in the PaxosLog",
      registers,
    }),
    cleanerRunning: new Gauge({
      name: "paxos_cleaner_running",
      help: "1 while the PaxosLog cleaner may delete, 0 while it is paused",
      registers,
    }),
    cleanerDeleted: new Counter({
      name: "paxos_cleaner_deleted_total",
      help: "PaxosLog entries deleted by the cleaner",
      registers,
    }),
    cleanerForced: new Counter({
      name: "paxos_cleaner_forced_total",
      help: "Times the PaxosLog grew past --max-log-size and was cleaned although the cleaner was paused",
      registers,
    }),
    transferBytes: new Counter({
      name: "paxos_checkpoint_transfer_bytes_total",
      help: "Checkpoint bytes sent to or received from peers",
      labelNames: ["direction"] as const,
      registers,
    }),
    transferFiles: new Counter({
      name: "paxos_checkpoint_transfer_files_total",
      help: "Checkpoint files sent to or received from peers completely",
      labelNames: ["direction"] as const,
      registers,
    }),
    transfers: new Counter({
      name: "paxos_checkpoint_transfers_total",
      help: "Finished checkpoint transfers by direction and outcome",
      labelNames: ["direction", "outcome"] as const,
      registers,
    }),
    transfersActive: new Gauge({
      name: "paxos_checkpoint_transfer_active",
      help: "Checkpoint transfers in progress",
      labelNames: ["direction"] as const,
      registers,
    }),
    setRole(current: Role): void {
      for (const r of ROLES) role.set({ role: r }, r === current ? 1 : 0);
    },
    observeHttpRequest(route: string, status: number, seconds: number): void {
      const key = `${status} ${route}`;
      let child = httpChildren.get(key);
      if (child === undefined) {
        child = {
          count: httpRequests.labels({ route, code: String(status) }),
          duration: httpRequestDuration.labels({ route }),
        };
        httpChildren.set(key, child);
      }
      child.count.inc();
      child.duration.observe(seconds);
    },
  };
}
