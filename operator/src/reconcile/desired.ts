// What should exist for one PaxosGroup: pure functions from the group (and the few facts the caller
// looked up: the token, the current voters, the default image) to the objects the operator applies
// with server-side apply. No I/O, no clock, no randomness: the same input gives the same object with
// the same key order, so re-applying a settled group under one field manager changes nothing.

import { createHash } from "node:crypto";
import type {
  V1Affinity,
  V1EnvVar,
  V1OwnerReference,
  V1PodDisruptionBudget,
  V1Probe,
  V1ResourceRequirements,
  V1Secret,
  V1Service,
  V1StatefulSet,
  V1Toleration,
} from "@kubernetes/client-node";

/**
 * The part of a PaxosGroup these functions read. Declared here so this file does not depend on the
 * API types being written in parallel; the real PaxosGroup type is meant to be assignable to it.
 */
export interface PaxosGroupLike {
  metadata: { name: string; namespace: string; uid: string; generation?: number };
  spec: {
    replicas: number;
    image?: string;
    storage: { size: string; storageClassName?: string };
    logCleaner: { holdCount: number; maxLogSize?: string | number };
    resources?: V1ResourceRequirements;
    podTemplate?: {
      labels?: Record<string, string>;
      annotations?: Record<string, string>;
      nodeSelector?: Record<string, string>;
      tolerations?: V1Toleration[];
      affinity?: V1Affinity;
      priorityClassName?: string;
    };
  };
}

export const GROUP_API_VERSION = "paxos.dev/v1alpha1";
export const GROUP_KIND = "PaxosGroup";
export const PEER_PORT = 7070;
export const HTTP_PORT = 8080;
export const CONTAINER_NAME = "paxos-node";
export const DATA_DIR = "/data";
// Under /var/run/secrets, where Kubernetes mounts the service-account token too: a place the
// local pod runner can mount without touching the host's /etc.
export const TOKEN_DIR = "/var/run/secrets/paxos";
export const TOKEN_KEY = "token";
export const TERMINATION_LOG = "/dev/termination-log";
/** The node's user and group in the image (node/Dockerfile); fsGroup makes the PVC writable for it. */
export const RUN_AS_ID = 10001;

export function tokenSecretName(g: PaxosGroupLike): string {
  return `${g.metadata.name}-token`;
}

export function peerServiceName(g: PaxosGroupLike): string {
  return `${g.metadata.name}-peers`;
}

export function clientServiceName(g: PaxosGroupLike): string {
  return g.metadata.name;
}

export function statefulSetName(g: PaxosGroupLike): string {
  return g.metadata.name;
}

/** StatefulSet pod `ordinal` of the group: the member's stable name. */
export function memberName(g: PaxosGroupLike, ordinal: number): string {
  return `${g.metadata.name}-${ordinal}`;
}

/** The labels that pick the group's pods: the StatefulSet selector is immutable, so keep this set small. */
export function selectorLabels(g: PaxosGroupLike): Record<string, string> {
  return {
    "app.kubernetes.io/instance": g.metadata.name,
    "app.kubernetes.io/name": "paxos-node",
  };
}

export function commonLabels(g: PaxosGroupLike): Record<string, string> {
  return { ...selectorLabels(g), "app.kubernetes.io/managed-by": "paxos-operator" };
}

export function ownerReference(g: PaxosGroupLike): V1OwnerReference {
  return {
    apiVersion: GROUP_API_VERSION,
    kind: GROUP_KIND,
    name: g.metadata.name,
    uid: g.metadata.uid,
    controller: true,
    blockOwnerDeletion: true,
  };
}

/** Peer address of a member: its stable DNS name under the headless Service (resolved at connect time). */
export function peerAddress(g: PaxosGroupLike, member: string, clusterDomain = "cluster.local"): string {
  return `${member}.${peerServiceName(g)}.${g.metadata.namespace}.svc.${clusterDomain}:${PEER_PORT}`;
}

function objectMeta(g: PaxosGroupLike, name: string) {
  return {
    name,
    namespace: g.metadata.namespace,
    labels: commonLabels(g),
    ownerReferences: [ownerReference(g)],
  };
}

export function desiredSecret(g: PaxosGroupLike, token: string): V1Secret {
  if (token === "")
    throw new Error(`desiredSecret: the peer token for PaxosGroup ${g.metadata.name} is empty`);
  // `data`, not `stringData`: the API server stores only `data`, so applying it is a no-op once settled.
  return canonical({
    apiVersion: "v1",
    kind: "Secret",
    metadata: objectMeta(g, tokenSecretName(g)),
    type: "Opaque",
    data: { [TOKEN_KEY]: Buffer.from(token, "utf8").toString("base64") },
  });
}

export function desiredHeadlessService(g: PaxosGroupLike): V1Service {
  return canonical({
    apiVersion: "v1",
    kind: "Service",
    metadata: objectMeta(g, peerServiceName(g)),
    spec: {
      type: "ClusterIP",
      clusterIP: "None",
      // Members resolve each other before any is ready: readiness needs a master, a master needs peers.
      publishNotReadyAddresses: true,
      selector: selectorLabels(g),
      ports: [
        { name: "peer", port: PEER_PORT, targetPort: PEER_PORT, protocol: "TCP" },
        { name: "http", port: HTTP_PORT, targetPort: HTTP_PORT, protocol: "TCP" },
      ],
    },
  });
}

export function desiredClientService(g: PaxosGroupLike): V1Service {
  return canonical({
    apiVersion: "v1",
    kind: "Service",
    metadata: objectMeta(g, clientServiceName(g)),
    spec: {
      type: "ClusterIP",
      selector: selectorLabels(g),
      ports: [{ name: "http", port: HTTP_PORT, targetPort: HTTP_PORT, protocol: "TCP" }],
    },
  });
}

export function desiredPdb(g: PaxosGroupLike): V1PodDisruptionBudget {
  return canonical({
    apiVersion: "policy/v1",
    kind: "PodDisruptionBudget",
    metadata: objectMeta(g, g.metadata.name),
    spec: { maxUnavailable: 1, selector: { matchLabels: selectorLabels(g) } },
  });
}

export interface StatefulSetOptions {
  /**
   * Names of the current voters (from the members' status), empty for a group not yet founded. Every
   * pod shares one template, so PAXOS_PEERS lists these plus every ordinal below spec.replicas: a
   * founding member sees all voters, a joining one the voters plus itself (the node requires itself
   * in the list); once a configuration is chosen the node's log wins over this list.
   */
  peers?: readonly string[];
  /** Image when spec.image is empty. */
  defaultImage: string;
  /** Kubernetes cluster DNS domain; `cluster.local` unless the cluster says otherwise. */
  clusterDomain?: string;
}

/**
 * Pod template annotation: a hash of everything in the template that needs a running member
 * restarted to take effect. PAXOS_PEERS is left out: it changes with every scale step but matters
 * only to a member without state, so scaling never restarts the members that stay.
 */
export const SPEC_HASH_ANNOTATION = "paxos.dev/spec-hash";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** PAXOS_PEERS value: voters plus ordinals 0..replicas-1, deduplicated, ordered by ordinal then name. */
export function peersValue(
  g: PaxosGroupLike,
  opts: Pick<StatefulSetOptions, "peers" | "clusterDomain">,
): string {
  const names = new Set<string>();
  for (let i = 0; i < g.spec.replicas; i++) names.add(memberName(g, i));
  for (const p of opts.peers ?? []) {
    if (!DNS_LABEL.test(p)) {
      throw new Error(`PaxosGroup ${g.metadata.name}: voter name "${p}" is not a DNS label`);
    }
    names.add(p);
  }
  const prefix = `${g.metadata.name}-`;
  const ordinal = (n: string): number => {
    const rest = n.startsWith(prefix) ? n.slice(prefix.length) : "";
    return /^(0|[1-9]\d*)$/.test(rest) ? Number(rest) : Number.POSITIVE_INFINITY;
  };
  const sorted = [...names].sort((a, b) => {
    const d = ordinal(a) - ordinal(b);
    if (d !== 0 && !Number.isNaN(d)) return d;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  return sorted.map((n) => `${n}=${peerAddress(g, n, opts.clusterDomain)}`).join(",");
}

export function desiredStatefulSet(g: PaxosGroupLike, opts: StatefulSetOptions): V1StatefulSet {
  const { spec } = g;
  if (!Number.isInteger(spec.replicas) || spec.replicas < 1) {
    throw new Error(
      `PaxosGroup ${g.metadata.name}: spec.replicas must be an integer >= 1, got ${spec.replicas}`,
    );
  }
  if (!Number.isInteger(spec.logCleaner.holdCount) || spec.logCleaner.holdCount < 0) {
    throw new Error(
      `PaxosGroup ${g.metadata.name}: spec.logCleaner.holdCount must be an integer >= 0, got ${spec.logCleaner.holdCount}`,
    );
  }
  const image = spec.image || opts.defaultImage;
  if (!image) throw new Error(`PaxosGroup ${g.metadata.name}: no spec.image and no default image`);
  const pt = spec.podTemplate ?? {};
  const selector = selectorLabels(g);

  const env: V1EnvVar[] = [
    { name: "PAXOS_MEMBER", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "metadata.name" } } },
    { name: "PAXOS_GROUP", value: g.metadata.name },
    { name: "PAXOS_HOST", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "status.podIP" } } },
    { name: "PAXOS_PEERS", value: peersValue(g, opts) },
    { name: "PAXOS_DATA_DIR", value: DATA_DIR },
    // Set explicitly: with service links, a Service named e.g. `paxos-http` would inject PAXOS_HTTP_PORT.
    { name: "PAXOS_PEER_PORT", value: String(PEER_PORT) },
    { name: "PAXOS_HTTP_PORT", value: String(HTTP_PORT) },
    { name: "PAXOS_TOKEN_FILE", value: `${TOKEN_DIR}/${TOKEN_KEY}` },
    { name: "PAXOS_HOLD_COUNT", value: String(spec.logCleaner.holdCount) },
  ];
  if (spec.logCleaner.maxLogSize !== undefined) {
    const bytes = quantityToBytes(spec.logCleaner.maxLogSize, "spec.logCleaner.maxLogSize");
    env.push({ name: "PAXOS_MAX_LOG_SIZE", value: String(bytes) });
  }
  env.push({ name: "PAXOS_TERMINATION_LOG", value: TERMINATION_LOG });

  const httpProbe = (path: string, p: Omit<V1Probe, "httpGet">): V1Probe => ({
    httpGet: { path, port: HTTP_PORT, scheme: "HTTP" },
    ...p,
  });

  const antiAffinity: V1Affinity = {
    podAntiAffinity: {
      preferredDuringSchedulingIgnoredDuringExecution: [
        {
          weight: 100,
          podAffinityTerm: {
            labelSelector: { matchLabels: selector },
            topologyKey: "kubernetes.io/hostname",
          },
        },
      ],
    },
  };
  // The user's podTemplate.affinity replaces ours per kind (a hard anti-affinity, say), keeps the rest.
  const affinity: V1Affinity = { ...antiAffinity, ...pt.affinity };

  return withSpecHash({
    apiVersion: "apps/v1",
    kind: "StatefulSet",
    metadata: objectMeta(g, statefulSetName(g)),
    spec: {
      // While the membership changes, the reconciler sets the size its plan steps through.
      replicas: spec.replicas,
      serviceName: peerServiceName(g),
      selector: { matchLabels: selector },
      // OrderedReady would deadlock: pod 0 is not ready until a master exists, which needs a quorum.
      podManagementPolicy: "Parallel",
      // The operator replaces members one at a time itself, keeping a quorum.
      updateStrategy: { type: "OnDelete" },
      template: {
        metadata: {
          // Ours last: user labels cannot change the selector's or the standard ones.
          labels: { ...pt.labels, ...commonLabels(g) },
          annotations: pt.annotations,
        },
        spec: {
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 30,
          priorityClassName: pt.priorityClassName,
          nodeSelector: pt.nodeSelector,
          tolerations: pt.tolerations,
          affinity,
          securityContext: {
            runAsNonRoot: true,
            runAsUser: RUN_AS_ID,
            runAsGroup: RUN_AS_ID,
            fsGroup: RUN_AS_ID,
            // A large data volume is not walked on every start once its ownership is right.
            fsGroupChangePolicy: "OnRootMismatch",
            seccompProfile: { type: "RuntimeDefault" },
          },
          containers: [
            {
              name: CONTAINER_NAME,
              image,
              ports: [
                { name: "peer", containerPort: PEER_PORT, protocol: "TCP" },
                { name: "http", containerPort: HTTP_PORT, protocol: "TCP" },
              ],
              env,
              resources: spec.resources,
              // The node writes its exit reason there (e.g. `checkpoint-loaded ...` with exit code 75).
              terminationMessagePath: TERMINATION_LOG,
              terminationMessagePolicy: "File",
              // Replay after a checkpoint install can take long; liveness waits until the first success.
              startupProbe: httpProbe("/healthz", {
                periodSeconds: 10,
                timeoutSeconds: 5,
                successThreshold: 1,
                failureThreshold: 360,
              }),
              livenessProbe: httpProbe("/healthz", {
                periodSeconds: 10,
                timeoutSeconds: 5,
                successThreshold: 1,
                failureThreshold: 6,
              }),
              readinessProbe: httpProbe("/readyz", {
                periodSeconds: 5,
                timeoutSeconds: 3,
                successThreshold: 1,
                failureThreshold: 3,
              }),
              securityContext: {
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                runAsNonRoot: true,
                runAsUser: RUN_AS_ID,
                runAsGroup: RUN_AS_ID,
                capabilities: { drop: ["ALL"] },
                seccompProfile: { type: "RuntimeDefault" },
              },
              volumeMounts: [
                { name: "data", mountPath: DATA_DIR },
                { name: "token", mountPath: TOKEN_DIR, readOnly: true },
                { name: "tmp", mountPath: "/tmp" },
              ],
            },
          ],
          volumes: [
            {
              name: "token",
              secret: {
                secretName: tokenSecretName(g),
                // Owner-read only; kubelet adds group read for fsGroup, which is how uid 10001 reads it.
                defaultMode: 0o400,
                items: [{ key: TOKEN_KEY, path: TOKEN_KEY }],
              },
            },
            { name: "tmp", emptyDir: {} },
          ],
        },
      },
      // Immutable once created: a later spec.storage change needs the PVCs resized by other means.
      volumeClaimTemplates: [
        {
          apiVersion: "v1",
          kind: "PersistentVolumeClaim",
          metadata: { name: "data", labels: selector },
          spec: {
            accessModes: ["ReadWriteOnce"],
            storageClassName: spec.storage.storageClassName,
            resources: { requests: { storage: spec.storage.size } },
          },
        },
      ],
    },
  });
}

/** The StatefulSet, canonical, with the spec hash of its pod template set. */
function withSpecHash(sts: V1StatefulSet): V1StatefulSet {
  const template = sts.spec?.template;
  if (!template?.spec) throw new Error("withSpecHash: the StatefulSet has no pod template");
  const restartRelevant = {
    ...template,
    spec: {
      ...template.spec,
      containers: template.spec.containers.map((c) => ({
        ...c,
        env: c.env?.filter((e) => e.name !== "PAXOS_PEERS"),
      })),
    },
  };
  const hash = createHash("sha256")
    .update(JSON.stringify(canonical(restartRelevant)))
    .digest("hex")
    .slice(0, 16);
  template.metadata = {
    ...template.metadata,
    annotations: { ...template.metadata?.annotations, [SPEC_HASH_ANNOTATION]: hash },
  };
  return canonical(sts);
}

const BINARY_SUFFIX: Record<string, number> = { Ki: 1, Mi: 2, Gi: 3, Ti: 4, Pi: 5, Ei: 6 };
const DECIMAL_SUFFIX: Record<string, number> = {
  n: -9,
  u: -6,
  m: -3,
  "": 0,
  k: 3,
  M: 6,
  G: 9,
  T: 12,
  P: 15,
  E: 18,
};

/**
 * A Kubernetes resource quantity (`5Gi`, `500Mi`, `1G`, `1.5Gi`, `1e9`, or a plain number) as a
 * whole number of bytes, rounded up like the API server's Value(). `field` names the input in errors.
 */
export function quantityToBytes(q: string | number, field = "quantity"): number {
  const text = typeof q === "number" ? String(q) : q.trim();
  const m = /^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$/.exec(text);
  if (!m) {
    throw new Error(`${field}: "${text}" is not a non-negative Kubernetes quantity such as 5Gi, 500Mi or 1G`);
  }
  const numberText = m[1]!;
  const suffix = m[2] ?? "";
  const dot = numberText.indexOf(".");
  const fraction = dot < 0 ? "" : numberText.slice(dot + 1);
  // Exact arithmetic: value = mantissa * 2^(10*b) * 10^(d - fraction digits).
  let mantissa = BigInt((dot < 0 ? numberText : numberText.slice(0, dot) + fraction) || "0");
  let exp10 = -fraction.length;
  const binary = BINARY_SUFFIX[suffix];
  if (binary !== undefined) {
    mantissa *= 1n << BigInt(10 * binary);
  } else if (suffix[0] === "e" || suffix[0] === "E") {
    exp10 += Number(suffix.slice(1));
  } else {
    exp10 += DECIMAL_SUFFIX[suffix]!;
  }
  // Bounds the BigInt powers below; real sizes are nowhere near.
  if (Math.abs(exp10) > 100) throw new Error(`${field}: "${text}" has an exponent out of range`);
  let bytes: bigint;
  if (exp10 >= 0) {
    bytes = mantissa * 10n ** BigInt(exp10);
  } else {
    const div = 10n ** BigInt(-exp10);
    bytes = (mantissa + div - 1n) / div;
  }
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Error(`${field}: "${text}" is too large (more than ${Number.MAX_SAFE_INTEGER} bytes)`);
  }
  return Number(bytes);
}

/**
 * A deep copy with object keys sorted and undefined members dropped (array order kept): the stable
 * shape that makes two computations of the same object compare equal byte for byte.
 */
function canonical<T>(value: T): T {
  return sortValue(value) as T;
}

function sortValue(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortValue);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined) out[key] = sortValue(v);
    }
    return out;
  }
  return value;
}
