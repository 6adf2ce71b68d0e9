// Child processes that log to a file and never outlive the process that started them.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { closeSync, openSync } from "node:fs";

/**
 * `setpriv --pdeathsig KILL` makes the kernel kill the child when its parent dies, so a test run
 * that is killed outright leaves no etcd or API server behind.
 */
const SETPRIV = spawnSync("setpriv", ["--version"]).status === 0;

export function deathSignalWrap(cmd: string, args: string[]): [string, string[]] {
  return SETPRIV ? ["setpriv", ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, args];
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class ManagedProcess {
  readonly exited: Promise<Exit>;
  private exit: Exit | undefined;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
      child.on("error", () => {
        this.exit ??= { code: -1, signal: null };
        resolve(this.exit);
      });
    });
  }

  static start(
    name: string,
    cmd: string,
    args: string[],
    opts: { logFile: string; env?: NodeJS.ProcessEnv; cwd?: string },
  ): ManagedProcess {
    const fd = openSync(opts.logFile, "a");
    try {
      const [c, a] = deathSignalWrap(cmd, args);
      const child = spawn(c, a, { stdio: ["ignore", fd, fd], env: opts.env ?? process.env, cwd: opts.cwd });
      return new ManagedProcess(name, child);
    } finally {
      closeSync(fd);
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  get exitInfo(): Exit | undefined {
    return this.exit;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs = 10_000): Promise<Exit> {
    if (this.exit) return this.exit;
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(t);
    }
  }
}
