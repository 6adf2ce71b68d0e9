import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { RequestFactory } from "./load.js";
import { freePorts, type Managed, request, start, stop, waitFor } from "./procs.js";

/** The repository root: this file runs as dist/bench/paxos.js. */
const ROOT = resolve(import.meta.dirname, "..", "..");
const BIN = join(ROOT, "bin", "paxos-node.js");

export interface PaxosGroup {
  readonly members: { name: string; httpPort: number; process: Managed }[];
  /** The HTTP port of the member that reports itself master, looked up anew on each call. */
  masterPort(): Promise<number>;
  stop(): Promise<void>;
}

interface StatusReply {
  role?: string;
}

/** Fails early and clearly when the node has not been built. */
export function checkPaxosNode(): void {
  if (!existsSync(join(ROOT, "dist", "node", "src", "main.js"))) {
    throw new Error(`${join(ROOT, "dist/node/src/main.js")} is missing: build first (npm run build)`);
  }
}

export async function startPaxosGroup(baseDir: string): Promise<PaxosGroup> {
  const ports = await freePorts(6);
  const names = ["n1", "n2", "n3"];
  const peers = names.map((n, i) => `${n}=127.0.0.1:${ports[3 + i]}`).join(",");

  const members = names.map((name, i) => {
    const httpPort = ports[i]!;
    const args = [
      BIN,
      "--member",
      name,
      "--peers",
      peers,
      "--peer-port",
      String(ports[3 + i]),
      "--http-port",
      String(httpPort),
      "--data-dir",
      join(baseDir, name),
      "--host",
      "127.0.0.1",
      "--termination-log",
      join(baseDir, `${name}.termination`),
    ];
    const proc = start(`paxos-node ${name}`, process.execPath, args, join(baseDir, `${name}.log`));
    return { name, httpPort, process: proc };
  });
  const all = members.map((m) => m.process);

  const findMaster = async (): Promise<number | undefined> => {
    for (const m of members) {
      const reply = await request(m.httpPort, "GET", "/v1/status").catch(() => undefined);
      if (reply?.status !== 200) continue;
      const status = JSON.parse(reply.body) as StatusReply;
      if (status.role === "master") return m.httpPort;
    }
    return undefined;
  };
  const group: PaxosGroup = {
    members,
    masterPort: () => waitFor("a paxos-node master", 15_000, all, findMaster),
    async stop() {
      await Promise.all(all.map((p) => stop(p)));
    },
  };

  const master = await waitFor("a first paxos-node master", 60_000, all, findMaster);
  await waitFor("a first paxos-node write", 30_000, all, async () => {
    const reply = await request(master, "PUT", "/v1/kv/bench-probe", "ok");
    if (reply.status !== 200) throw new Error(`test put: HTTP ${reply.status} ${reply.body}`);
    return true;
  });
  return group;
}

export const paxosPut: RequestFactory = (key, value) => ({
  method: "PUT",
  path: `/v1/kv/${key}`,
  contentType: "application/octet-stream",
  body: value,
});
