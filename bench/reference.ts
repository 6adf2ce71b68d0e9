import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { RequestFactory } from "./load.js";
import { freePorts, type Managed, request, start, stop, waitFor } from "./procs.js";

/** reference-member.js, next to this file once built. */
const MEMBER = resolve(import.meta.dirname, "reference-member.js");

export interface ReferenceSystem {
  readonly port: number;
  /** Its processes, the one answering on `port` first. */
  readonly processes: readonly Managed[];
  stop(): Promise<void>;
}

async function answering(port: number, processes: Managed[], what: string): Promise<void> {
  await waitFor(what, 30_000, processes, async () => {
    const reply = await request(port, "PUT", "/probe", "ok");
    if (reply.status !== 200) throw new Error(`test put: HTTP ${reply.status} ${reply.body}`);
    return true;
  });
}

/** Three reference members (see reference-member.ts): the master's HTTP port takes the load. */
export async function startReferenceGroup(baseDir: string): Promise<ReferenceSystem> {
  const [httpPort, p1, p2] = (await freePorts(3)) as [number, number, number];
  const followers = [p1, p2].map((port, i) =>
    start(
      `reference follower ${i + 1}`,
      process.execPath,
      [MEMBER, "follower", String(port), join(baseDir, `follower${i + 1}.data`)],
      join(baseDir, `follower${i + 1}.log`),
    ),
  );
  // Preallocating each follower's file takes a moment; the master connects once they listen.
  await Promise.all(
    followers.map((f, i) =>
      waitFor(`reference follower ${i + 1}`, 30_000, followers, async () =>
        readFileSync(f.logFile, "utf8").includes("listening") ? true : undefined,
      ),
    ),
  );
  const master = start(
    "reference master",
    process.execPath,
    [MEMBER, "master", String(httpPort), join(baseDir, "master.data"), `${p1},${p2}`],
    join(baseDir, "master.log"),
  );
  const all = [master, ...followers];
  await answering(httpPort, all, "the reference master");
  return {
    port: httpPort,
    processes: all,
    async stop() {
      await stop(master);
      await Promise.all(followers.map((f) => stop(f)));
    },
  };
}

/** One process answering every PUT at once: the cost of HTTP alone. */
export async function startBareServer(baseDir: string): Promise<ReferenceSystem> {
  const [port] = (await freePorts(1)) as [number];
  const server = start(
    "bare HTTP server",
    process.execPath,
    [MEMBER, "bare", String(port)],
    join(baseDir, "bare.log"),
  );
  await answering(port, [server], "the bare HTTP server");
  return { port, processes: [server], stop: () => stop(server) };
}

export const referencePut: RequestFactory = (key, value) => ({
  method: "PUT",
  path: `/${key}`,
  contentType: "application/octet-stream",
  body: value,
});
