// The operator as a local process of this checkout, for tests that stop, kill or re-configure it
// between steps (a pod would be restarted by its Deployment with the same environment).
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { readFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { REPO_ROOT } from "../cluster/binaries.js";
import { log } from "./helpers.js";

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

export interface OperatorOptions {
  kubeconfig: string;
  /** Namespace of the leader-election Lease. */
  namespace: string;
  nodeImage: string;
  /** Appended to across starts, so a failing test shows every incarnation's log. */
  logFile: string;
  /** Extra environment (e.g. PAXOS_OPERATOR_TEST_CRASH_AFTER) for this start only. */
  env?: Record<string, string>;
  leaderElect?: boolean;
}

export class OperatorProcess {
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    private readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  static async start(opts: OperatorOptions): Promise<OperatorProcess> {
    const out = createWriteStream(opts.logFile, { flags: "a" });
    const child = spawn(process.execPath, [path.join(REPO_ROOT, "dist", "operator", "src", "main.js")], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        KUBECONFIG: opts.kubeconfig,
        POD_NAMESPACE: opts.namespace,
        LEADER_ELECT: String(opts.leaderElect ?? false),
        PAXOS_NODE_IMAGE: opts.nodeImage,
        // Pods of the local provider share this network stack: bind where no pod listens.
        METRICS_HOST: "127.0.0.1",
        METRICS_PORT: String(await freePort()),
        LOG_LEVEL: "debug",
        ...opts.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout?.pipe(out);
    child.stderr?.pipe(out);
    log(`operator pid ${child.pid} ${JSON.stringify(opts.env ?? {})}, log ${opts.logFile}`);
    return new OperatorProcess(child, opts.logFile);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves when the process has exited on its own (a crash hook), failing after `timeoutMs`. */
  async waitExit(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the operator did not exit within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGTERM (a graceful stop), SIGKILL after 20 s. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 20_000);
    await this.exited;
    clearTimeout(timer);
  }

  async logTail(chars = 4000): Promise<string> {
    return (await readFile(this.logFile, "utf8").catch(() => "")).slice(-chars);
  }
}
