// The local pod runner: a kubelet stand-in that registers a Node, keeps its Lease fresh, and runs
// the pods scheduled to it as local processes (see sandbox.ts for what "container" means here).
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import type { V1Container, V1PodSpec, V1VolumeMount } from "@kubernetes/client-node";
import { REPO_ROOT } from "../cluster/binaries.js";
import { KUBERNETES_VERSION } from "../cluster/control-plane.js";
import { Informer, isNotFound, KubeClient, type KubeObject } from "../cluster/kube.js";
import { deathSignalWrap } from "../cluster/procs.js";
import { clusterRecords, hostsFileFor } from "./hosts.js";
import { imageName, KNOWN_IMAGES, resolveImage } from "./images.js";
import { ProbeState, runProbe } from "./probes.js";
import { prepareSandbox } from "./sandbox.js";
import {
  ConfigError,
  containerEnv,
  type PreparedVolume,
  prepareVolumes,
  type TokenFile,
  writeToken,
} from "./spec.js";

export interface PodRunnerOptions {
  kubeconfig: string;
  /** Folder for pod state and container logs. */
  dir: string;
  nodeName?: string;
  /** Checkout whose programs the images map to (default: this one). */
  repoRoot?: string;
  /** First CrashLoopBackOff delay (kubelet: 10 s) and its cap (kubelet: 300 s). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  log?: (line: string) => void;
}

const HOST_IP = "127.0.0.1";
const run = promisify(execFile);
const now = () => new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
const microNow = () => new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

/**
 * Pod IPs: one 10.244.N.0/24 block per runner, made local with a single "AnyIP" route on lo
 * (`ip route add local 10.244.N.0/24 dev lo table local`), so every address in it is bindable
 * and reachable on this machine. Loopback addresses (127.x) would do for the pods themselves, but
 * the API server refuses to proxy to a pod IP that is not global unicast, and the pod proxy is how
 * scenarios reach pods through a kubeconfig alone. Without the right to add routes the pool falls
 * back to a random 127.a.b.0/24 block, and the pod proxy does not work.
 */
class IpPool {
  private readonly used = new Set<number>();

  private constructor(
    private readonly prefix: string,
    private readonly route: string | undefined,
  ) {}

  static async create(log: (line: string) => void): Promise<IpPool> {
    try {
      const { stdout } = await run("ip", ["-4", "route", "show", "table", "local"]);
      const taken = new Set([...stdout.matchAll(/10\.244\.(\d+)\.0\/24/g)].map((m) => Number(m[1])));
      const free = Array.from({ length: 256 }, (_, i) => i).filter((i) => !taken.has(i));
      const n = free[Math.floor(Math.random() * free.length)];
      if (n === undefined) throw new Error("every 10.244.N.0/24 block is in use");
      const route = `10.244.${n}.0/24`;
      await run("ip", ["route", "add", "local", route, "dev", "lo", "table", "local"]);
      return new IpPool(`10.244.${n}.`, route);
    } catch (e) {
      const a = 100 + Math.floor(Math.random() * 150);
      const b = Math.floor(Math.random() * 256);
      log(
        `cannot add a local route for pod IPs (${(e as Error).message.trim()}); using 127.${a}.${b}.0/24: the API server's pod proxy will refuse these`,
      );
      return new IpPool(`127.${a}.${b}.`, undefined);
    }
  }

  take(): string {
    for (let i = 2; i < 255; i++) {
      if (!this.used.has(i)) {
        this.used.add(i);
        return `${this.prefix}${i}`;
      }
    }
    throw new Error("local pod runner: no free pod IP left (253 pods)");
  }

  release(ip: string): void {
    this.used.delete(Number(ip.slice(this.prefix.length)));
  }

  async close(): Promise<void> {
    if (this.route)
      await run("ip", ["route", "del", "local", this.route, "dev", "lo", "table", "local"]).catch(() => {});
  }
}

interface Termination {
  exitCode: number;
  signal?: number;
  reason: string;
  message?: string;
  startedAt: string;
  finishedAt: string;
  containerID: string;
}

class ContainerRun {
  restartCount = 0;
  starts = 0;
  proc: ChildProcess | undefined;
  pid = 0;
  startedAtMs = 0;
  startedAt = "";
  exited: Promise<void> | undefined;
  last: Termination | undefined;
  /** set while the container stays terminated (no restart) */
  final: Termination | undefined;
  waiting: { reason: string; message?: string } | undefined = { reason: "ContainerCreating" };
  backoffMs = 0;
  backoffUntil = 0;
  readiness: ProbeState | undefined;
  liveness: ProbeState | undefined;
  startup: ProbeState | undefined;
  killing = false;

  constructor(
    readonly spec: V1Container,
    readonly isInit: boolean,
  ) {}

  get running(): boolean {
    return this.proc !== undefined;
  }

  get started(): boolean {
    return this.running && (this.startup === undefined || this.startup.result === true);
  }

  get ready(): boolean {
    if (!this.started) return false;
    return this.readiness === undefined || this.readiness.result === true;
  }

  containerID(): string {
    return `local://${this.spec.name}-${this.starts}`;
  }
}

function signalNumber(sig: NodeJS.Signals | null): number | undefined {
  return sig ? os.constants.signals[sig] : undefined;
}

function killGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // already gone
  }
}

/** Refuses to delete a folder that still has something mounted under it (a leaked bind of /work, say). */
async function safeRemove(dir: string): Promise<void> {
  const mounts = await readFile("/proc/self/mountinfo", "utf8");
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  for (const line of mounts.split("\n")) {
    const mp = line.split(" ")[4];
    if (mp && (mp === dir || mp.startsWith(prefix))) {
      throw new Error(`not removing ${dir}: ${mp} is mounted under it`);
    }
  }
  await rm(dir, { recursive: true, force: true });
}

class PodWorker {
  state: "preparing" | "running" | "terminating" | "finished" = "preparing";
  gone = false;
  private current: Promise<void> | undefined;
  private readonly dir: string;
  readonly logDir: string;
  private readonly hostsFile: string;
  private hostsText = "";
  private volumes = new Map<string, PreparedVolume>();
  private readonly tokens: TokenFile[] = [];
  private readonly init: ContainerRun[];
  private readonly main: ContainerRun[];
  private initDone = false;
  private prepareProblem: ConfigError | undefined;
  private startTime = now();
  private lastStatus = "";
  private readonly transitions = new Map<string, { status: string; time: string }>();
  private terminateDeadline = 0;

  constructor(
    private readonly runner: PodRunner,
    public pod: KubeObject,
    readonly ip: string,
  ) {
    const m = pod.metadata;
    const key = `${m.namespace}_${m.name}_${m.uid}`;
    this.dir = path.join(runner.dir, "pods", key);
    this.logDir = path.join(runner.dir, "logs", key);
    this.hostsFile = path.join(this.dir, "hosts");
    const spec = pod.spec as V1PodSpec;
    this.init = (spec.initContainers ?? []).map((c) => new ContainerRun(c, true));
    this.main = spec.containers.map((c) => new ContainerRun(c, false));
    this.initDone = this.init.length === 0;
  }

  private get spec(): V1PodSpec {
    return this.pod.spec as V1PodSpec;
  }

  private get name(): string {
    return `${this.pod.metadata.namespace}/${this.pod.metadata.name}`;
  }

  async setHosts(text: string): Promise<void> {
    if (text === this.hostsText) return;
    // Rewritten in place (same inode): the container's bind mount of this file sees the change.
    await mkdir(this.dir, { recursive: true });
    await writeFile(this.hostsFile, text);
    this.hostsText = text;
  }

  tick(): void {
    if (this.current || this.state === "finished") return;
    this.current = this.step()
      .catch((e) => this.runner.log(`pod ${this.name}: ${(e as Error).stack ?? e}`))
      .finally(() => {
        this.current = undefined;
      });
  }

  /** Resolves when no step is running (one may be starting a container). */
  async idle(): Promise<void> {
    await this.current;
  }

  private async step(): Promise<void> {
    if (this.gone) {
      // Deleted without grace (force delete) or the runner is stopping: stop at once.
      await this.killAll(2_000);
      await this.cleanup();
      return;
    }
    if (this.pod.metadata.deletionTimestamp && this.state !== "terminating") {
      this.state = "terminating";
      const grace =
        this.pod.metadata.deletionGracePeriodSeconds ?? this.spec.terminationGracePeriodSeconds ?? 30;
      this.terminateDeadline = Date.now() + grace * 1000;
      this.runner.log(`pod ${this.name}: terminating (grace ${grace}s)`);
      for (const c of [...this.init, ...this.main]) this.signal(c, "SIGTERM");
    }
    if (this.state === "terminating") {
      const all = [...this.init, ...this.main];
      if (all.some((c) => c.running)) {
        if (Date.now() < this.terminateDeadline) return;
        for (const c of all) this.signal(c, "SIGKILL");
        await Promise.all(all.map((c) => c.exited));
      }
      await this.pushStatus().catch(() => {});
      try {
        await this.runner.client.request("DELETE", this.podPath(), {
          body: { gracePeriodSeconds: 0, preconditions: { uid: this.pod.metadata.uid } },
        });
      } catch (e) {
        if (!isNotFound(e) && !(e instanceof Error && /Precondition|409/.test(e.message))) throw e;
      }
      await this.cleanup();
      return;
    }
    if (this.state === "preparing") {
      try {
        await this.prepare();
        this.prepareProblem = undefined;
        this.state = "running";
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        this.prepareProblem = e;
        await this.pushStatus();
        return;
      }
    }
    for (const t of this.tokens) {
      if (Date.now() >= t.refreshAt) await writeToken(this.runner.client, this.facts(), t);
    }
    await this.runContainers();
    await this.pushStatus();
  }

  private podPath(): string {
    return `/api/v1/namespaces/${this.pod.metadata.namespace}/pods/${encodeURIComponent(this.pod.metadata.name ?? "")}`;
  }

  private facts() {
    return { pod: this.pod, podIP: this.ip, hostIP: HOST_IP };
  }

  private async prepare(): Promise<void> {
    await mkdir(path.join(this.dir, "tmp"), { recursive: true, mode: 0o1777 });
    await mkdir(this.logDir, { recursive: true });
    this.tokens.length = 0;
    this.volumes = await prepareVolumes(
      this.runner.client,
      this.facts(),
      path.join(this.dir, "volumes"),
      this.tokens,
    );
  }

  private restartAllowed(c: ContainerRun, exitCode: number): boolean {
    const policy = c.isInit
      ? this.spec.restartPolicy === "Never"
        ? "Never"
        : "OnFailure"
      : this.spec.restartPolicy;
    if (policy === "Never") return false;
    if (policy === "OnFailure") return exitCode !== 0;
    return true;
  }

  private async runContainers(): Promise<void> {
    if (!this.initDone) {
      const c = this.init.find((x) => !(x.final && x.final.exitCode === 0));
      if (!c) {
        this.initDone = true;
      } else if (!c.running && !c.final) {
        if (Date.now() >= c.backoffUntil) await this.start(c);
        return;
      } else {
        return;
      }
    }
    const t = Date.now();
    for (const c of this.main) {
      if (c.running) {
        await this.probe(c, t);
      } else if (!c.final && t >= c.backoffUntil) {
        await this.start(c);
      }
    }
  }

  private async probe(c: ContainerRun, t: number): Promise<void> {
    const attempt = (p: ProbeState) => () => runProbe(p.probe, c.spec, this.ip, c.pid);
    if (c.startup && c.startup.result !== true) {
      await c.startup.tick(t, attempt(c.startup));
      if (c.startup.result === false) this.failLiveness(c, `Startup probe failed: ${c.startup.lastMessage}`);
      return;
    }
    const checks: Promise<unknown>[] = [];
    if (c.readiness) checks.push(c.readiness.tick(t, attempt(c.readiness)));
    if (c.liveness) {
      const l = c.liveness;
      checks.push(
        l.tick(t, attempt(l)).then(() => {
          if (l.result === false) this.failLiveness(c, `Liveness probe failed: ${l.lastMessage}`);
        }),
      );
    }
    await Promise.all(checks);
  }

  private failLiveness(c: ContainerRun, why: string): void {
    if (c.killing) return;
    this.runner.log(`pod ${this.name} container ${c.spec.name}: ${why}; restarting it`);
    this.signal(c, "SIGTERM");
    const grace = this.spec.terminationGracePeriodSeconds ?? 30;
    const pid = c.pid;
    setTimeout(() => {
      if (c.pid === pid && c.running) killGroup(pid, "SIGKILL");
    }, grace * 1000).unref();
  }

  private signal(c: ContainerRun, sig: NodeJS.Signals): void {
    if (!c.running) return;
    c.killing = true;
    killGroup(c.pid, sig);
  }

  private async start(c: ContainerRun): Promise<void> {
    const spec = c.spec;
    const image = resolveImage(spec.image ?? "", this.runner.repoRoot);
    if (!image) {
      c.waiting = {
        reason: "ErrImagePull",
        message:
          `local pod runner: image "${spec.image}" (name "${imageName(spec.image ?? "")}") is not one it can run; ` +
          `known images: ${KNOWN_IMAGES.join(", ")}`,
      };
      c.backoffUntil = Date.now() + 10_000;
      return;
    }
    let env: Record<string, string>;
    try {
      env = await containerEnv(this.runner.client, spec, this.facts(), {
        ...this.runner.baseEnv(this.pod),
        ...image.env,
      });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      c.waiting = { reason: e.reason, message: e.message };
      c.backoffUntil = Date.now() + 2_000;
      return;
    }
    const expandAll = (xs: string[]) =>
      xs.map((x) =>
        x.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (all, n?: string) =>
          n === undefined ? "$" : (env[n] ?? all),
        ),
      );
    const command = spec.command?.length ? expandAll(spec.command) : image.entrypoint;
    const args = spec.args?.length ? expandAll(spec.args) : spec.command?.length ? [] : image.cmd;

    const cdir = path.join(this.dir, "containers", spec.name);
    await mkdir(cdir, { recursive: true });
    const terminationFile = path.join(cdir, "termination-log");
    await writeFile(terminationFile, "");
    const mounts = [];
    for (const vm of (spec.volumeMounts ?? []) as V1VolumeMount[]) {
      const vol = this.volumes.get(vm.name);
      if (!vol) {
        c.waiting = {
          reason: "CreateContainerConfigError",
          message: `volumeMount ${vm.name}: no such volume`,
        };
        return;
      }
      let source = vol.source;
      if (vm.subPath) {
        source = path.join(vol.source, vm.subPath);
        if (!source.startsWith(vol.source)) {
          c.waiting = {
            reason: "CreateContainerConfigError",
            message: `subPath ${vm.subPath} leaves the volume`,
          };
          return;
        }
        await mkdir(source, { recursive: true });
      }
      mounts.push({
        source,
        target: vm.mountPath,
        readOnly: vm.readOnly ?? vol.readOnly,
        isFile: vol.isFile,
      });
    }
    const argv = await prepareSandbox(
      {
        root: path.join(cdir, "root"),
        hostname: this.spec.hostname || this.pod.metadata.name || "pod",
        hostsFile: this.hostsFile,
        tmpDir: path.join(this.dir, "tmp"),
        mounts,
        terminationFile,
        terminationMessagePath: spec.terminationMessagePath || "/dev/termination-log",
        workingDir: spec.workingDir || image.workingDir,
        hostPaths: [process.execPath, this.runner.repoRoot],
      },
      cdir,
      [...command, ...args],
    );
    // A runner that is stopping starts nothing: its stop() would not see the new process.
    if (this.runner.stopping) return;
    const logFile = path.join(this.logDir, `${spec.name}.log`);
    const fd = openSync(logFile, "a");
    let child: ChildProcess;
    try {
      const [cmd, rest] = deathSignalWrap(argv[0] ?? "unshare", argv.slice(1));
      child = spawn(cmd, rest, { stdio: ["ignore", fd, fd], env, cwd: "/", detached: true });
    } finally {
      closeSync(fd);
    }
    if (c.starts > 0) c.restartCount++;
    c.starts++;
    c.proc = child;
    c.pid = child.pid ?? 0;
    this.runner.startedPids.add(c.pid);
    c.killing = false;
    c.startedAtMs = Date.now();
    c.startedAt = now();
    c.waiting = undefined;
    c.final = undefined;
    c.readiness = spec.readinessProbe ? new ProbeState(spec.readinessProbe, c.startedAtMs) : undefined;
    c.liveness = spec.livenessProbe ? new ProbeState(spec.livenessProbe, c.startedAtMs) : undefined;
    c.startup = spec.startupProbe ? new ProbeState(spec.startupProbe, c.startedAtMs) : undefined;
    this.runner.log(
      `pod ${this.name} container ${spec.name}: started pid ${c.pid} (${command.concat(args).join(" ")})`,
    );
    c.exited = new Promise<void>((resolve) => {
      const done = (code: number | null, sig: NodeJS.Signals | null) => {
        // The process group may hold children; they go with the container.
        killGroup(c.pid, "SIGKILL");
        void this.onExit(c, code, sig, terminationFile, logFile).finally(resolve);
      };
      child.once("exit", done);
      child.once("error", (e) => {
        this.runner.log(`pod ${this.name} container ${spec.name}: spawn failed: ${e.message}`);
        done(127, null);
      });
    });
  }

  private async onExit(
    c: ContainerRun,
    code: number | null,
    sig: NodeJS.Signals | null,
    terminationFile: string,
    logFile: string,
  ): Promise<void> {
    if (!c.proc) return;
    c.proc = undefined;
    const signum = signalNumber(sig);
    const exitCode = code ?? 128 + (signum ?? 0);
    let message = (await readFile(terminationFile, "utf8").catch(() => "")).slice(0, 4096);
    if (!message && exitCode !== 0 && c.spec.terminationMessagePolicy === "FallbackToLogsOnError") {
      const log = await readFile(logFile, "utf8").catch(() => "");
      message = log.split("\n").slice(-80).join("\n").slice(-2048);
    }
    const t: Termination = {
      exitCode,
      reason: exitCode === 0 ? "Completed" : "Error",
      startedAt: c.startedAt,
      finishedAt: now(),
      containerID: c.containerID(),
      ...(signum !== undefined ? { signal: signum } : {}),
      ...(message ? { message } : {}),
    };
    c.last = t;
    c.readiness = c.liveness = c.startup = undefined;
    this.runner.log(
      `pod ${this.name} container ${c.spec.name}: exited with ${exitCode}${sig ? ` (${sig})` : ""}`,
    );
    if (this.state === "terminating" || this.gone || !this.restartAllowed(c, exitCode)) {
      c.final = t;
      return;
    }
    // kubelet's CrashLoopBackOff: the first restart is immediate, then 10 s, 20 s, ... up to 5 min;
    // a container that ran for 10 minutes starts the sequence over.
    if (Date.now() - c.startedAtMs > 600_000) c.backoffMs = 0;
    const delay = c.backoffMs;
    c.backoffUntil = Date.now() + delay;
    c.backoffMs = delay === 0 ? this.runner.backoffBaseMs : Math.min(delay * 2, this.runner.backoffMaxMs);
    const m = this.pod.metadata;
    c.waiting =
      delay === 0
        ? { reason: "ContainerCreating" }
        : {
            reason: "CrashLoopBackOff",
            message: `back-off ${Math.round(delay / 1000)}s restarting failed container=${c.spec.name} pod=${m.name}_${m.namespace}(${m.uid})`,
          };
    this.runner.poke();
  }

  async killAll(graceMs: number): Promise<void> {
    const all = [...this.init, ...this.main].filter((c) => c.running);
    for (const c of all) this.signal(c, "SIGTERM");
    const timer = setTimeout(() => {
      for (const c of all) this.signal(c, "SIGKILL");
    }, graceMs);
    await Promise.all(all.map((c) => c.exited));
    clearTimeout(timer);
  }

  private async cleanup(): Promise<void> {
    if (this.state === "finished") return;
    this.state = "finished";
    await safeRemove(this.dir).catch((e) => this.runner.log(`pod ${this.name}: ${(e as Error).message}`));
    this.runner.forget(this);
  }

  private condition(type: string, ok: boolean, reason?: string) {
    const status = ok ? "True" : "False";
    const prev = this.transitions.get(type);
    const time = prev && prev.status === status ? prev.time : now();
    this.transitions.set(type, { status, time });
    return {
      type,
      status,
      lastTransitionTime: time,
      lastProbeTime: null,
      ...(reason && !ok ? { reason } : {}),
    };
  }

  private containerStatus(c: ContainerRun) {
    let state: object;
    let lastState: object = {};
    if (c.running) {
      state = { running: { startedAt: c.startedAt } };
      if (c.last) lastState = { terminated: c.last };
    } else if (c.final) {
      state = { terminated: c.final };
      if (c.restartCount > 0 && c.last !== c.final) lastState = { terminated: c.last };
    } else {
      state = { waiting: c.waiting ?? { reason: "ContainerCreating" } };
      if (c.last) lastState = { terminated: c.last };
    }
    if (this.prepareProblem && c.starts === 0) {
      state = { waiting: { reason: "ContainerCreating", message: this.prepareProblem.message } };
    }
    return {
      name: c.spec.name,
      image: c.spec.image,
      imageID: `local-process://${imageName(c.spec.image ?? "")}`,
      ...(c.starts > 0 ? { containerID: c.containerID() } : {}),
      ready: c.ready,
      started: c.started,
      restartCount: c.restartCount,
      state,
      lastState,
    };
  }

  private phase(): string {
    const policy = this.spec.restartPolicy ?? "Always";
    if (policy !== "Always" && this.main.every((c) => c.final)) {
      return this.main.every((c) => c.final?.exitCode === 0) ? "Succeeded" : "Failed";
    }
    if (this.init.some((c) => c.final && c.final.exitCode !== 0)) return "Failed";
    if (this.main.some((c) => c.starts > 0)) return "Running";
    return "Pending";
  }

  private async pushStatus(): Promise<void> {
    const allReady = this.initDone && this.main.every((c) => c.ready);
    const scheduled = (this.pod.status?.conditions ?? []).find(
      (c: { type: string }) => c.type === "PodScheduled",
    );
    const status = {
      phase: this.phase(),
      hostIP: HOST_IP,
      hostIPs: [{ ip: HOST_IP }],
      podIP: this.ip,
      podIPs: [{ ip: this.ip }],
      startTime: this.startTime,
      conditions: [
        this.condition("PodReadyToStartContainers", this.state !== "preparing"),
        this.condition("Initialized", this.initDone, "ContainersNotInitialized"),
        this.condition("Ready", allReady, "ContainersNotReady"),
        this.condition("ContainersReady", allReady, "ContainersNotReady"),
        ...(scheduled ? [scheduled] : []),
      ],
      ...(this.init.length ? { initContainerStatuses: this.init.map((c) => this.containerStatus(c)) } : {}),
      containerStatuses: this.main.map((c) => this.containerStatus(c)),
    };
    const text = JSON.stringify(status);
    if (text === this.lastStatus) return;
    try {
      this.pod = await this.runner.client.patch(`${this.podPath()}/status`, { status }, "merge");
      this.lastStatus = text;
    } catch (e) {
      if (isNotFound(e)) this.gone = true;
      else throw e;
    }
  }
}

export class PodRunner {
  readonly nodeName: string;
  readonly repoRoot: string;
  readonly backoffBaseMs: number;
  readonly backoffMaxMs: number;
  private readonly workers = new Map<string, PodWorker>();
  /** Every container process this runner started, for leak checks. */
  readonly startedPids = new Set<number>();
  private readonly pods: Informer;
  private readonly services: Informer;
  private readonly timers: NodeJS.Timeout[] = [];
  private reconciling = false;
  private reconcileDone: Promise<void> = Promise.resolve();
  private again = false;
  private stopped = false;
  private readonly apiserver: URL;

  private constructor(
    readonly client: KubeClient,
    readonly dir: string,
    private readonly ips: IpPool,
    opts: PodRunnerOptions,
  ) {
    this.nodeName = opts.nodeName ?? "local-node";
    this.repoRoot = opts.repoRoot ?? REPO_ROOT;
    this.backoffBaseMs = opts.backoffBaseMs ?? 10_000;
    this.backoffMaxMs = opts.backoffMaxMs ?? 300_000;
    this.log = opts.log ?? (() => {});
    this.apiserver = new URL(client.server);
    const onError = (e: unknown) => this.log(`watch: ${(e as Error).message}`);
    this.pods = new Informer(client, "/api/v1/pods", { onChange: () => this.poke(), onError });
    this.services = new Informer(client, "/api/v1/services", { onChange: () => this.poke(), onError });
  }

  readonly log: (line: string) => void;

  static async start(opts: PodRunnerOptions): Promise<PodRunner> {
    const client = await KubeClient.fromKubeconfig(opts.kubeconfig);
    await mkdir(path.join(opts.dir, "pods"), { recursive: true });
    await mkdir(path.join(opts.dir, "logs"), { recursive: true });
    const log = opts.log ?? (() => {});
    const ips = await IpPool.create(log);
    const r = new PodRunner(client, opts.dir, ips, opts);
    try {
      await r.register();
      r.pods.start();
      r.services.start();
      await Promise.all([r.pods.waitForSync(), r.services.waitForSync()]);
    } catch (e) {
      await r.stop();
      throw e;
    }
    r.timers.push(setInterval(() => r.poke(), 1_000));
    r.timers.push(
      setInterval(() => void r.heartbeat().catch((e) => r.log(`heartbeat: ${e.message}`)), 10_000),
    );
    r.log(`pod runner: node ${r.nodeName} registered`);
    return r;
  }

  /** The log file of a container of a pod (all its restarts, appended). */
  containerLogFile(namespace: string, podName: string, container: string): string | undefined {
    for (const w of this.workers.values()) {
      if (w.pod.metadata.namespace === namespace && w.pod.metadata.name === podName) {
        return path.join(w.logDir, `${container}.log`);
      }
    }
    return undefined;
  }

  baseEnv(pod: KubeObject): Record<string, string> {
    const host = this.apiserver.hostname;
    const port = this.apiserver.port || "443";
    return {
      PATH: `${path.dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
      HOME: "/root",
      HOSTNAME: pod.spec?.hostname || pod.metadata.name || "",
      KUBERNETES_SERVICE_HOST: host,
      KUBERNETES_SERVICE_PORT: port,
      KUBERNETES_SERVICE_PORT_HTTPS: port,
      KUBERNETES_PORT: `tcp://${host}:${port}`,
      [`KUBERNETES_PORT_${port}_TCP`]: `tcp://${host}:${port}`,
      [`KUBERNETES_PORT_${port}_TCP_PROTO`]: "tcp",
      [`KUBERNETES_PORT_${port}_TCP_ADDR`]: host,
      [`KUBERNETES_PORT_${port}_TCP_PORT`]: port,
    };
  }

  private nodeStatus() {
    const t = now();
    const cond = (type: string, status: string, reason: string, message: string) => ({
      type,
      status,
      reason,
      message,
      lastHeartbeatTime: t,
      lastTransitionTime: this.startedAt,
    });
    const capacity = { cpu: "8", memory: "32Gi", pods: "110", "ephemeral-storage": "100Gi" };
    return {
      capacity,
      allocatable: capacity,
      conditions: [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "local pod runner"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "local pod runner"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "local pod runner"),
        cond("Ready", "True", "KubeletReady", "local pod runner is posting ready status"),
      ],
      addresses: [
        { type: "InternalIP", address: HOST_IP },
        { type: "Hostname", address: this.nodeName },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: 0 } },
      nodeInfo: {
        machineID: "",
        systemUUID: "",
        bootID: "",
        kernelVersion: os.release(),
        osImage: "local processes",
        containerRuntimeVersion: "local-process://1",
        kubeletVersion: KUBERNETES_VERSION,
        kubeProxyVersion: "",
        operatingSystem: "linux",
        architecture: os.arch() === "x64" ? "amd64" : os.arch(),
      },
    };
  }

  private readonly startedAt = now();

  private async register(): Promise<void> {
    await this.client.apply(
      {
        apiVersion: "v1",
        kind: "Node",
        metadata: {
          name: this.nodeName,
          labels: {
            "kubernetes.io/hostname": this.nodeName,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": os.arch() === "x64" ? "amd64" : os.arch(),
          },
        },
      },
      "local-pod-runner",
    );
    await this.heartbeat();
  }

  private async heartbeat(): Promise<void> {
    await this.client.patch(`/api/v1/nodes/${this.nodeName}/status`, { status: this.nodeStatus() }, "merge");
    await this.client.apply(
      {
        apiVersion: "coordination.k8s.io/v1",
        kind: "Lease",
        metadata: { name: this.nodeName, namespace: "kube-node-lease" },
        spec: { holderIdentity: this.nodeName, leaseDurationSeconds: 40, renewTime: microNow() },
      },
      "local-pod-runner",
    );
  }

  /** Asks for a reconcile soon; cheap to call often. */
  poke(): void {
    if (this.stopped) return;
    if (this.reconciling) {
      this.again = true;
      return;
    }
    this.reconciling = true;
    this.reconcileDone = this.reconcile()
      .catch((e) => this.log(`reconcile: ${(e as Error).stack ?? e}`))
      .finally(() => {
        this.reconciling = false;
        if (this.again) {
          this.again = false;
          setImmediate(() => this.poke());
        }
      });
  }

  get stopping(): boolean {
    return this.stopped;
  }

  forget(w: PodWorker): void {
    const uid = w.pod.metadata.uid ?? "";
    if (this.workers.get(uid) === w) {
      this.workers.delete(uid);
      this.ips.release(w.ip);
    }
  }

  private async reconcile(): Promise<void> {
    const all = this.pods.items();
    const seen = new Set<string>();
    for (const pod of all) {
      if (pod.spec?.nodeName !== this.nodeName) continue;
      const uid = pod.metadata.uid ?? "";
      seen.add(uid);
      const w = this.workers.get(uid);
      if (w) {
        w.pod = pod;
        continue;
      }
      const phase = pod.status?.phase;
      if (phase === "Succeeded" || phase === "Failed") continue;
      if (pod.metadata.deletionTimestamp) {
        // Never started here (or by a runner before this one): nothing to stop.
        await this.client
          .request("DELETE", `/api/v1/namespaces/${pod.metadata.namespace}/pods/${pod.metadata.name}`, {
            body: { gracePeriodSeconds: 0, preconditions: { uid } },
          })
          .catch(() => {});
        continue;
      }
      this.workers.set(uid, new PodWorker(this, pod, this.ips.take()));
    }
    for (const [uid, w] of this.workers) if (!seen.has(uid)) w.gone = true;

    const records = clusterRecords(all, this.services.items());
    for (const w of this.workers.values()) {
      if (w.state !== "finished") await w.setHosts(hostsFileFor(w.pod, w.ip, records));
    }
    for (const w of this.workers.values()) w.tick();
  }

  /** Stops every pod process (SIGTERM, then SIGKILL after `graceMs`) and the watches; the Node object stays. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    await this.reconcileDone;
    const workers = [...this.workers.values()];
    await Promise.all(workers.map((w) => w.idle()));
    await Promise.all(workers.map((w) => w.killAll(graceMs)));
    await Promise.all([this.pods.stop(), this.services.stop()]);
    await this.ips.close();
    this.client.close();
  }
}
