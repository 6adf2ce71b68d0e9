// Cluster DNS for local pods, as a per-pod /etc/hosts: the records CoreDNS would serve for pods
// under headless Services (`<host>.<svc>.<ns>.svc.cluster.local` and its shorter forms, and the
// Service name itself -> its endpoints), plus the pod's own name.
import type { KubeObject } from "../cluster/kube.js";

export const CLUSTER_DOMAIN = "cluster.local";

function podReady(p: KubeObject): boolean {
  return (p.status?.conditions ?? []).some(
    (c: { type: string; status: string }) => c.type === "Ready" && c.status === "True",
  );
}

function selects(
  selector: Record<string, string> | undefined,
  labels: Record<string, string> | undefined,
): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

interface Record_ {
  ip: string;
  /** name relative to the namespace, e.g. "kv-0.kv" or "kv" */
  rel: string;
  namespace: string;
}

/** All DNS records of headless Services, computed once per update from the watched objects. */
export function clusterRecords(pods: KubeObject[], services: KubeObject[]): Record_[] {
  const out: Record_[] = [];
  for (const svc of services) {
    if (svc.spec?.clusterIP !== "None") continue;
    const ns = svc.metadata.namespace ?? "default";
    const name = svc.metadata.name ?? "";
    const publishNotReady = svc.spec?.publishNotReadyAddresses === true;
    for (const p of pods) {
      if (p.metadata.namespace !== ns || !p.status?.podIP || p.metadata.deletionTimestamp) continue;
      if (!selects(svc.spec?.selector, p.metadata.labels)) continue;
      if (!publishNotReady && !podReady(p)) continue;
      out.push({ ip: p.status.podIP, rel: name, namespace: ns });
      if (p.spec?.hostname && p.spec?.subdomain === name) {
        out.push({ ip: p.status.podIP, rel: `${p.spec.hostname}.${name}`, namespace: ns });
      }
    }
  }
  return out;
}

/** The hosts file of one pod: its own names, then every record in the forms a search path would allow. */
export function hostsFileFor(pod: KubeObject, podIP: string, records: Record_[]): string {
  const ns = pod.metadata.namespace ?? "default";
  const hostname = pod.spec?.hostname || pod.metadata.name || "";
  const lines = [
    "# Kubernetes-managed hosts file (local pod runner).",
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
  ];
  const own = pod.spec?.subdomain
    ? [`${hostname}.${pod.spec.subdomain}.${ns}.svc.${CLUSTER_DOMAIN}`, hostname]
    : [hostname];
  lines.push(`${podIP}\t${own.join(" ")}`);
  for (const r of records) {
    const names = [
      `${r.rel}.${r.namespace}.svc.${CLUSTER_DOMAIN}`,
      `${r.rel}.${r.namespace}.svc`,
      `${r.rel}.${r.namespace}`,
    ];
    if (r.namespace === ns) names.push(r.rel);
    lines.push(`${r.ip}\t${names.join(" ")}`);
  }
  return `${lines.join("\n")}\n`;
}
