// Turns a pod's spec into what a local process needs: environment variables and volume folders,
// reading Secrets, ConfigMaps, PVCs and service-account tokens from the API server.
import { chmod, mkdir, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import type {
  V1Container,
  V1EnvVar,
  V1KeyToPath,
  V1ObjectFieldSelector,
  V1Volume,
  V1VolumeProjection,
} from "@kubernetes/client-node";
import { isNotFound, type KubeClient, type KubeObject } from "../cluster/kube.js";

/** A problem that keeps a container from starting until the cluster changes (kubelet's CreateContainerConfigError). */
export class ConfigError extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export interface PodFacts {
  pod: KubeObject;
  podIP: string;
  hostIP: string;
}

export function fieldRefValue(ref: V1ObjectFieldSelector, f: PodFacts): string {
  const m = f.pod.metadata;
  const p = ref.fieldPath;
  const mapKey = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(p);
  if (mapKey) return (mapKey[1] === "labels" ? m.labels : m.annotations)?.[mapKey[2] ?? ""] ?? "";
  switch (p) {
    case "metadata.name":
      return m.name ?? "";
    case "metadata.namespace":
      return m.namespace ?? "";
    case "metadata.uid":
      return m.uid ?? "";
    case "spec.nodeName":
      return f.pod.spec?.nodeName ?? "";
    case "spec.serviceAccountName":
      return f.pod.spec?.serviceAccountName ?? "";
    case "status.podIP":
    case "status.podIPs":
      return f.podIP;
    case "status.hostIP":
    case "status.hostIPs":
      return f.hostIP;
    default:
      throw new ConfigError(
        "CreateContainerConfigError",
        `fieldRef ${p} is not supported by the local pod runner`,
      );
  }
}

async function getData(
  client: KubeClient,
  kind: "secrets" | "configmaps",
  namespace: string,
  name: string,
): Promise<Record<string, Buffer> | undefined> {
  try {
    const o = await client.get(`/api/v1/namespaces/${namespace}/${kind}/${encodeURIComponent(name)}`);
    const out: Record<string, Buffer> = {};
    if (kind === "secrets") {
      for (const [k, v] of Object.entries((o.data ?? {}) as Record<string, string>))
        out[k] = Buffer.from(v, "base64");
    } else {
      for (const [k, v] of Object.entries((o.data ?? {}) as Record<string, string>))
        out[k] = Buffer.from(v, "utf8");
      for (const [k, v] of Object.entries((o.binaryData ?? {}) as Record<string, string>)) {
        out[k] = Buffer.from(v, "base64");
      }
    }
    return out;
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}

/** Kubernetes' $(VAR) expansion: known names are replaced, `$$` escapes, unknown references stay. */
export function expand(s: string, env: Record<string, string>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (all, name: string | undefined) =>
    name === undefined ? "$" : (env[name] ?? all),
  );
}

export async function containerEnv(
  client: KubeClient,
  c: V1Container,
  f: PodFacts,
  base: Record<string, string>,
): Promise<Record<string, string>> {
  const ns = f.pod.metadata.namespace ?? "default";
  const env: Record<string, string> = { ...base };
  for (const from of c.envFrom ?? []) {
    const ref = from.configMapRef ?? from.secretRef;
    if (!ref?.name) continue;
    const data = await getData(client, from.secretRef ? "secrets" : "configmaps", ns, ref.name);
    if (!data) {
      if (ref.optional) continue;
      throw new ConfigError(
        "CreateContainerConfigError",
        `${from.secretRef ? "secret" : "configmap"} "${ref.name}" not found`,
      );
    }
    for (const [k, v] of Object.entries(data)) env[`${from.prefix ?? ""}${k}`] = v.toString("utf8");
  }
  for (const e of c.env ?? []) env[e.name] = await envValue(client, e, c, f, env, ns);
  return env;
}

async function envValue(
  client: KubeClient,
  e: V1EnvVar,
  self: V1Container,
  f: PodFacts,
  env: Record<string, string>,
  ns: string,
): Promise<string> {
  if (e.value !== undefined) return expand(e.value, env);
  const from = e.valueFrom;
  if (!from) return "";
  if (from.fieldRef) return fieldRefValue(from.fieldRef, f);
  const keyRef = from.secretKeyRef ?? from.configMapKeyRef;
  if (keyRef) {
    const kind = from.secretKeyRef ? "secrets" : "configmaps";
    const data = await getData(client, kind, ns, keyRef.name ?? "");
    const value = data?.[keyRef.key];
    if (value === undefined) {
      if (keyRef.optional) return "";
      throw new ConfigError(
        "CreateContainerConfigError",
        data
          ? `couldn't find key ${keyRef.key} in ${kind === "secrets" ? "Secret" : "ConfigMap"} ${ns}/${keyRef.name}`
          : `${kind === "secrets" ? "secret" : "configmap"} "${keyRef.name}" not found`,
      );
    }
    return value.toString("utf8");
  }
  if (from.resourceFieldRef) {
    const r = from.resourceFieldRef;
    const [kind, res] = r.resource.split(".") as [string, string];
    // In env, an empty containerName means this container.
    const all = (f.pod.spec?.containers ?? []) as V1Container[];
    const container = r.containerName ? all.find((x) => x.name === r.containerName) : self;
    const q = (kind === "limits" ? container?.resources?.limits : container?.resources?.requests)?.[res];
    if (q !== undefined) return String(q);
    // Like the kubelet, an unset limit reads as the node's allocatable amount.
    return res === "cpu" ? "2" : "34359738368";
  }
  throw new ConfigError("CreateContainerConfigError", `env ${e.name}: unsupported valueFrom`);
}

async function writeItems(
  dir: string,
  data: Record<string, Buffer>,
  items: V1KeyToPath[] | undefined,
  mode: number,
  what: string,
): Promise<void> {
  const entries: [string, Buffer, number][] = [];
  if (items?.length) {
    for (const it of items) {
      const v = data[it.key];
      if (v === undefined) throw new ConfigError("FailedMount", `${what}: no key ${it.key}`);
      entries.push([it.path, v, it.mode ?? mode]);
    }
  } else {
    for (const [k, v] of Object.entries(data)) entries.push([k, v, mode]);
  }
  for (const [rel, v, m] of entries) {
    const file = path.join(dir, rel);
    if (!file.startsWith(dir + path.sep))
      throw new ConfigError("FailedMount", `${what}: path ${rel} leaves the volume`);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, v);
    await chmod(file, m);
  }
}

export interface TokenFile {
  file: string;
  audience: string | undefined;
  expirationSeconds: number;
  /** ms since epoch when it should be fetched again */
  refreshAt: number;
}

export async function writeToken(client: KubeClient, f: PodFacts, t: TokenFile): Promise<void> {
  const m = f.pod.metadata;
  const sa = f.pod.spec?.serviceAccountName || "default";
  const res = await client.create<{ status: { token: string } }>(
    `/api/v1/namespaces/${m.namespace}/serviceaccounts/${encodeURIComponent(sa)}/token`,
    {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenRequest",
      spec: {
        audiences: t.audience ? [t.audience] : [],
        expirationSeconds: t.expirationSeconds,
        boundObjectRef: { apiVersion: "v1", kind: "Pod", name: m.name, uid: m.uid },
      },
    },
  );
  // The volume is bind-mounted as a folder, so a rename inside it is seen by the container.
  await writeFile(`${t.file}.tmp`, res.status.token, { mode: 0o644 });
  await rename(`${t.file}.tmp`, t.file);
  t.refreshAt = Date.now() + t.expirationSeconds * 800;
}

export interface PreparedVolume {
  /** Host folder or file backing the volume. */
  source: string;
  isFile: boolean;
  readOnly: boolean;
}

/**
 * Makes every volume of the pod available as a host folder: PVC -> the bound PV's host path,
 * Secret/ConfigMap/projected/downwardAPI -> files written under `dir`, emptyDir -> a folder.
 * Throws ConfigError while something it needs does not exist yet (e.g. the PVC is not bound).
 */
export async function prepareVolumes(
  client: KubeClient,
  f: PodFacts,
  dir: string,
  tokens: TokenFile[],
): Promise<Map<string, PreparedVolume>> {
  const ns = f.pod.metadata.namespace ?? "default";
  const out = new Map<string, PreparedVolume>();
  for (const v of (f.pod.spec?.volumes ?? []) as V1Volume[]) {
    const vdir = path.join(dir, v.name);
    if (v.persistentVolumeClaim) {
      const claim = v.persistentVolumeClaim.claimName;
      const pvc = await client.getOrNull(
        `/api/v1/namespaces/${ns}/persistentvolumeclaims/${encodeURIComponent(claim)}`,
      );
      if (!pvc) throw new ConfigError("FailedMount", `persistentvolumeclaim "${claim}" not found`);
      if (pvc.status?.phase !== "Bound" || !pvc.spec?.volumeName) {
        throw new ConfigError("FailedMount", `persistentvolumeclaim "${claim}" is not bound yet`);
      }
      const pv = await client.get(`/api/v1/persistentvolumes/${encodeURIComponent(pvc.spec.volumeName)}`);
      const hostPath: string | undefined = pv.spec?.hostPath?.path ?? pv.spec?.local?.path;
      if (!hostPath) {
        throw new ConfigError(
          "FailedMount",
          `persistentvolume ${pv.metadata.name} is neither hostPath nor local; the local pod runner cannot mount it`,
        );
      }
      await mkdir(hostPath, { recursive: true });
      out.set(v.name, {
        source: hostPath,
        isFile: false,
        readOnly: v.persistentVolumeClaim.readOnly ?? false,
      });
    } else if (v.emptyDir) {
      await mkdir(vdir, { recursive: true });
      out.set(v.name, { source: vdir, isFile: false, readOnly: false });
    } else if (v.hostPath) {
      if (v.hostPath.type === "DirectoryOrCreate") await mkdir(v.hostPath.path, { recursive: true });
      out.set(v.name, { source: v.hostPath.path, isFile: v.hostPath.type === "File", readOnly: false });
    } else if (v.secret || v.configMap) {
      const isSecret = v.secret !== undefined;
      const name = (isSecret ? v.secret?.secretName : v.configMap?.name) ?? "";
      const data = await getData(client, isSecret ? "secrets" : "configmaps", ns, name);
      await rm(vdir, { recursive: true, force: true });
      await mkdir(vdir, { recursive: true });
      if (!data) {
        if (!(isSecret ? v.secret?.optional : v.configMap?.optional)) {
          throw new ConfigError("FailedMount", `${isSecret ? "secret" : "configmap"} "${name}" not found`);
        }
      } else {
        const mode = (isSecret ? v.secret?.defaultMode : v.configMap?.defaultMode) ?? 0o644;
        await writeItems(
          vdir,
          data,
          isSecret ? v.secret?.items : v.configMap?.items,
          mode,
          `volume ${v.name}`,
        );
      }
      out.set(v.name, { source: vdir, isFile: false, readOnly: true });
    } else if (v.projected || v.downwardAPI) {
      await rm(vdir, { recursive: true, force: true });
      await mkdir(vdir, { recursive: true });
      const mode = (v.projected ? v.projected.defaultMode : v.downwardAPI?.defaultMode) ?? 0o644;
      const sources: V1VolumeProjection[] = v.projected?.sources ?? [
        { downwardAPI: { items: v.downwardAPI?.items } },
      ];
      for (const s of sources) {
        if (s.serviceAccountToken) {
          const t: TokenFile = {
            file: path.join(vdir, s.serviceAccountToken.path),
            audience: s.serviceAccountToken.audience,
            expirationSeconds: s.serviceAccountToken.expirationSeconds ?? 3600,
            refreshAt: 0,
          };
          await writeToken(client, f, t);
          tokens.push(t);
        } else if (s.configMap || s.secret) {
          const ref = s.configMap ?? s.secret;
          const data = await getData(client, s.secret ? "secrets" : "configmaps", ns, ref?.name ?? "");
          if (!data) {
            if (ref?.optional) continue;
            throw new ConfigError(
              "FailedMount",
              `${s.secret ? "secret" : "configmap"} "${ref?.name}" not found`,
            );
          }
          await writeItems(vdir, data, ref?.items, mode, `volume ${v.name}`);
        } else if (s.downwardAPI) {
          for (const it of s.downwardAPI.items ?? []) {
            if (!it.fieldRef) {
              throw new ConfigError("FailedMount", `volume ${v.name}: only fieldRef items are supported`);
            }
            await writeItems(
              vdir,
              { x: Buffer.from(fieldRefValue(it.fieldRef, f)) },
              [{ key: "x", path: it.path }],
              it.mode ?? mode,
              `volume ${v.name}`,
            );
          }
        } else {
          throw new ConfigError(
            "FailedMount",
            `volume ${v.name}: projected source not supported by the local pod runner`,
          );
        }
      }
      out.set(v.name, { source: vdir, isFile: false, readOnly: true });
    } else {
      throw new ConfigError(
        "FailedMount",
        `volume ${v.name}: this volume type is not supported by the local pod runner`,
      );
    }
  }
  return out;
}
