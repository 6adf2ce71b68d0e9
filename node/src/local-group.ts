// `npm start`: a local group of three paxos-node processes on 127.0.0.1, stopped together on
// Ctrl-C. Each member's log lines go to <data-dir>/<member>.log.

import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const HELP = `npm start [-- options]: run a local three-member paxos-node group on 127.0.0.1

  --data-dir DIR     where the members keep their data and logs (default .local-group)
  --peer-port N      first peer port; members use N, N+1, N+2 (default 7071)
  --http-port N      first HTTP port; members use N, N+1, N+2 (default 8081)
  --members N        group size (default 3)
  --clean            delete the data directory first
  --help             this text
`;

const { values } = parseArgs({
  options: {
    "data-dir": { type: "string", default: ".local-group" },
    "peer-port": { type: "string", default: "7071" },
    "http-port": { type: "string", default: "8081" },
    members: { type: "string", default: "3" },
    clean: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const size = Number(values.members);
const peerPort = Number(values["peer-port"]);
const httpPort = Number(values["http-port"]);
for (const [name, v] of [
  ["--members", size],
  ["--peer-port", peerPort],
  ["--http-port", httpPort],
] as const) {
  if (!Number.isInteger(v) || v < 1 || v > 65535) {
    process.stderr.write(`${name} must be a positive integer, got ${JSON.stringify(v)}\n`);
    process.exit(2);
  }
}

const dataDir = resolve(values["data-dir"]);
if (values.clean) rmSync(dataDir, { recursive: true, force: true });
mkdirSync(dataDir, { recursive: true });
const main = join(dirname(fileURLToPath(import.meta.url)), "main.js");
const members = Array.from({ length: size }, (_, i) => ({
  name: `n${i + 1}`,
  peerPort: peerPort + i,
  httpPort: httpPort + i,
}));
const peers = members.map((m) => `${m.name}=127.0.0.1:${m.peerPort}`).join(",");

const children = members.map((m) => {
  const log = createWriteStream(join(dataDir, `${m.name}.log`), { flags: "a" });
  const child = spawn(
    process.execPath,
    [
      main,
      `--member=${m.name}`,
      `--peers=${peers}`,
      `--peer-port=${m.peerPort}`,
      `--http-port=${m.httpPort}`,
      `--host=127.0.0.1`,
      `--data-dir=${join(dataDir, m.name)}`,
      `--termination-log=${join(dataDir, `${m.name}.termination-log`)}`,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  child.on("exit", (code, signal) => {
    if (!stopping) {
      process.stderr.write(
        `${m.name} exited (code ${code}, signal ${signal}); see ${join(dataDir, `${m.name}.log`)}\n`,
      );
    }
  });
  return child;
});

process.stdout.write(
  `Local paxos group (data and logs in ${dataDir}):\n` +
    members.map((m) => `  ${m.name}  http://127.0.0.1:${m.httpPort}  peers on :${m.peerPort}\n`).join("") +
    `\nTry:\n` +
    `  curl -X PUT --data-binary 'hello' http://127.0.0.1:${httpPort}/v1/kv/greeting\n` +
    `  curl http://127.0.0.1:${httpPort + 1}/v1/kv/greeting\n` +
    `  curl http://127.0.0.1:${httpPort}/v1/status\n` +
    `\nCtrl-C stops all members.\n`,
);

let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  process.stdout.write("\nstopping the group...\n");
  for (const c of children) c.kill("SIGTERM");
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

await Promise.all(
  children.map(
    (c) =>
      new Promise<void>((r) => {
        if (c.exitCode !== null || c.signalCode !== null) r();
        else c.on("exit", () => r());
      }),
  ),
);
process.stdout.write("all members stopped\n");
