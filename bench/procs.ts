import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";

/** A child process the bench started, with its output going to a log file. */
export interface Managed {
  readonly name: string;
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Settles when the process has exited, with its exit code or signal. */
  readonly exited: Promise<string>;
}

const running = new Set<Managed>();
const tempDirs = new Set<string>();

/**
 * Last line of defence when the process exits without running the async cleanup (an uncaught
 * throw inside an exit handler, `process.exit` from somewhere): nothing may outlive the bench.
 */
process.on("exit", () => {
  for (const m of running) {
    if (m.child.exitCode === null && m.child.signalCode === null) m.child.kill("SIGKILL");
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

export function registerTempDir(dir: string): void {
  tempDirs.add(dir);
}

export function start(name: string, command: string, args: string[], logFile: string): Managed {
  const fd = openSync(logFile, "a");
  let child: ChildProcess;
  try {
    // A process group of its own: Ctrl-C reaches only the bench, which then stops the members
    // in the order each system needs (see EtcdCluster.stop).
    child = spawn(command, args, { stdio: ["ignore", fd, fd], detached: true });
  } finally {
    // The child holds its own copy of the descriptor.
    closeSync(fd);
  }
  const exited = new Promise<string>((resolve) => {
    child.once("exit", (code, signal) => resolve(signal ?? `exit code ${code}`));
    child.once("error", (err) => resolve(`failed to start: ${err.message}`));
  });
  const managed: Managed = { name, child, logFile, exited };
  running.add(managed);
  void exited.then(() => running.delete(managed));
  return managed;
}

/** SIGTERM, then SIGKILL if the process has not exited after `graceMs`. */
export async function stop(m: Managed, graceMs = 5000): Promise<void> {
  if (m.child.exitCode !== null || m.child.signalCode !== null || !running.has(m)) return;
  m.child.kill("SIGTERM");
  const timer = setTimeout(() => m.child.kill("SIGKILL"), graceMs);
  await m.exited;
  clearTimeout(timer);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((m) => stop(m)));
}

export function removeTempDirs(): void {
  for (const dir of tempDirs) {
    rmSync(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  }
}

export function isRunning(m: Managed): boolean {
  return running.has(m);
}

function logTail(m: Managed, lines = 20): string {
  try {
    return readFileSync(m.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch (err) {
    return `(no log: ${(err as Error).message})`;
  }
}

/**
 * Ports the kernel hands out as free on 127.0.0.1. All listeners stay open until every port is
 * known, so the same port is never returned twice.
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", resolve);
      });
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }
}

export interface HttpReply {
  status: number;
  body: string;
}

/** One request on a fresh connection; for set-up and polling, not for the measured load. */
export function request(
  port: number,
  method: string,
  path: string,
  body?: string | Buffer,
  timeoutMs = 3000,
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, method, path, agent: false, timeout: timeoutMs },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

/**
 * Polls `probe` until it returns a value, the deadline passes, or one of `watched` exits (then
 * waiting longer is pointless). The failure message carries the last error and log lines.
 */
export async function waitFor<T>(
  what: string,
  timeoutMs: number,
  watched: Managed[],
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError = "no answer yet";
  while (Date.now() < deadline) {
    const dead = watched.find((m) => !isRunning(m));
    if (dead) {
      throw new Error(`${dead.name} exited while waiting for ${what}; its log ends with:\n${logTail(dead)}`);
    }
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = (err as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const logs = watched.map((m) => `--- last lines of ${m.name} ---\n${logTail(m, 8)}`).join("\n");
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${lastError})\n${logs}`);
}
