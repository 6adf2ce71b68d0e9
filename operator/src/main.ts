// paxos-operator entry point: configuration from the environment, informers feeding one work queue,
// the PaxosGroup reconciler run under leader election, and an HTTP server for probes and metrics.
import http from "node:http";
import os from "node:os";
import { KubeConfig } from "@kubernetes/client-node";
import { pino } from "pino";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { API_VERSION, PLURAL } from "./api/paxos-group.js";
import { Informer, objectKey } from "./controller/informer.js";
import { LeaderElector } from "./controller/leader-election.js";
import { Manager } from "./controller/manager.js";
import { type KubeObject, KubeRest } from "./controller/rest.js";
import { WorkQueue } from "./controller/work-queue.js";
import { STEP_KINDS, type Step, type StepKind } from "./reconcile/plan.js";
import { PaxosGroupReconciler } from "./reconcile/reconciler.js";

interface Config {
  namespace: string;
  watchNamespace: string | undefined;
  image: string;
  leaderElect: boolean;
  identity: string;
  metricsPort: number;
  /** Test-only: the plan step after which the process kills itself (PAXOS_OPERATOR_TEST_CRASH_AFTER). */
  crashAfter: StepKind | undefined;
  /** Undefined: every interface. */
  metricsHost: string | undefined;
}

function readConfig(env: NodeJS.ProcessEnv): Config {
  const leaderElect = (env.LEADER_ELECT ?? "true").toLowerCase();
  if (!["true", "false"].includes(leaderElect)) {
    throw new Error(`LEADER_ELECT must be "true" or "false", got "${env.LEADER_ELECT}"`);
  }
  const port = Number(env.METRICS_PORT ?? "9090");
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`METRICS_PORT must be a port number, got "${env.METRICS_PORT}"`);
  }
  const crashAfter = env.PAXOS_OPERATOR_TEST_CRASH_AFTER || undefined;
  if (crashAfter !== undefined && !STEP_KINDS.includes(crashAfter as StepKind)) {
    throw new Error(
      `PAXOS_OPERATOR_TEST_CRASH_AFTER must be one of ${STEP_KINDS.join(", ")}, got "${crashAfter}"`,
    );
  }
  const namespace = env.POD_NAMESPACE;
  if (!namespace) throw new Error("POD_NAMESPACE is required (the namespace of the leader election Lease)");
  return {
    namespace,
    watchNamespace: env.WATCH_NAMESPACE || undefined,
    image: env.PAXOS_NODE_IMAGE || "paxos-node:0.1.0",
    leaderElect: leaderElect === "true",
    identity: env.POD_NAME || `${os.hostname()}-${process.pid}`,
    metricsPort: port,
    crashAfter: crashAfter as StepKind | undefined,
    metricsHost: env.METRICS_HOST || undefined,
  };
}

const MANAGED_BY = "app.kubernetes.io/managed-by=paxos-operator";

/** The group a managed object belongs to: its `app.kubernetes.io/instance` label names it. */
function groupKey(obj: KubeObject): string | undefined {
  const instance = obj.metadata.labels?.["app.kubernetes.io/instance"];
  return instance && obj.metadata.namespace ? `${obj.metadata.namespace}/${instance}` : undefined;
}

/**
 * Whether an update of a PaxosGroup asks for a reconcile. Status-only updates do not: they are
 * mostly the operator's own status writes, and reconciling after each of them loops for as long as
 * the members' instance numbers keep moving (writes under way), a reconcile every few hundred ms.
 */
function groupChanged(oldObj: KubeObject, newObj: KubeObject): boolean {
  const a = oldObj.metadata;
  const b = newObj.metadata;
  const same = (x: unknown, y: unknown) => JSON.stringify(x ?? null) === JSON.stringify(y ?? null);
  return (
    a.generation !== b.generation ||
    a.deletionTimestamp !== b.deletionTimestamp ||
    !same(a.labels, b.labels) ||
    !same(a.annotations, b.annotations) ||
    !same(a.finalizers, b.finalizers)
  );
}

async function main(): Promise<void> {
  const log = pino({ name: "paxos-operator", level: process.env.LOG_LEVEL ?? "info" });
  const config = readConfig(process.env);
  // In a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config.
  const kc = new KubeConfig();
  kc.loadFromDefault();
  const rest = await KubeRest.fromKubeConfig(kc);

  const registry = new Registry();
  const reconciles = new Counter({
    name: "paxos_operator_reconciles_total",
    help: "Reconciles run, by result",
    labelNames: ["result"],
    registers: [registry],
  });
  const errors = new Counter({
    name: "paxos_operator_reconcile_errors_total",
    help: "Reconciles that failed (retried with backoff)",
    registers: [registry],
  });
  const latency = new Histogram({
    name: "paxos_operator_reconcile_duration_seconds",
    help: "Time one reconcile takes",
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const queue = new WorkQueue();
  new Gauge({
    name: "paxos_operator_queue_depth",
    help: "Keys waiting in the work queue",
    registers: [registry],
    collect() {
      this.set(queue.len());
    },
  });

  const reconciler = new PaxosGroupReconciler({
    rest,
    defaultImage: config.image,
    logger: log,
    ...(config.crashAfter
      ? {
          // Lets tests stop the operator between two steps the way a crash would: no cleanup at all.
          afterStep: (step: Step) => {
            if (step.kind !== config.crashAfter) return;
            log.fatal({ step }, "PAXOS_OPERATOR_TEST_CRASH_AFTER: killing the operator after this step");
            process.kill(process.pid, "SIGKILL");
          },
        }
      : {}),
  });
  const reconcile = async (key: string) => {
    const end = latency.startTimer();
    try {
      const result = await reconciler.reconcile(key);
      reconciles.inc({ result: "success" });
      return result;
    } catch (e) {
      reconciles.inc({ result: "error" });
      errors.inc();
      throw e;
    } finally {
      end();
    }
  };

  const enqueueGroup = (obj: KubeObject) => queue.add(objectKey(obj));
  const enqueueOwner = (obj: KubeObject) => {
    const key = groupKey(obj);
    if (key) queue.add(key);
  };
  const ns = config.watchNamespace;
  const informers = [
    new Informer(rest, {
      path: `/apis/${API_VERSION}/${PLURAL}`,
      ...(ns ? { namespace: ns } : {}),
      logger: log,
      handlers: {
        onAdd: enqueueGroup,
        onUpdate: (o, n) => {
          if (groupChanged(o, n)) enqueueGroup(n);
        },
        onDelete: enqueueGroup,
      },
    }),
    ...["/apis/apps/v1/statefulsets", "/api/v1/pods"].map(
      (path) =>
        new Informer(rest, {
          path,
          ...(ns ? { namespace: ns } : {}),
          labelSelector: MANAGED_BY,
          logger: log,
          handlers: { onAdd: enqueueOwner, onUpdate: (_o, n) => enqueueOwner(n), onDelete: enqueueOwner },
        }),
    ),
  ];

  let ready = false;
  const server = http.createServer((req, res) => {
    const url = req.url ?? "/";
    if (url === "/healthz") {
      res.writeHead(200).end("ok\n");
    } else if (url === "/readyz") {
      // Ready once this process can act: not leading yet still counts (standby replicas are healthy).
      res.writeHead(ready ? 200 : 503).end(ready ? "ok\n" : "starting\n");
    } else if (url === "/metrics") {
      registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
        (e: unknown) => res.writeHead(500).end(String(e)),
      );
    } else {
      res.writeHead(404).end("not found\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    // METRICS_HOST (e.g. the pod IP) is for pods that share one network stack, as on the e2e
    // suite's local provider, where every operator pod listening on all interfaces would collide.
    server.listen(config.metricsPort, config.metricsHost, resolve);
  });
  log.info({ port: config.metricsPort, ...config }, "paxos-operator starting");

  const stop = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    log.info({ signal }, "shutting down");
    stop.abort();
  };
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);

  /** Runs the controller until `signal` aborts. */
  const runManager = async (signal: AbortSignal) => {
    const manager = new Manager({ queue, reconcile, informers, logger: log, workers: 2 });
    const stopped = new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      signal.addEventListener("abort", () => resolve(), { once: true });
    });
    await Promise.race([manager.start(), stopped]);
    await stopped;
    await manager.stop();
  };

  ready = true;
  try {
    if (config.leaderElect) {
      const elector = new LeaderElector(rest, {
        namespace: config.namespace,
        name: "paxos-operator",
        identity: config.identity,
        logger: log,
        onStartedLeading: runManager,
        onNewLeader: (leader) => log.info({ leader }, "another operator leads"),
      });
      await elector.run(stop.signal);
      if (!stop.signal.aborted) {
        // Work started while leading must not continue unguarded: exit and let a restart campaign again.
        log.error({}, "lost leadership; exiting");
        process.exitCode = 1;
      }
    } else {
      await runManager(stop.signal);
    }
  } finally {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    rest.close();
    log.info({}, "paxos-operator stopped");
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`paxos-operator: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
