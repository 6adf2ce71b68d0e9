// spec.storage changes after creation: the claim template stays, PVCs grow, shrinking and a new
// class are reported instead of applied.
import assert from "node:assert/strict";
import { test } from "node:test";
import { planStorage } from "../../src/reconcile/storage.js";

const claims = (...sizes: (string | number)[]) =>
  sizes.map((requested, i) => ({ name: `data-kv-${i}`, requested }));

test("before the StatefulSet exists the spec is the template", () => {
  assert.deepEqual(planStorage({ size: "2Gi", storageClassName: "fast" }, undefined, []), {
    template: { size: "2Gi", storageClassName: "fast" },
    grow: [],
    problems: [],
  });
});

test("an unchanged size in another notation changes nothing", () => {
  const p = planStorage({ size: "1024Mi" }, { size: "1Gi" }, claims("1Gi", 1073741824));
  assert.deepEqual(p, { template: { size: "1Gi" }, grow: [], problems: [] });
});

test("a larger size grows the PVCs that are smaller and keeps the template", () => {
  const p = planStorage({ size: "2Gi" }, { size: "1Gi" }, claims("1Gi", "2Gi", "1500Mi"));
  assert.deepEqual(p.template, { size: "1Gi" });
  assert.deepEqual(p.grow, [
    { pvc: "data-kv-0", size: "2Gi" },
    { pvc: "data-kv-2", size: "2Gi" },
  ]);
  assert.deepEqual(p.problems, []);
});

test("a smaller size is a problem naming the volumes, and nothing shrinks", () => {
  const p = planStorage({ size: "512Mi" }, { size: "1Gi" }, claims("1Gi", "1Gi"));
  assert.deepEqual(p.grow, []);
  assert.equal(p.problems.length, 1);
  assert.match(
    p.problems[0] ?? "",
    /512Mi is smaller than the members' volumes: data-kv-0 \(1Gi\), data-kv-1 \(1Gi\); volumes cannot shrink/,
  );
});

test("another storage class is a problem; the template keeps the old one", () => {
  const p = planStorage(
    { size: "1Gi", storageClassName: "fast" },
    { size: "1Gi", storageClassName: "standard" },
    claims("1Gi"),
  );
  assert.deepEqual(p.template, { size: "1Gi", storageClassName: "standard" });
  assert.match(
    p.problems[0] ?? "",
    /storageClassName "fast" differs from the members' volumes \("standard"\)/,
  );
});
