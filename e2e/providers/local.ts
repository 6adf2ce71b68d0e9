// The `local` provider: a control plane built from Go modules plus the pod runner, all on this machine.
import { readdir, readFile, rm, rmdir } from "node:fs/promises";
import path from "node:path";
import { ControlPlane, type ControlPlaneOptions } from "../cluster/control-plane.js";
import { KubeClient } from "../cluster/kube.js";
import { PodRunner } from "../pod-runner/runner.js";
import type { ClusterHandle } from "./types.js";

export interface LocalClusterOptions extends ControlPlaneOptions {
  /** First CrashLoopBackOff delay of the pod runner (default 10 s, as a kubelet). */
  backoffBaseMs?: number;
}

/** The folder the in-tree host-path provisioner creates volumes in (fixed in Kubernetes). */
const HOSTPATH_PV_DIR = "/tmp/hostpath_pv";

export class LocalCluster implements ClusterHandle {
  readonly provider = "local" as const;
  readonly images = {
    testServer: "e2e-testserver:dev",
    node: "paxos-node:dev",
    operator: "paxos-operator:dev",
  };
  private stopped = false;

  private constructor(
    readonly controlPlane: ControlPlane,
    readonly runner: PodRunner,
  ) {}

  get kubeconfig(): string {
    return this.controlPlane.kubeconfig;
  }

  static async start(opts: LocalClusterOptions = {}): Promise<LocalCluster> {
    const cp = await ControlPlane.start(opts);
    try {
      const runner = await PodRunner.start({
        kubeconfig: cp.runnerKubeconfig,
        dir: path.join(cp.dir, "pod-runner"),
        log: (line) => opts.log?.(`pod-runner: ${line}`),
        ...(opts.backoffBaseMs !== undefined ? { backoffBaseMs: opts.backoffBaseMs } : {}),
      });
      return new LocalCluster(cp, runner);
    } catch (e) {
      await cp.stop({ keepDir: true });
      throw e;
    }
  }

  async containerLog(namespace: string, pod: string, container: string): Promise<string> {
    const file = this.runner.containerLogFile(namespace, pod, container);
    if (file) return readFile(file, "utf8");
    // The pod may be gone; its logs stay until the cluster stops.
    const logs = path.join(this.runner.dir, "logs");
    const dirs = (await readdir(logs)).filter((d) => d.startsWith(`${namespace}_${pod}_`));
    const latest = dirs.sort().pop();
    if (!latest) throw new Error(`no logs of pod ${namespace}/${pod}`);
    return readFile(path.join(logs, latest, `${container}.log`), "utf8");
  }

  /** Removes the host folders of the PVs this cluster provisioned, which outlive their PVCs otherwise. */
  private async removeVolumes(): Promise<void> {
    const client = await KubeClient.fromKubeconfig(this.controlPlane.kubeconfig);
    try {
      const pvs = await client.list("/api/v1/persistentvolumes");
      for (const pv of pvs.items) {
        const p: string | undefined = pv.spec?.hostPath?.path;
        if (p && path.dirname(p) === HOSTPATH_PV_DIR) await rm(p, { recursive: true, force: true });
      }
      // Shared by every local cluster: removed only once empty.
      await rmdir(HOSTPATH_PV_DIR).catch(() => {});
    } finally {
      client.close();
    }
  }

  async stop(opts: { keepDir?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.runner.stop();
    await this.removeVolumes().catch(() => {});
    await this.controlPlane.stop(opts);
  }
}
