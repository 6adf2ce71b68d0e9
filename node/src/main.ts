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
export const EXIT_CHECKPOINT_LOADED = 75;

// Test hooks, off unless set: corrupt this chunk (0-based) of the first checkpoint this member
// sends; delay every checkpoint chunk it sends by this many milliseconds.
const CORRUPT_CHUNK_ENV = "PAXOS_TEST_CORRUPT_CHECKPOINT_CHUNK";
const CHUNK_DELAY_ENV = "PAXOS_TEST_CHECKPOINT_CHUNK_DELAY_MS";

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
  const testHook = (name: string): number | undefined => {
    const v = process.env[name];
    if (v === undefined || v === "") return undefined;
    if (!/^\d+$/.test(v)) die(`${name} must be an integer >= 0`);
    logger.warn({ [name]: v }, "test hook enabled");
    return Number(v);
  };
  const corruptChunk = testHook(CORRUPT_CHUNK_ENV);
  const chunkDelay = testHook(CHUNK_DELAY_ENV);
  let stopping = false;
  let stopHttp = async (): Promise<void> => {};
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
      checkpointEvery: config.checkpointEvery,
      checkpointMinIntervalMs: config.checkpointMinIntervalMs,
      ...(config.maxLogSize !== undefined ? { maxLogSize: config.maxLogSize } : {}),
      ...(corruptChunk !== undefined ? { corruptChunkForTest: corruptChunk } : {}),
      ...(chunkDelay !== undefined ? { chunkDelayMsForTest: chunkDelay } : {}),
      logger,
      metrics,
      onFatal: (e) => die(`storage failure: ${e.message}`, e),
      onCheckpointLoaded: (instance, from) => {
        if (stopping) return;
        stopping = true;
        const line = `checkpoint-loaded instance=${instance} from=${from}`;
        logger.info({ instance, from }, "checkpoint loaded; exiting so that the member restarts from it");
        writeTerminationLog(terminationLog, line);
        // The checkpoint is installed on disk already: a failure while closing changes nothing.
        void (async () => {
          await stopHttp().catch(() => {});
          await runtime
            .close()
            .catch((e: Error) => logger.warn({ err: e }, "closing after a checkpoint load"));
          logger.flush?.();
          process.exit(EXIT_CHECKPOINT_LOADED);
        })();
      },
    });
    await runtime.start();
  } catch (e) {
    return die(`cannot start: ${(e as Error).message}`, e);
  }
  const http = await startHttpServer({
    host: config.host,
    port: config.httpPort,
    service: runtime,
    admin: runtime.adminRoutes(),
    metrics,
    logger: logger.child({ component: "http" }),
    ...(token !== undefined ? { token } : {}),
  }).catch((e: Error) => die(`cannot listen on the HTTP port ${config.httpPort}: ${e.message}`, e));
  stopHttp = () => http.close();
  logger.info(
    { peerPort: runtime.peerPort, httpPort: http.port, peers: config.peers.map((p) => p.name) },
    "paxos-node serving",
  );

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
