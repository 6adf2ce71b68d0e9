// A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler as child processes, each logging to a file in the cluster's folder.
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { ensureBinaries } from "./binaries.js";
import { KubeClient, waitFor } from "./kube.js";
import { createPki, writeKubeconfig } from "./pki.js";
import { ManagedProcess } from "./procs.js";

export const KUBERNETES_VERSION = "v1.34.4";
/** The first address of this range is the `kubernetes` Service (no kube-proxy serves it here). */
const SERVICE_CIDR = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP = "10.96.0.1";

export interface ControlPlaneOptions {
  /** Folder for certificates, etcd data and logs; a fresh temp folder by default (removed on stop). */
  dir?: string;
  /** Build the binaries when they are missing (default true). */
  build?: boolean;
  log?: (line: string) => void;
}

export interface ControlPlanePorts {
  etcdClient: number;
  etcdPeer: number;
  apiserver: number;
  controllerManager: number;
  scheduler: number;
}

/** Ports that were free a moment ago: all held open together, so one call never repeats a port. */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      servers.push(s);
      await new Promise<void>((resolve, reject) => {
        s.once("error", reject);
        s.listen(0, "127.0.0.1", () => resolve());
      });
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

/** GET over https without verifying the peer: for the health endpoints of self-signed components. */
function healthy(url: string, ca?: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const req = https.get(url, { ca, rejectUnauthorized: ca !== undefined, timeout: 5_000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
  });
}

export class ControlPlane {
  private stopped = false;

  private constructor(
    readonly dir: string,
    private readonly ownsDir: boolean,
    readonly binDir: string,
    readonly ports: ControlPlanePorts,
    /** Admin (system:masters) kubeconfig with embedded certificates. */
    readonly kubeconfig: string,
    /** Kubeconfig for the pod runner (a system:masters client too, named for the audit trail). */
    readonly runnerKubeconfig: string,
    readonly caCertFile: string,
    private readonly procs: ManagedProcess[],
  ) {}

  get server(): string {
    return `https://127.0.0.1:${this.ports.apiserver}`;
  }

  /** Process ids of the components (they are all children of this process). */
  pids(): number[] {
    return this.procs.flatMap((p) => (p.pid === undefined ? [] : [p.pid]));
  }

  logFile(component: string): string {
    return path.join(this.dir, "logs", `${component}.log`);
  }

  static async start(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
    const log = opts.log ?? (() => {});
    const binDir = await ensureBinaries(opts.build ?? true);
    const ownsDir = !opts.dir;
    const dir = opts.dir ?? (await mkdtemp(path.join(os.tmpdir(), "k8s-local-")));
    for (const d of ["pki", "logs", "etcd"]) await mkdir(path.join(dir, d), { recursive: true });
    const [etcdClient, etcdPeer, apiserver, controllerManager, scheduler] = (await freePorts(5)) as [
      number,
      number,
      number,
      number,
      number,
    ];
    const ports: ControlPlanePorts = { etcdClient, etcdPeer, apiserver, controllerManager, scheduler };
    log(`control plane in ${dir}: API server on https://127.0.0.1:${apiserver}`);

    const pkiDir = path.join(dir, "pki");
    const pki = await createPki(pkiDir, {
      serverIps: ["127.0.0.1", KUBERNETES_SERVICE_IP],
      serverNames: [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
      ],
      clients: [
        { name: "admin", commonName: "kubernetes-admin", organizations: ["system:masters"] },
        { name: "controller-manager", commonName: "system:kube-controller-manager" },
        { name: "scheduler", commonName: "system:kube-scheduler" },
        { name: "pod-runner", commonName: "e2e-pod-runner", organizations: ["system:masters"] },
      ],
    });
    const server = `https://127.0.0.1:${apiserver}`;
    const kubeconfigFor = async (name: string, user: string) => {
      const file = path.join(dir, `${name}.kubeconfig`);
      await writeKubeconfig(file, {
        server,
        caCert: pki.caCert,
        ...pki.client(name),
        user,
        clusterName: "local",
      });
      return file;
    };
    const adminKc = await kubeconfigFor("admin", "admin");
    const kcmKc = await kubeconfigFor("controller-manager", "kube-controller-manager");
    const schedKc = await kubeconfigFor("scheduler", "kube-scheduler");
    const runnerKc = await kubeconfigFor("pod-runner", "pod-runner");

    const procs: ManagedProcess[] = [];
    const cp = new ControlPlane(dir, ownsDir, binDir, ports, adminKc, runnerKc, pki.caCert, procs);
    const bin = (b: string) => path.join(binDir, b);
    const start = (name: string, args: string[]) => {
      const p = ManagedProcess.start(name, bin(name), args, { logFile: cp.logFile(name), cwd: dir });
      procs.push(p);
      return p;
    };
    const mustRun = (p: ManagedProcess) => {
      if (!p.running) {
        throw new Error(`${p.name} exited (${JSON.stringify(p.exitInfo)}); see ${cp.logFile(p.name)}`);
      }
    };

    try {
      const etcd = start("etcd", [
        "--name=default",
        `--data-dir=${path.join(dir, "etcd")}`,
        `--listen-client-urls=http://127.0.0.1:${etcdClient}`,
        `--advertise-client-urls=http://127.0.0.1:${etcdClient}`,
        `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
        `--initial-cluster=default=http://127.0.0.1:${etcdPeer}`,
        // A throw-away test store on a shared machine: losing it on a crash costs nothing.
        "--unsafe-no-fsync",
        "--log-level=warn",
      ]);
      await waitFor(
        "etcd",
        async () => {
          mustRun(etcd);
          try {
            const res = await fetch(`http://127.0.0.1:${etcdClient}/health`);
            return res.ok;
          } catch {
            return false;
          }
        },
        60_000,
      );
      log("etcd ready");

      const apiserverProc = start("kube-apiserver", [
        `--etcd-servers=http://127.0.0.1:${etcdClient}`,
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        `--secure-port=${apiserver}`,
        `--tls-cert-file=${pki.servingCert}`,
        `--tls-private-key-file=${pki.servingKey}`,
        `--client-ca-file=${pki.caCert}`,
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        `--service-account-key-file=${pki.saPub}`,
        `--service-account-signing-key-file=${pki.saKey}`,
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        // Endpoints may not hold a loopback address, and there is no kube-proxy to use them.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=1",
      ]);
      const ca = await readFile(pki.caCert);
      await waitFor(
        "kube-apiserver /readyz",
        async () => {
          mustRun(apiserverProc);
          return healthy(`${server}/readyz`, ca);
        },
        180_000,
      );
      log("kube-apiserver ready");

      const kcm = start("kube-controller-manager", [
        `--kubeconfig=${kcmKc}`,
        `--authentication-kubeconfig=${kcmKc}`,
        `--authorization-kubeconfig=${kcmKc}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${controllerManager}`,
        `--service-account-private-key-file=${pki.saKey}`,
        `--root-ca-file=${pki.caCert}`,
        "--use-service-account-credentials=true",
        "--controllers=*",
        // Provisions PVs of StorageClass "standard" as folders under /tmp/hostpath_pv (single node only).
        "--enable-hostpath-provisioner=true",
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
      ]);
      const sched = start("kube-scheduler", [
        `--kubeconfig=${schedKc}`,
        `--authentication-kubeconfig=${schedKc}`,
        `--authorization-kubeconfig=${schedKc}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${scheduler}`,
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
      ]);
      await waitFor(
        "kube-controller-manager and kube-scheduler /healthz",
        async () => {
          mustRun(kcm);
          mustRun(sched);
          const [a, b] = await Promise.all([
            healthy(`https://127.0.0.1:${controllerManager}/healthz`),
            healthy(`https://127.0.0.1:${scheduler}/healthz`),
          ]);
          return a && b;
        },
        120_000,
      );
      log("kube-controller-manager and kube-scheduler ready");

      const client = await KubeClient.fromKubeconfig(adminKc);
      try {
        await client.apply({
          apiVersion: "storage.k8s.io/v1",
          kind: "StorageClass",
          metadata: {
            name: "standard",
            annotations: { "storageclass.kubernetes.io/is-default-class": "true" },
          },
          provisioner: "kubernetes.io/host-path",
          reclaimPolicy: "Delete",
          volumeBindingMode: "Immediate",
        });
        // Pods are refused until the service-account controller has made the namespace's account.
        await waitFor(
          "ServiceAccount default/default",
          async () => (await client.getOrNull("/api/v1/namespaces/default/serviceaccounts/default")) !== null,
          60_000,
        );
      } finally {
        client.close();
      }
      log("control plane ready");
      return cp;
    } catch (e) {
      await cp.stop();
      throw e;
    }
  }

  /** Stops the components in reverse order and, if it made the folder, removes it. */
  async stop(opts: { keepDir?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const p of [...this.procs].reverse()) await p.stop(10_000);
    if (this.ownsDir && !opts.keepDir) await rm(this.dir, { recursive: true, force: true });
  }
}
