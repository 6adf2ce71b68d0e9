// The smoke scenario on the local provider: StatefulSet + PVCs + headless-Service DNS + pod
// recreation with its data + garbage collection, through the kubeconfig only.
import { after, before, test } from "node:test";
import type { LocalCluster } from "../providers/local.js";
import { smokeScenario } from "../scenarios/smoke.js";
import { startCluster, stopCluster } from "./helpers.js";

let cluster: LocalCluster | undefined;

before(async () => {
  cluster = await startCluster();
});

after(async () => {
  await stopCluster(cluster);
});

test("StatefulSet with PVCs and a headless Service: Ready, Bound, DNS, recreate with data, GC", async () => {
  if (!cluster) throw new Error("no cluster");
  await smokeScenario(cluster, {
    log: (l) => {
      if (process.env.E2E_VERBOSE !== undefined) process.stderr.write(`smoke: ${l}\n`);
    },
  });
});
