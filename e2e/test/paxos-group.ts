// Driving a PaxosGroup in the Kubernetes tests: the cluster's kubectl and helm, the group's status
// and conditions, its members' HTTP API through the API server's pod proxy, admin calls from a
// short-lived pod inside the cluster, and the chart installed with the operator running in a pod.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { NodeStatus } from "../../node/src/server/service.js";
import type { Condition, PaxosGroup } from "../../operator/src/api/paxos-group.js";
import { REPO_ROOT } from "../cluster/binaries.js";
import { type KubeClient, type KubeObject, sleep, waitFor } from "../cluster/kube.js";
import type { LocalCluster } from "../providers/local.js";
import { log } from "./helpers.js";

export type { NodeStatus };

const run = promisify(execFile);

const CRD_FILE = path.join(REPO_ROOT, "crds", "paxosgroup.yaml");
const CHART = path.join(REPO_ROOT, "charts", "paxos-operator");
/** The field manager the operator applies and updates with. */
const OPERATOR_MANAGER = "paxos-operator";
/** The members' HTTP port (client API, admin API, probes). */
const HTTP_PORT = 8080;

async function tool(cluster: LocalCluster, bin: string, args: string[]): Promise<string> {
  try {
    return (await run(path.join(cluster.controlPlane.binDir, bin), args, { maxBuffer: 16 << 20 })).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${bin} ${args.join(" ")}: ${err.stderr?.trim() || err.message}`);
  }
}

export function kubectl(cluster: LocalCluster, ...args: string[]): Promise<string> {
  return tool(cluster, "kubectl", ["--kubeconfig", cluster.kubeconfig, ...args]);
}

export function helm(cluster: LocalCluster, ...args: string[]): Promise<string> {
  return tool(cluster, "helm", ["--kubeconfig", cluster.kubeconfig, ...args]);
}

/** Applies the CRD and waits until the API server serves it. */
export async function installCrd(cluster: LocalCluster): Promise<void> {
  await kubectl(cluster, "apply", "--server-side", "-f", CRD_FILE);
  await kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s", "crd/paxosgroups.paxos.dev");
}

/** A namespace whose pods must meet the restricted Pod Security Standard, as a careful cluster has it. */
export async function restrictedNamespace(client: KubeClient, name: string): Promise<void> {
  await client.create("/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: {
      name,
      labels: {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
      },
    },
  });
}

export interface InstalledOperator {
  /** Output of the operator's current pods, oldest first, for failure messages. */
  logs(): Promise<string>;
  /** The pods of the Deployment that are not being deleted. */
  pods(): Promise<KubeObject[]>;
}

/**
 * `helm install`s charts/paxos-operator into `namespace` with the cluster's images and waits until
 * its Deployment is Available. The local provider has no network namespaces, so the operator's
 * metrics server listens on its pod IP (METRICS_HOST) rather than on every interface, where two
 * operator pods (or another cluster's on this machine) would collide on port 9090.
 */
export async function installOperator(
  cluster: LocalCluster,
  client: KubeClient,
  opts: { namespace: string; release?: string; tmpDir: string },
): Promise<InstalledOperator> {
  const release = opts.release ?? "paxos-operator";
  const [opRepo, opTag] = splitImage(cluster.images.operator);
  const [nodeRepo, nodeTag] = splitImage(cluster.images.node);
  const values = path.join(opts.tmpDir, `${release}-values.json`);
  await writeFile(
    values,
    JSON.stringify({
      image: { repository: opRepo, tag: opTag },
      nodeImage: { repository: nodeRepo, tag: nodeTag },
      extraEnv: [
        { name: "METRICS_HOST", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
        { name: "LOG_LEVEL", value: "debug" },
      ],
    }),
  );
  await restrictedNamespace(client, opts.namespace);
  const out = await helm(cluster, "install", release, CHART, "--namespace", opts.namespace, "-f", values);
  log(out);
  const selector = `app.kubernetes.io/instance=${release},app.kubernetes.io/name=paxos-operator`;
  const podsPath = `/api/v1/namespaces/${opts.namespace}/pods`;
  const installed: InstalledOperator = {
    async logs() {
      const all = (await client.list(podsPath, { labelSelector: selector })).items.sort((a, b) =>
        (a.metadata.creationTimestamp ?? "").localeCompare(b.metadata.creationTimestamp ?? ""),
      );
      const texts = await Promise.all(
        all.map((p) =>
          cluster
            .containerLog(opts.namespace, p.metadata.name ?? "", "operator")
            .then((t) => `--- ${p.metadata.name} ---\n${t}`)
            .catch(() => ""),
        ),
      );
      return texts.join("\n");
    },
    async pods() {
      const all = (await client.list(podsPath, { labelSelector: selector })).items;
      return all.filter((p) => !p.metadata.deletionTimestamp);
    },
  };
  try {
    await kubectl(
      cluster,
      "wait",
      "--namespace",
      opts.namespace,
      "--for=condition=Available",
      "--timeout=180s",
      `deployment/${release}`,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}\noperator log:\n${tail(await installed.logs())}`);
  }
  return installed;
}

function splitImage(image: string): [string, string] {
  const colon = image.lastIndexOf(":");
  if (colon < 0 || image.lastIndexOf("/") > colon) return [image, ""];
  return [image.slice(0, colon), image.slice(colon + 1)];
}

/**
 * Deletes the pod `name` of a namespace whose pods number `running`, and keeps the StatefulSet
 * controller from recreating it, as a node gone with its volume would: a quota the others already
 * exhaust. Scoped to NotTerminating pods, so admin pods (activeDeadlineSeconds) still run.
 * Resolves once the pod is gone, to a function that lets it come back.
 */
export async function holdPodDown(
  client: KubeClient,
  namespace: string,
  name: string,
  running: number,
): Promise<() => Promise<void>> {
  const quotas = `/api/v1/namespaces/${namespace}/resourcequotas`;
  const quota = `${quotas}/hold-a-member-down`;
  const allowed = String(running - 1);
  await client.create(quotas, {
    apiVersion: "v1",
    kind: "ResourceQuota",
    metadata: { name: "hold-a-member-down", namespace },
    spec: { hard: { pods: allowed }, scopes: ["NotTerminating"] },
  });
  // Admission enforces a quota only once the quota controller has computed its usage.
  await waitFor("the quota controller to compute the quota's usage", async () => {
    const q = await client.get(quota);
    return q.status?.hard?.pods === allowed && q.status?.used?.pods === String(running);
  });
  const pod = `/api/v1/namespaces/${namespace}/pods/${name}`;
  await client.delete(pod);
  await waitFor(`${name}'s pod to be gone`, async () => (await client.getOrNull(pod)) === null);
  return async () => {
    await client.delete(quota);
  };
}

export function tail(text: string, chars = 6000): string {
  return text.length > chars ? `...${text.slice(-chars)}` : text;
}

/** A condition of the group's status by type. */
export function condition(group: KubeObject, type: string): Condition | undefined {
  return (group as PaxosGroup).status?.conditions?.find((c) => c.type === type);
}

export function groupManifest(namespace: string, name: string, spec: Record<string, unknown>): KubeObject {
  return { apiVersion: "paxos.dev/v1alpha1", kind: "PaxosGroup", metadata: { name, namespace }, spec };
}

export interface AdminCall {
  member: string;
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Starting with /v1/admin/. */
  path: string;
  body?: unknown;
}

export interface AdminAnswer {
  status: number;
  body: string;
}

/** One PaxosGroup and its members, seen through the API server. */
export class GroupDriver {
  readonly path: string;

  constructor(
    readonly client: KubeClient,
    readonly namespace: string,
    readonly name: string,
    /** Text added to the message of a failed wait: the operator's log, say. */
    private readonly diagnostics: () => Promise<string> = async () => "",
  ) {
    this.path = `/apis/paxos.dev/v1alpha1/namespaces/${namespace}/paxosgroups/${name}`;
  }

  member(ordinal: number): string {
    return `${this.name}-${ordinal}`;
  }

  podPath(pod: string): string {
    return `/api/v1/namespaces/${this.namespace}/pods/${pod}`;
  }

  /** The API server's proxy to a member pod's HTTP port. */
  proxyPath(pod: string, rest: string): string {
    return `/api/v1/namespaces/${this.namespace}/pods/${pod}:${HTTP_PORT}/proxy${rest}`;
  }

  read(): Promise<KubeObject> {
    return this.client.get(this.path);
  }

  /** Creates or updates the group (server-side apply as the test's field manager). */
  apply(spec: Record<string, unknown>): Promise<KubeObject> {
    return this.client.apply(groupManifest(this.namespace, this.name, spec), "e2e");
  }

  /** Polls the group until `check` returns a value; fails with the status and the diagnostics. */
  async waitFor<T>(
    what: string,
    check: (g: KubeObject) => T | undefined | false | Promise<T | undefined | false>,
    timeoutMs = 240_000,
  ): Promise<T> {
    try {
      return await waitFor(what, async () => check(await this.read()), timeoutMs, 1000);
    } catch (e) {
      const g = await this.read().catch(() => undefined);
      throw new Error(
        `${(e as Error).message}\nstatus: ${JSON.stringify(g?.status)}\n${tail(await this.diagnostics().catch(() => ""))}`,
      );
    }
  }

  /** Available with `replicas` ready members and an agreed master, the status of this generation. */
  waitAvailable(what: string, replicas = 3, timeoutMs = 240_000): Promise<KubeObject> {
    return this.waitFor(
      what,
      (g) =>
        condition(g, "Available")?.status === "True" &&
        g.status?.readyReplicas === replicas &&
        g.status?.master &&
        g.status?.observedGeneration === g.metadata.generation &&
        g,
      timeoutMs,
    );
  }

  /** PUT through the pod proxy, retried while the group elects a master (503/504): the chosen instance. */
  async put(pod: string, key: string, value: string, timeoutMs = 60_000): Promise<number> {
    const text = await waitFor(
      `PUT ${key} via ${pod}`,
      () =>
        this.client.requestText("PUT", this.proxyPath(pod, `/v1/kv/${encodeURIComponent(key)}`), {
          body: value,
          contentType: "application/octet-stream",
        }),
      timeoutMs,
      1000,
    );
    return (JSON.parse(text) as { instance: number }).instance;
  }

  /**
   * Writes every entry, `concurrency` at a time, spread over `pods` (non-masters forward to the
   * master). Each write is retried on its own, so one slow answer does not fail the batch.
   */
  async putAll(
    pods: readonly string[],
    entries: readonly [string, string][],
    concurrency = 8,
  ): Promise<void> {
    let next = 0;
    const worker = async (w: number) => {
      for (let i = next++; i < entries.length; i = next++) {
        const [key, value] = entries[i] as [string, string];
        await this.put(pods[(i + w) % pods.length] as string, key, value);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
  }

  /** GET through the pod proxy (linearizable, or the member's local state), retried until it answers. */
  get(pod: string, key: string, opts: { local?: boolean; timeoutMs?: number } = {}): Promise<string> {
    return waitFor(
      `GET ${key} via ${pod}`,
      () =>
        this.client.requestText("GET", this.proxyPath(pod, `/v1/kv/${encodeURIComponent(key)}`), {
          ...(opts.local ? { query: { consistency: "local" } } : {}),
        }),
      opts.timeoutMs ?? 60_000,
      1000,
    );
  }

  async nodeStatus(pod: string): Promise<NodeStatus> {
    return JSON.parse(await this.client.requestText("GET", this.proxyPath(pod, "/v1/status"))) as NodeStatus;
  }

  /** The peer and admin token from the group's Secret. */
  async token(): Promise<string> {
    const secret = await this.client.get(`/api/v1/namespaces/${this.namespace}/secrets/${this.name}-token`);
    return Buffer.from(secret.data.token as string, "base64").toString("utf8");
  }

  /**
   * Admin calls to members, made by a short-lived pod in the group's namespace. Not through the pod
   * proxy: the API server deletes the Authorization header of every request it authenticated (its
   * authentication filter, k8s.io/apiserver), so the member's bearer token never reaches the pod.
   * The pod reads the token from the group's Secret, calls each member by its DNS name under the
   * headless Service and writes the answers to its termination message. activeDeadlineSeconds
   * bounds it, and keeps it out of a ResourceQuota scoped to NotTerminating pods.
   */
  async admin(image: string, calls: readonly AdminCall[]): Promise<AdminAnswer[]> {
    const name = `${this.name}-admin-${randomBytes(3).toString("hex")}`;
    const targets = calls.map((c) => ({
      url: `http://${c.member}.${this.name}-peers.${this.namespace}.svc.cluster.local:${HTTP_PORT}${c.path}`,
      method: c.method,
      ...(c.body !== undefined ? { body: JSON.stringify(c.body) } : {}),
    }));
    // Answers are cut short: a termination message holds at most 4096 bytes.
    const script = `
import { writeFileSync } from "node:fs";
const out = [];
for (const c of JSON.parse(process.env.ADMIN_CALLS)) {
  try {
    const res = await fetch(c.url, {
      method: c.method,
      headers: { authorization: "Bearer " + process.env.ADMIN_TOKEN, "content-type": "application/json" },
      body: c.body,
      signal: AbortSignal.timeout(60000),
    });
    out.push({ status: res.status, body: (await res.text()).slice(0, 400) });
  } catch (e) {
    out.push({ status: 0, body: String(e).slice(0, 400) });
  }
}
writeFileSync("/dev/termination-log", JSON.stringify(out));
`;
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name, namespace: this.namespace, labels: { "app.kubernetes.io/name": "e2e-admin" } },
      spec: {
        restartPolicy: "Never",
        activeDeadlineSeconds: 180,
        automountServiceAccountToken: false,
        enableServiceLinks: false,
        securityContext: {
          runAsNonRoot: true,
          runAsUser: 10001,
          runAsGroup: 10001,
          seccompProfile: { type: "RuntimeDefault" },
        },
        containers: [
          {
            name: "admin",
            image,
            command: ["node", "--input-type=module", "-e", script],
            env: [
              { name: "ADMIN_CALLS", value: JSON.stringify(targets) },
              {
                name: "ADMIN_TOKEN",
                valueFrom: { secretKeyRef: { name: `${this.name}-token`, key: "token" } },
              },
            ],
            resources: { requests: { cpu: "10m", memory: "32Mi" }, limits: { memory: "128Mi" } },
            terminationMessagePolicy: "FallbackToLogsOnError",
            securityContext: {
              allowPrivilegeEscalation: false,
              readOnlyRootFilesystem: true,
              capabilities: { drop: ["ALL"] },
            },
          },
        ],
      },
    };
    const podsPath = `/api/v1/namespaces/${this.namespace}/pods`;
    await this.client.create(podsPath, pod);
    try {
      const done = await waitFor(
        `admin pod ${name} to finish`,
        async () => {
          const p = await this.client.get(`${podsPath}/${name}`);
          const phase = p.status?.phase;
          return phase === "Succeeded" || phase === "Failed" ? p : undefined;
        },
        180_000,
        1000,
      );
      const terminated = done.status?.containerStatuses?.[0]?.state?.terminated;
      const message: string = terminated?.message ?? "";
      if (terminated?.exitCode !== 0) {
        throw new Error(`admin pod ${name} failed with exit code ${terminated?.exitCode}: ${message}`);
      }
      return JSON.parse(message) as AdminAnswer[];
    } finally {
      await this.client.delete(`${podsPath}/${name}`, { gracePeriodSeconds: 0 });
    }
  }

  /**
   * What the operator wrote to each object: its field manager's entries (the main resource, not
   * status), which change (time included) only when an apply or update of the operator changed
   * something. Missing objects show as null.
   */
  async operatorFields(paths: readonly string[]): Promise<string[]> {
    return Promise.all(
      paths.map(async (p) => {
        const o = await this.client.getOrNull(p);
        if (!o) return "null";
        return JSON.stringify(
          (o.metadata.managedFields ?? []).filter(
            (f) => f.manager === OPERATOR_MANAGER && f.subresource === undefined,
          ),
        );
      }),
    );
  }

  async resourceVersions(paths: readonly string[]): Promise<(string | undefined)[]> {
    return Promise.all(paths.map(async (p) => (await this.client.getOrNull(p))?.metadata.resourceVersion));
  }

  /** The paths of the objects the operator creates for the group, by kind. */
  objectPaths(): {
    statefulSet: string;
    clientService: string;
    peerService: string;
    secret: string;
    pdb: string;
  } {
    const ns = this.namespace;
    return {
      statefulSet: `/apis/apps/v1/namespaces/${ns}/statefulsets/${this.name}`,
      clientService: `/api/v1/namespaces/${ns}/services/${this.name}`,
      peerService: `/api/v1/namespaces/${ns}/services/${this.name}-peers`,
      secret: `/api/v1/namespaces/${ns}/secrets/${this.name}-token`,
      pdb: `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${this.name}`,
    };
  }

  /**
   * Waits until `snapshot` (what the operator wrote, say) gives the same answer twice `quietMs`
   * apart, and returns that answer.
   */
  async waitQuiet<T>(
    what: string,
    snapshot: () => Promise<T>,
    quietMs = 5000,
    timeoutMs = 120_000,
  ): Promise<T> {
    let last = JSON.stringify(await snapshot());
    const text = await this.waitFor(
      what,
      async () => {
        await sleep(quietMs);
        const now = JSON.stringify(await snapshot());
        const same = now === last;
        last = now;
        return same ? now : undefined;
      },
      timeoutMs,
    );
    return JSON.parse(text) as T;
  }

  /** Deletes the group (its objects go with it through owner references) and waits until its pods are gone. */
  async delete(timeoutMs = 120_000): Promise<void> {
    await this.client.delete(this.path);
    const selector = `app.kubernetes.io/instance=${this.name},app.kubernetes.io/name=paxos-node`;
    await waitFor(
      `the pods of ${this.name} to be gone`,
      async () =>
        (await this.client.list(`/api/v1/namespaces/${this.namespace}/pods`, { labelSelector: selector }))
          .items.length === 0,
      timeoutMs,
      1000,
    );
  }

  /** Events about the group with the given reason. */
  async events(reason: string): Promise<KubeObject[]> {
    const list = await this.client.list(`/api/v1/namespaces/${this.namespace}/events`, {
      fieldSelector: `involvedObject.name=${this.name},reason=${reason}`,
    });
    return list.items;
  }
}
