// Seeded whole-group simulations of the core. `SEED=n npm test` reruns one seed with its trace.

import assert from "node:assert/strict";
import { test } from "node:test";
import { runSimulation } from "./simulation.js";

const SEEDS = Number(process.env.SIM_SEEDS ?? 2000);

test("simulation: safety for every seed, progress once faults stop", () => {
  const only = process.env.SEED;
  if (only !== undefined) {
    const seed = Number(only);
    const result = runSimulation({
      seed,
      members: seed % 2 === 0 ? 3 : 5,
      faultsUntil: 2000,
      duration: 4000,
      trace: (line) => console.log(line),
    });
    console.log(result);
    return;
  }
  let acknowledged = 0;
  let elections = 0;
  let reads = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = runSimulation({ seed, members: seed % 2 === 0 ? 3 : 5, faultsUntil: 2000, duration: 4000 });
    acknowledged += r.acknowledged;
    elections += r.elections;
    reads += r.reads;
  }
  // The runs must have exercised something: writes acknowledged, masters changing, reads served.
  assert.ok(acknowledged > SEEDS * 50, `only ${acknowledged} acknowledged writes`);
  assert.ok(elections > SEEDS, `only ${elections} elections`);
  assert.ok(reads > SEEDS * 10, `only ${reads} reads`);
});
