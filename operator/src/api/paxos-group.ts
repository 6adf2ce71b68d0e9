// The PaxosGroup custom resource as the operator sees it. crds/paxosgroup.yaml is the source of
// truth for validation and defaults; these types mirror it, with fields optional where the API
// server may omit them (defaults are applied on write, but objects stored before a default was
// introduced can still lack it).
import type { V1ObjectMeta } from "@kubernetes/client-node";

export const GROUP = "paxos.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = "PaxosGroup";
export const PLURAL = "paxosgroups";
export const SHORT_NAME = "pxg";

export const DEFAULT_REPLICAS = 3;
export const MIN_REPLICAS = 1;
export const MAX_REPLICAS = 9;
export const DEFAULT_STORAGE_SIZE = "1Gi";
export const DEFAULT_HOLD_COUNT = 100000;
export const MIN_HOLD_COUNT = 300;
export const DEFAULT_TIME_ZONE = "UTC";

/** A Kubernetes quantity: the API server accepts either form. */
export type Quantity = string | number;

export interface CleanerWindow {
  /** 5-field cron expression, evaluated in timeZone. */
  schedule: string;
  /** Go-style duration, e.g. "2h" or "1h30m"; the window stays open this long after each fire time. */
  duration: string;
  /** IANA time zone name; defaults to UTC. */
  timeZone?: string;
}

export interface LogCleanerSpec {
  holdCount?: number;
  /** Empty or absent: the cleaner may always run. */
  windows?: CleanerWindow[];
  /** Safety valve: past this log size the cleaner runs outside windows too. */
  maxLogSize?: Quantity;
}

export interface StorageSpec {
  size?: Quantity;
  storageClassName?: string;
}

/** The parts of the member pods' template a user may set. */
export interface PodTemplateOverrides {
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  nodeSelector?: Record<string, string>;
  tolerations?: Record<string, unknown>[];
  affinity?: Record<string, unknown>;
  priorityClassName?: string;
}

export interface PaxosGroupSpec {
  replicas?: number;
  /** Absent: the operator's default paxos-node image. */
  image?: string;
  storage?: StorageSpec;
  logCleaner?: LogCleanerSpec;
  /** A core/v1 ResourceRequirements, passed through to the member container. */
  resources?: Record<string, unknown>;
  podTemplate?: PodTemplateOverrides;
}

export type ConditionStatus = "True" | "False" | "Unknown";

export const CONDITION_AVAILABLE = "Available";
export const CONDITION_PROGRESSING = "Progressing";
export const CONDITION_DEGRADED = "Degraded";
export const CONDITION_CLEANER_WINDOW_OPEN = "CleanerWindowOpen";

/** metav1.Condition. */
export interface Condition {
  type: string;
  status: ConditionStatus;
  observedGeneration?: number;
  /** RFC 3339. */
  lastTransitionTime: string;
  reason: string;
  message: string;
}

export interface MemberStatus {
  name: string;
  role?: "voter" | "learner";
  ready?: boolean;
  chosen?: number;
  checkpoint?: number;
  minKept?: number;
}

export interface CleanerStatus {
  open: boolean;
  /** RFC 3339; absent when no window is coming. */
  nextWindowStart?: string;
  nextWindowEnd?: string;
}

export interface PaxosGroupStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  readyReplicas?: number;
  master?: string;
  members?: MemberStatus[];
  cleaner?: CleanerStatus;
  checkpointLoads?: number;
}

export interface PaxosGroup {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: V1ObjectMeta;
  spec: PaxosGroupSpec;
  status?: PaxosGroupStatus;
}
