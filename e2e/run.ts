// `npm run e2e -- --provider local|kind [--keep]`: runs the e2e scenarios against a cluster from
// the chosen provider. Scenarios see the cluster only through its kubeconfig.
import { parseArgs } from "node:util";
import { KindCluster } from "./providers/kind.js";
import { LocalCluster } from "./providers/local.js";
import type { ClusterHandle } from "./providers/types.js";
import { smokeScenario } from "./scenarios/smoke.js";

const SCENARIOS: Record<string, (c: ClusterHandle, log: (l: string) => void) => Promise<void>> = {
  smoke: (c, log) => smokeScenario(c, { log }),
};

const { values } = parseArgs({
  options: {
    provider: { type: "string", default: "local" },
    scenario: { type: "string", multiple: true },
    keep: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});

if (values.help) {
  console.log(`usage: npm run e2e -- [--provider local|kind] [--scenario NAME ...] [--keep]
  --provider local  a control plane built from Go modules, pods as local processes (needs Go, root)
  --provider kind   a kind cluster (needs Docker and kind; see e2e/README.md)
  --scenario        one of: ${Object.keys(SCENARIOS).join(", ")} (default: all)
  --keep            leave the cluster up afterwards (local: until Ctrl-C; kind: the cluster stays)`);
  process.exit(0);
}

const log = (l: string) => console.log(`${new Date().toISOString()} ${l}`);

async function main(): Promise<number> {
  const names = values.scenario ?? Object.keys(SCENARIOS);
  for (const n of names) if (!SCENARIOS[n]) throw new Error(`unknown scenario ${n}`);
  let cluster: ClusterHandle;
  if (values.provider === "local") {
    cluster = await LocalCluster.start({ log });
  } else if (values.provider === "kind") {
    cluster = await KindCluster.start({ deleteOnStop: !values.keep });
  } else {
    throw new Error(`unknown provider ${values.provider} (local or kind)`);
  }
  let failed = 0;
  try {
    for (const n of names) {
      log(`== scenario ${n} (${cluster.provider})`);
      try {
        await SCENARIOS[n]?.(cluster, log);
        log(`== scenario ${n}: passed`);
      } catch (e) {
        failed++;
        log(`== scenario ${n}: FAILED: ${(e as Error).stack ?? e}`);
      }
    }
  } finally {
    if (values.keep && cluster.provider === "local") {
      // The local cluster lives in this process: hold it until interrupted.
      log(`cluster kept until Ctrl-C: export KUBECONFIG=${cluster.kubeconfig}`);
      await new Promise<void>((resolve) => process.once("SIGINT", () => resolve()));
    }
    if (!values.keep || cluster.provider === "local") await cluster.stop();
    else log(`cluster kept: export KUBECONFIG=${cluster.kubeconfig}`);
  }
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    console.error(`error: ${e.message}`);
    process.exit(1);
  },
);
