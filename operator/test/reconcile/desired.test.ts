import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { V1Container, V1PodSpec } from "@kubernetes/client-node";
import {
  desiredClientService,
  desiredHeadlessService,
  desiredPdb,
  desiredSecret,
  desiredStatefulSet,
  type PaxosGroupLike,
  peersValue,
  quantityToBytes,
  SPEC_HASH_ANNOTATION,
} from "../../src/reconcile/desired.js";

function group(over: Partial<PaxosGroupLike["spec"]> = {}, name = "kv"): PaxosGroupLike {
  return {
    metadata: { name, namespace: "ns", uid: "uid-1234", generation: 3 },
    spec: {
      replicas: 3,
      storage: { size: "1Gi", storageClassName: "standard" },
      logCleaner: { holdCount: 100000 },
      ...over,
    },
  };
}

const DEFAULT_IMAGE = "paxos-node:0.1.0";
const sts = (g: PaxosGroupLike, peers: string[] = []) =>
  desiredStatefulSet(g, { peers, defaultImage: DEFAULT_IMAGE });
const podSpec = (g: PaxosGroupLike, peers: string[] = []): V1PodSpec => sts(g, peers).spec!.template.spec!;
const container = (g: PaxosGroupLike): V1Container => podSpec(g).containers[0]!;
const envOf = (g: PaxosGroupLike): Map<string, string | undefined> =>
  new Map(
    (container(g).env ?? []).map((e) => [e.name, e.value ?? `fieldRef:${e.valueFrom?.fieldRef?.fieldPath}`]),
  );

const LABELS = {
  "app.kubernetes.io/instance": "kv",
  "app.kubernetes.io/managed-by": "paxos-operator",
  "app.kubernetes.io/name": "paxos-node",
};
const SELECTOR = { "app.kubernetes.io/instance": "kv", "app.kubernetes.io/name": "paxos-node" };

const all = (g: PaxosGroupLike) => [
  desiredSecret(g, "s3cret"),
  desiredHeadlessService(g),
  desiredClientService(g),
  sts(g),
  desiredPdb(g),
];

describe("desired objects: identity", () => {
  const table = [
    { kind: "Secret", apiVersion: "v1", name: "kv-token" },
    { kind: "Service", apiVersion: "v1", name: "kv-peers" },
    { kind: "Service", apiVersion: "v1", name: "kv" },
    { kind: "StatefulSet", apiVersion: "apps/v1", name: "kv" },
    { kind: "PodDisruptionBudget", apiVersion: "policy/v1", name: "kv" },
  ];
  const objs = all(group());
  for (const [i, want] of table.entries()) {
    it(`${want.kind} ${want.name}: name, namespace, labels, owner reference`, () => {
      const o = objs[i]!;
      assert.equal(o.kind, want.kind);
      assert.equal(o.apiVersion, want.apiVersion);
      assert.equal(o.metadata?.name, want.name);
      assert.equal(o.metadata?.namespace, "ns");
      assert.deepEqual(o.metadata?.labels, LABELS);
      assert.deepEqual(o.metadata?.ownerReferences, [
        {
          apiVersion: "paxos.dev/v1alpha1",
          kind: "PaxosGroup",
          name: "kv",
          uid: "uid-1234",
          controller: true,
          blockOwnerDeletion: true,
        },
      ]);
    });
  }
});

describe("desiredSecret", () => {
  it("holds the token base64-encoded under key `token`", () => {
    const s = desiredSecret(group(), "abc.DEF-123");
    assert.deepEqual(s.data, { token: Buffer.from("abc.DEF-123").toString("base64") });
    assert.equal(s.type, "Opaque");
  });
  it("refuses an empty token", () => {
    assert.throws(() => desiredSecret(group(), ""), /token .* is empty/);
  });
});

describe("Services and PDB", () => {
  it("headless Service publishes not-ready members on both ports", () => {
    const spec = desiredHeadlessService(group()).spec!;
    assert.equal(spec.clusterIP, "None");
    assert.equal(spec.publishNotReadyAddresses, true);
    assert.deepEqual(spec.selector, SELECTOR);
    assert.deepEqual(
      spec.ports?.map((p) => [p.name, p.port, p.targetPort]),
      [
        ["peer", 7070, 7070],
        ["http", 8080, 8080],
      ],
    );
  });
  it("client Service selects ready members on http only", () => {
    const spec = desiredClientService(group()).spec!;
    assert.equal(spec.type, "ClusterIP");
    assert.equal(spec.clusterIP, undefined);
    assert.equal(spec.publishNotReadyAddresses, undefined);
    assert.deepEqual(spec.selector, SELECTOR);
    assert.deepEqual(
      spec.ports?.map((p) => [p.name, p.port, p.targetPort]),
      [["http", 8080, 8080]],
    );
  });
  it("PDB allows one member down", () => {
    const spec = desiredPdb(group()).spec!;
    assert.equal(spec.maxUnavailable, 1);
    assert.equal(spec.minAvailable, undefined);
    assert.deepEqual(spec.selector, { matchLabels: SELECTOR });
  });
});

describe("desiredStatefulSet: shape", () => {
  it("stable names, parallel pods, OnDelete, replicas from spec", () => {
    const s = sts(group({ replicas: 5 }));
    assert.equal(s.spec?.serviceName, "kv-peers");
    assert.equal(s.spec?.replicas, 5);
    assert.equal(s.spec?.podManagementPolicy, "Parallel");
    assert.deepEqual(s.spec?.updateStrategy, { type: "OnDelete" });
    assert.deepEqual(s.spec?.selector, { matchLabels: SELECTOR });
    assert.equal(s.spec?.template.spec?.terminationGracePeriodSeconds, 30);
  });

  it("image from spec, else the default", () => {
    assert.equal(container(group()).image, DEFAULT_IMAGE);
    assert.equal(container(group({ image: "reg/paxos-node:9" })).image, "reg/paxos-node:9");
    assert.throws(
      () => desiredStatefulSet(group(), { defaultImage: "" }),
      /no spec.image and no default image/,
    );
  });

  it("environment follows the node's process contract", () => {
    const env = envOf(group({ logCleaner: { holdCount: 300 } }));
    assert.deepEqual(Object.fromEntries(env), {
      PAXOS_MEMBER: "fieldRef:metadata.name",
      PAXOS_GROUP: "kv",
      PAXOS_HOST: "fieldRef:status.podIP",
      PAXOS_PEERS: peersValue(group(), {}),
      PAXOS_DATA_DIR: "/data",
      PAXOS_PEER_PORT: "7070",
      PAXOS_HTTP_PORT: "8080",
      PAXOS_TOKEN_FILE: "/var/run/secrets/paxos/token",
      PAXOS_HOLD_COUNT: "300",
      PAXOS_TERMINATION_LOG: "/dev/termination-log",
    });
  });

  it("PAXOS_MAX_LOG_SIZE is set in bytes only when maxLogSize is", () => {
    assert.equal(envOf(group()).has("PAXOS_MAX_LOG_SIZE"), false);
    const env = envOf(group({ logCleaner: { holdCount: 300, maxLogSize: "5Gi" } }));
    assert.equal(env.get("PAXOS_MAX_LOG_SIZE"), "5368709120");
    assert.throws(
      () => sts(group({ logCleaner: { holdCount: 300, maxLogSize: "5GB" } })),
      /spec.logCleaner.maxLogSize: "5GB" is not/,
    );
  });

  it("token Secret mounted read-only with mode 0400; data, tmp mounted", () => {
    const spec = podSpec(group());
    assert.deepEqual(spec.volumes, [
      {
        name: "token",
        secret: { secretName: "kv-token", defaultMode: 0o400, items: [{ key: "token", path: "token" }] },
      },
      { name: "tmp", emptyDir: {} },
    ]);
    assert.deepEqual(spec.containers[0]!.volumeMounts, [
      { name: "data", mountPath: "/data" },
      { name: "token", mountPath: "/var/run/secrets/paxos", readOnly: true },
      { name: "tmp", mountPath: "/tmp" },
    ]);
  });

  it("termination message from the file the node writes", () => {
    const c = container(group());
    assert.equal(c.terminationMessagePath, "/dev/termination-log");
    assert.equal(c.terminationMessagePolicy, "File");
  });

  it("probes: readiness /readyz, liveness /healthz, a long startup window", () => {
    const c = container(group());
    assert.deepEqual(c.readinessProbe?.httpGet, { path: "/readyz", port: 8080, scheme: "HTTP" });
    assert.deepEqual(c.livenessProbe?.httpGet, { path: "/healthz", port: 8080, scheme: "HTTP" });
    assert.deepEqual(c.startupProbe?.httpGet, { path: "/healthz", port: 8080, scheme: "HTTP" });
    assert.ok((c.livenessProbe?.failureThreshold ?? 0) * (c.livenessProbe?.periodSeconds ?? 0) >= 60);
    const startup = (c.startupProbe?.failureThreshold ?? 0) * (c.startupProbe?.periodSeconds ?? 0);
    assert.ok(startup >= 3600, `startup window ${startup}s`);
  });

  it("restricted security context on pod and container", () => {
    const spec = podSpec(group());
    assert.deepEqual(spec.securityContext, {
      fsGroup: 10001,
      fsGroupChangePolicy: "OnRootMismatch",
      runAsGroup: 10001,
      runAsNonRoot: true,
      runAsUser: 10001,
      seccompProfile: { type: "RuntimeDefault" },
    });
    assert.deepEqual(spec.containers[0]!.securityContext, {
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      readOnlyRootFilesystem: true,
      runAsGroup: 10001,
      runAsNonRoot: true,
      runAsUser: 10001,
      seccompProfile: { type: "RuntimeDefault" },
    });
    assert.equal(spec.automountServiceAccountToken, false);
    assert.equal(spec.enableServiceLinks, false);
  });

  it("soft anti-affinity on hostname by default", () => {
    assert.deepEqual(podSpec(group()).affinity, {
      podAntiAffinity: {
        preferredDuringSchedulingIgnoredDuringExecution: [
          {
            weight: 100,
            podAffinityTerm: {
              labelSelector: { matchLabels: SELECTOR },
              topologyKey: "kubernetes.io/hostname",
            },
          },
        ],
      },
    });
  });

  it("volume claim template from spec.storage; storage class optional", () => {
    const withClass = sts(group()).spec?.volumeClaimTemplates;
    assert.equal(withClass?.length, 1);
    assert.equal(withClass?.[0]?.metadata?.name, "data");
    assert.deepEqual(withClass?.[0]?.spec, {
      accessModes: ["ReadWriteOnce"],
      resources: { requests: { storage: "1Gi" } },
      storageClassName: "standard",
    });
    const noClass = sts(group({ storage: { size: "20Gi" } })).spec?.volumeClaimTemplates?.[0]?.spec;
    assert.deepEqual(noClass, {
      accessModes: ["ReadWriteOnce"],
      resources: { requests: { storage: "20Gi" } },
    });
    assert.equal("storageClassName" in (noClass ?? {}), false);
  });

  it("refuses replicas < 1 and a negative holdCount", () => {
    assert.throws(() => sts(group({ replicas: 0 })), /spec.replicas must be an integer >= 1/);
    assert.throws(
      () => sts(group({ logCleaner: { holdCount: -1 } })),
      /spec.logCleaner.holdCount must be an integer >= 0/,
    );
  });
});

describe("PAXOS_PEERS", () => {
  const addr = (n: string) => `${n}=${n}.kv-peers.ns.svc.cluster.local:7070`;
  const table: { name: string; replicas: number; voters: string[]; want: string[] }[] = [
    { name: "1 replica", replicas: 1, voters: [], want: ["kv-0"] },
    { name: "3 replicas", replicas: 3, voters: [], want: ["kv-0", "kv-1", "kv-2"] },
    { name: "5 replicas", replicas: 5, voters: [], want: ["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"] },
    {
      name: "scale up 3 -> 5: voters plus the new ordinals",
      replicas: 5,
      voters: ["kv-2", "kv-0", "kv-1"],
      want: ["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"],
    },
    {
      name: "scale down 5 -> 3 before removal: voters still listed, ordinal order (10 after 9)",
      replicas: 3,
      voters: ["kv-10", "kv-4", "kv-0", "kv-1", "kv-2", "kv-9"],
      want: ["kv-0", "kv-1", "kv-2", "kv-4", "kv-9", "kv-10"],
    },
  ];
  for (const t of table) {
    it(t.name, () => {
      const g = group({ replicas: t.replicas });
      assert.equal(envOf(g).get("PAXOS_PEERS"), peersValue(g, {}));
      const got = sts(g, t.voters).spec!.template.spec!.containers[0]!.env!.find(
        (e) => e.name === "PAXOS_PEERS",
      );
      assert.equal(got?.value, t.want.map(addr).join(","));
    });
  }

  it("uses the given cluster domain", () => {
    const s = desiredStatefulSet(group({ replicas: 1 }), {
      defaultImage: DEFAULT_IMAGE,
      clusterDomain: "k8s.example",
    });
    const v = s.spec!.template.spec!.containers[0]!.env!.find((e) => e.name === "PAXOS_PEERS")?.value;
    assert.equal(v, "kv-0=kv-0.kv-peers.ns.svc.k8s.example:7070");
  });

  it("refuses a voter name that is not a DNS label", () => {
    assert.throws(() => sts(group(), ["Bad_Name"]), /voter name "Bad_Name" is not a DNS label/);
  });
});

describe("podTemplate and resources", () => {
  const g = group({
    resources: { requests: { cpu: "500m", memory: "1Gi" }, limits: { memory: "2Gi" } },
    podTemplate: {
      labels: { team: "storage", "app.kubernetes.io/name": "evil", "app.kubernetes.io/instance": "other" },
      annotations: { "example.com/scrape": "true" },
      nodeSelector: { "disk/type": "ssd" },
      tolerations: [{ key: "dedicated", operator: "Equal", value: "paxos", effect: "NoSchedule" }],
      priorityClassName: "high",
    },
  });
  const s = sts(g);
  const tmpl = s.spec!.template;

  it("adds labels but the selector and standard labels win", () => {
    assert.deepEqual(tmpl.metadata?.labels, { ...LABELS, team: "storage" });
    assert.deepEqual(s.spec?.selector, { matchLabels: SELECTOR });
  });

  it("applies annotations, nodeSelector, tolerations, priorityClassName, resources", () => {
    const { [SPEC_HASH_ANNOTATION]: hash, ...annotations } = tmpl.metadata?.annotations ?? {};
    assert.deepEqual(annotations, { "example.com/scrape": "true" });
    assert.match(hash ?? "", /^[0-9a-f]{16}$/);
    assert.deepEqual(tmpl.spec?.nodeSelector, { "disk/type": "ssd" });
    assert.deepEqual(tmpl.spec?.tolerations, [
      { effect: "NoSchedule", key: "dedicated", operator: "Equal", value: "paxos" },
    ]);
    assert.equal(tmpl.spec?.priorityClassName, "high");
    assert.deepEqual(tmpl.spec?.containers[0]?.resources, {
      limits: { memory: "2Gi" },
      requests: { cpu: "500m", memory: "1Gi" },
    });
  });

  it("leaves unset fields out", () => {
    const plain = sts(group()).spec!.template;
    assert.deepEqual(Object.keys(plain.metadata?.annotations ?? {}), [SPEC_HASH_ANNOTATION]);
    for (const k of ["nodeSelector", "tolerations", "priorityClassName"] as const) {
      assert.equal(k in (plain.spec ?? {}), false, k);
    }
    assert.equal("resources" in (plain.spec?.containers[0] ?? {}), false);
  });

  it("a user affinity replaces ours per kind and keeps the soft anti-affinity otherwise", () => {
    const nodeAffinity = {
      requiredDuringSchedulingIgnoredDuringExecution: {
        nodeSelectorTerms: [{ matchExpressions: [{ key: "zone", operator: "In", values: ["a"] }] }],
      },
    };
    const withNode = podSpec(group({ podTemplate: { affinity: { nodeAffinity } } })).affinity;
    assert.deepEqual(withNode?.nodeAffinity, nodeAffinity);
    assert.equal(withNode?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution?.length, 1);

    const hard = {
      requiredDuringSchedulingIgnoredDuringExecution: [
        { labelSelector: { matchLabels: SELECTOR }, topologyKey: "kubernetes.io/hostname" },
      ],
    };
    const withHard = podSpec(group({ podTemplate: { affinity: { podAntiAffinity: hard } } })).affinity;
    assert.deepEqual(withHard, { podAntiAffinity: hard });
  });
});

describe("spec hash: what restarts a member", () => {
  const hashOf = (g: PaxosGroupLike, opts: { peers?: string[] } = {}) =>
    desiredStatefulSet(g, { defaultImage: DEFAULT_IMAGE, ...opts }).spec!.template.metadata!.annotations![
      SPEC_HASH_ANNOTATION
    ];

  it("scaling (replicas, PAXOS_PEERS) keeps it", () => {
    const base = hashOf(group());
    assert.equal(hashOf(group({ replicas: 5 })), base);
    assert.equal(hashOf(group(), { peers: ["kv-7"] }), base);
  });

  it("the storage the claim template keeps does not change it", () => {
    const base = hashOf(group());
    assert.equal(hashOf(group({ storage: { size: "20Gi", storageClassName: "fast" } })), base);
  });

  it("the image, resources, hold count and pod template change it", () => {
    const base = hashOf(group());
    for (const changed of [
      group({ image: "paxos-node:0.2.0" }),
      group({ resources: { limits: { memory: "1Gi" } } }),
      group({ logCleaner: { holdCount: 500 } }),
      group({ podTemplate: { annotations: { a: "b" } } }),
    ]) {
      assert.notEqual(hashOf(changed), base, JSON.stringify(changed.spec));
    }
  });
});

describe("quantityToBytes", () => {
  const table: [string | number, number][] = [
    ["5Gi", 5368709120],
    ["500Mi", 524288000],
    ["1G", 1000000000],
    ["1Ki", 1024],
    ["1k", 1000],
    ["1.5Gi", 1610612736],
    ["0.5M", 500000],
    [".5Ki", 512],
    ["1e9", 1000000000],
    ["2E3", 2000],
    ["1P", 1e15],
    ["1Ti", 1099511627776],
    ["100m", 1], // a fraction of a byte rounds up, like the API server's Value()
    ["1500m", 2],
    ["0", 0],
    ["  42 ", 42],
    [1048576, 1048576],
  ];
  for (const [q, want] of table) {
    it(`${JSON.stringify(q)} -> ${want}`, () => assert.equal(quantityToBytes(q), want));
  }
  for (const bad of ["", "5GB", "-1Gi", "Gi", "1.2.3", "1e", "abc", "1 Gi", "1e400", "8Ei"]) {
    it(`refuses ${JSON.stringify(bad)}`, () => {
      assert.throws(() => quantityToBytes(bad, "spec.x"), /^Error: spec\.x: /);
    });
  }
});

describe("determinism", () => {
  const g = group({
    replicas: 5,
    logCleaner: { holdCount: 300, maxLogSize: "1G" },
    podTemplate: { labels: { z: "1", a: "2" }, annotations: { y: "1", b: "2" } },
  });
  it("same input gives deep-equal objects with the same JSON text", () => {
    const a = all(g);
    const b = all(structuredClone(g));
    assert.deepEqual(a, b);
    assert.equal(JSON.stringify(a), JSON.stringify(b));
  });
  it("key order of the input does not matter", () => {
    const shuffled = group({
      podTemplate: { annotations: { b: "2", y: "1" }, labels: { a: "2", z: "1" } },
      logCleaner: { maxLogSize: "1G", holdCount: 300 },
      replicas: 5,
    });
    assert.equal(JSON.stringify(all(shuffled)), JSON.stringify(all(g)));
  });
  it("voter order does not matter", () => {
    const a = sts(g, ["kv-2", "kv-0", "kv-1"]);
    const b = sts(g, ["kv-1", "kv-2", "kv-0"]);
    assert.equal(JSON.stringify(a), JSON.stringify(b));
  });
  it("does not depend on metadata.generation and has no timestamps or undefined members", () => {
    const later = structuredClone(g);
    later.metadata.generation = 99;
    assert.equal(JSON.stringify(all(later)), JSON.stringify(all(g)));
    const text = JSON.stringify(all(g));
    assert.doesNotMatch(text, /creationTimestamp|resourceVersion|generation/);
    const hasUndefined = (v: unknown): boolean =>
      v === undefined ||
      (typeof v === "object" && v !== null && Object.values(v).some((x) => hasUndefined(x)));
    assert.equal(hasUndefined(all(g)), false);
  });
  it("does not mutate its input", () => {
    const before = structuredClone(g);
    all(g);
    assert.deepEqual(g, before);
  });
});
