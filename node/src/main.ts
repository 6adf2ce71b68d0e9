// Process entry of paxos-node: configuration (flags > env > defaults) -> runtime + HTTP server.
// Exit codes (DESIGN.md): 0 clean shutdown on SIGTERM/SIGINT, 75 checkpoint loaded (restart me),
// 1 fatal error with the reason in the termination log.

import { writeFileSync } from "node:fs";
import { pino } from "pino";
import { ConfigError, parseConfig, readToken, resolveTerminationLog } from "./config.js";
import { NodeRuntime } from "./runtime/node-runtime.js";
import { startHttpServer } from "./server/http-server.js";
import { createMetrics } from "./server/metrics.js";

export const EXIT_OK = 0;
export const EXIT_FATAL = 1;

function writeTerminationLog(path: string | undefined, line: string): void {
  if (path === undefined) return;
  try {
    writeFileSync(path, `${line}\n`);
  } catch {
    // Best effort: the reason is in the logs too.
  }
}

async function main(): Promise<void> {
  let parsed: ReturnType<typeof parseConfig>;
  try {
    parsed = parseConfig(process.argv.slice(2), process.env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    process.stderr.write(`paxos-node: ${e.message}\nRun with --help for the list of flags.\n`);
    writeTerminationLog(resolveTerminationLog(undefined), `config: ${e.message}`);
    process.exit(EXIT_FATAL);
  }
  if ("help" in parsed) {
    process.stdout.write(parsed.help);
    return;
  }
  const config = parsed;
  const terminationLog = resolveTerminationLog(config.terminationLog);
  const logger = pino({ level: config.logLevel, base: { member: config.member, group: config.group } });

  const die = (reason: string, err?: unknown): never => {
    logger.fatal({ err }, reason);
    writeTerminationLog(terminationLog, reason);
    process.exit(EXIT_FATAL);
  };
  process.on("uncaughtException", (err) => die(`uncaught exception: ${err.message}`, err));
  process.on("unhandledRejection", (err) => die(`unhandled rejection: ${String(err)}`, err));

  let token: string | undefined;
  try {
    token = config.tokenFile !== undefined ? readToken(config.tokenFile) : undefined;
  } catch (e) {
    die(`token file: ${(e as Error).message}`);
  }

  const metrics = createMetrics({ member: config.member, group: config.group });
  let runtime: NodeRuntime;
  try {
    runtime = await NodeRuntime.open({
      member: config.member,
      group: config.group,
      peers: new Map(config.peers.map((p) => [p.name, p.address])),
      dataDir: config.dataDir,
      host: config.host,
      peerPort: config.peerPort,
      ...(token !== undefined ? { token } : {}),
      holdCount: config.holdCount,
      logger,
      metrics,
      onFatal: (e) => die(`storage failure: ${e.message}`, e),
    });
    await runtime.start();
  } catch (e) {
    return die(`cannot start: ${(e as Error).message}`, e);
  }
  const http = await startHttpServer({
    host: config.host,
    port: config.httpPort,
    service: runtime,
    metrics,
    logger: logger.child({ component: "http" }),
    ...(token !== undefined ? { token } : {}),
  }).catch((e: Error) => die(`cannot listen on the HTTP port ${config.httpPort}: ${e.message}`, e));
  logger.info(
    { peerPort: runtime.peerPort, httpPort: http.port, peers: config.peers.map((p) => p.name) },
    "paxos-node serving",
  );

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down: finishing in-flight requests");
    try {
      await http.close();
      await runtime.close();
    } catch (e) {
      die(`unclean shutdown: ${(e as Error).message}`, e);
    }
    logger.info("stopped cleanly");
    logger.flush?.();
    process.exit(EXIT_OK);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
}

await main();
