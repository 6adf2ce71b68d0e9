import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { RequestFactory } from "./load.js";
import { freePorts, type Managed, request, start, stop, waitFor } from "./procs.js";

const POLICY_RC_D = "/usr/sbin/policy-rc.d";

function run(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): number {
  console.log(`[bench] $ ${command} ${args.join(" ")}`);
  const result = spawnSync(command, args, { stdio: "inherit", env });
  if (result.error) throw new Error(`cannot run ${command}: ${result.error.message}`);
  return result.status ?? 1;
}

export function etcdVersion(): string | undefined {
  const result = spawnSync("etcd", ["--version"], { encoding: "utf8" });
  if (result.error || result.status !== 0) return undefined;
  return /etcd Version: (\S+)/.exec(result.stdout)?.[1] ?? result.stdout.trim();
}

/**
 * Makes `etcd` available, installing Debian's `etcd-server` when it is missing. The package's
 * own service must not keep running: an etcd on the default ports would take CPU and disk from
 * the clusters being measured.
 */
export function ensureEtcd(): string {
  const present = etcdVersion();
  if (present) return present;
  console.log("[bench] etcd is not on PATH; installing Debian's etcd-server");
  if (process.getuid?.() !== 0) {
    throw new Error(
      "etcd is missing and installing it needs root: run `apt-get install -y etcd-server` as root",
    );
  }
  if (spawnSync("apt-get", ["--version"]).error) {
    throw new Error("etcd is missing and apt-get is not available: install etcd 3.4 (etcd-server) by hand");
  }
  const candidate = spawnSync("apt-cache", ["policy", "etcd-server"], { encoding: "utf8" }).stdout ?? "";
  if (!/Candidate: (?!\(none\))/.test(candidate)) {
    if (run("apt-get", ["update"]) !== 0) throw new Error("apt-get update failed");
  }

  // policy-rc.d exiting 101 tells invoke-rc.d not to start services while installing.
  const ownPolicy = !existsSync(POLICY_RC_D);
  if (ownPolicy) {
    console.log(`[bench] writing ${POLICY_RC_D} (exit 101) so the package does not start its service`);
    writeFileSync(POLICY_RC_D, "#!/bin/sh\nexit 101\n", { mode: 0o755 });
  }
  try {
    const status = run("apt-get", ["install", "-y", "--no-install-recommends", "etcd-server"], {
      ...process.env,
      DEBIAN_FRONTEND: "noninteractive",
    });
    if (status !== 0) throw new Error(`apt-get install etcd-server failed with exit code ${status}`);
  } finally {
    if (ownPolicy) {
      console.log(`[bench] removing ${POLICY_RC_D}`);
      rmSync(POLICY_RC_D, { force: true });
    }
  }
  stopPackagedService();
  const installed = etcdVersion();
  if (!installed) throw new Error("etcd-server was installed but `etcd --version` does not run");
  console.log(`[bench] installed etcd ${installed}`);
  return installed;
}

/** Stops and disables the service the package registered, under systemd or SysV init. */
function stopPackagedService(): void {
  if (existsSync("/run/systemd/system")) {
    run("systemctl", ["disable", "--now", "etcd.service"]);
  } else if (existsSync("/etc/init.d/etcd")) {
    run("/etc/init.d/etcd", ["stop"]);
  }
}

export interface EtcdCluster {
  readonly members: { name: string; clientPort: number; process: Managed }[];
  /** The client port of the current leader, looked up anew on each call. */
  leaderPort(): Promise<number>;
  stop(): Promise<void>;
}

interface StatusReply {
  header?: { member_id?: string };
  leader?: string;
}

async function memberStatus(clientPort: number): Promise<StatusReply> {
  const reply = await request(clientPort, "POST", "/v3/maintenance/status", "{}");
  if (reply.status !== 200)
    throw new Error(`status on port ${clientPort}: HTTP ${reply.status} ${reply.body}`);
  return JSON.parse(reply.body) as StatusReply;
}

/** Three members on 127.0.0.1, default durability settings (fsync on every commit). */
export async function startEtcdCluster(baseDir: string): Promise<EtcdCluster> {
  const ports = await freePorts(6);
  const names = ["e1", "e2", "e3"];
  const peerUrl = (i: number) => `http://127.0.0.1:${ports[3 + i]}`;
  const initialCluster = names.map((n, i) => `${n}=${peerUrl(i)}`).join(",");
  const token = `bench-${process.pid}-${Date.now()}`;

  const members = names.map((name, i) => {
    const clientPort = ports[i]!;
    const dataDir = join(baseDir, name);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const clientUrl = `http://127.0.0.1:${clientPort}`;
    const args = [
      `--name=${name}`,
      `--data-dir=${dataDir}`,
      `--listen-client-urls=${clientUrl}`,
      `--advertise-client-urls=${clientUrl}`,
      `--listen-peer-urls=${peerUrl(i)}`,
      `--initial-advertise-peer-urls=${peerUrl(i)}`,
      `--initial-cluster=${initialCluster}`,
      `--initial-cluster-token=${token}`,
      "--initial-cluster-state=new",
      "--logger=zap",
    ];
    const proc = start(`etcd ${name}`, "etcd", args, join(baseDir, `${name}.log`));
    return { name, clientPort, process: proc };
  });
  const all = members.map((m) => m.process);

  const cluster: EtcdCluster = {
    members,
    async leaderPort() {
      return waitFor("an etcd leader", 15_000, all, async () => {
        for (const m of members) {
          const status = await memberStatus(m.clientPort).catch(() => undefined);
          if (status?.leader && status.leader === status.header?.member_id) return m.clientPort;
        }
        return undefined;
      });
    },
    // A stopping leader hands leadership to a follower and waits for it; when the followers are
    // stopping too it waits out a timeout. One at a time, followers first, every stop is quick.
    async stop() {
      const statuses = await Promise.all(
        members.map((m) => memberStatus(m.clientPort).catch(() => undefined)),
      );
      const isLeader = (i: number) => {
        const s = statuses[i];
        return s?.leader !== undefined && s.leader === s.header?.member_id;
      };
      const order = members
        .map((m, i) => ({ m, leader: isLeader(i) }))
        .sort((a, b) => Number(a.leader) - Number(b.leader));
      for (const { m } of order) await stop(m.process);
    },
  };

  for (const m of members) {
    await waitFor(`etcd ${m.name} healthy`, 30_000, all, async () => {
      const reply = await request(m.clientPort, "GET", "/health");
      return reply.status === 200 && /"health":\s*"true"/.test(reply.body) ? true : undefined;
    });
  }
  const leader = await cluster.leaderPort();
  const probe = await request(leader, "POST", "/v3/kv/put", JSON.stringify(etcdPutBody("bench-probe", "ok")));
  if (probe.status !== 200) throw new Error(`etcd test put failed: HTTP ${probe.status} ${probe.body}`);
  return cluster;
}

function etcdPutBody(key: string, value: string | Buffer): { key: string; value: string } {
  return { key: Buffer.from(key).toString("base64"), value: Buffer.from(value).toString("base64") };
}

/** `POST /v3/kv/put` on the v3 JSON gateway, which etcd 3.4 serves on its client port. */
export const etcdPut: RequestFactory = (key, value) => ({
  method: "POST",
  path: "/v3/kv/put",
  contentType: "application/json",
  body: Buffer.from(JSON.stringify(etcdPutBody(key, value))),
});
