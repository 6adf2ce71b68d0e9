// The `kind` provider: e2e/kind/up.sh makes (or reuses) a kind cluster with the images loaded and
// the chart installed; the scenarios then see it only through its kubeconfig.
import { spawn } from "node:child_process";
import path from "node:path";
import { REPO_ROOT } from "../cluster/binaries.js";
import { KubeClient } from "../cluster/kube.js";
import type { ClusterHandle } from "./types.js";

function script(name: string, env: NodeJS.ProcessEnv, args: string[] = []): Promise<void> {
  const file = path.join(REPO_ROOT, "e2e", "kind", name);
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [file, ...args], { stdio: "inherit", env });
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${file} exited with ${code}`))));
  });
}

export interface KindOptions {
  clusterName?: string;
  imageTag?: string;
  /** Delete the cluster in stop() (default false: keep it for the next run). */
  deleteOnStop?: boolean;
}

export class KindCluster implements ClusterHandle {
  readonly provider = "kind" as const;
  readonly images: ClusterHandle["images"];

  private constructor(
    readonly kubeconfig: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly opts: KindOptions,
    tag: string,
  ) {
    this.images = {
      testServer: `e2e-testserver:${tag}`,
      node: `paxos-node:${tag}`,
      operator: `paxos-operator:${tag}`,
    };
  }

  static async start(opts: KindOptions = {}): Promise<KindCluster> {
    const name = opts.clusterName ?? "paxos-e2e";
    const tag = opts.imageTag ?? "dev";
    const env = { ...process.env, KIND_CLUSTER: name, IMAGE_TAG: tag };
    const kubeconfig = path.join(REPO_ROOT, ".cache", "kind", `${name}.kubeconfig`);
    await script("up.sh", env, ["--kubeconfig", kubeconfig]);
    return new KindCluster(kubeconfig, env, opts, tag);
  }

  async containerLog(namespace: string, pod: string, container: string): Promise<string> {
    const client = await KubeClient.fromKubeconfig(this.kubeconfig);
    try {
      return await client.requestText("GET", `/api/v1/namespaces/${namespace}/pods/${pod}/log`, {
        query: { container },
      });
    } finally {
      client.close();
    }
  }

  async stop(): Promise<void> {
    if (this.opts.deleteOnStop) await script("down.sh", this.env);
  }
}
