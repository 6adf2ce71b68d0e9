// A spec.storage change after the StatefulSet exists. Its volumeClaimTemplates cannot change (the
// API server refuses the whole update), so the StatefulSet keeps the claim it was made with and a
// larger size goes to each member's PVC instead: volume expansion, where the StorageClass allows it.
// A smaller size or another class cannot be honoured and is reported, never applied.
import { quantityToBytes } from "./desired.js";

export interface StorageSpec {
  size: string;
  storageClassName?: string;
}

export interface ClaimView {
  name: string;
  /** spec.resources.requests.storage */
  requested: string | number | undefined;
}

export interface StoragePlan {
  /** The claim template to apply: the StatefulSet's own once it exists. */
  template: StorageSpec;
  /** PVCs to grow to the spec's size. */
  grow: { pvc: string; size: string }[];
  problems: string[];
}

export function planStorage(
  spec: StorageSpec,
  existing: StorageSpec | undefined,
  claims: readonly ClaimView[],
): StoragePlan {
  if (!existing) return { template: spec, grow: [], problems: [] };
  const problems: string[] = [];
  if ((spec.storageClassName ?? "") !== (existing.storageClassName ?? "")) {
    problems.push(
      `spec.storage.storageClassName "${spec.storageClassName ?? ""}" differs from the members' volumes ` +
        `("${existing.storageClassName ?? ""}"); a volume cannot change its class`,
    );
  }
  const want = quantityToBytes(spec.size, "spec.storage.size");
  const grow: StoragePlan["grow"] = [];
  const larger: string[] = [];
  for (const c of claims) {
    if (c.requested === undefined) continue;
    const have = quantityToBytes(c.requested, `PVC ${c.name} storage request`);
    if (have < want) grow.push({ pvc: c.name, size: spec.size });
    if (have > want) larger.push(`${c.name} (${c.requested})`);
  }
  if (larger.length > 0 || want < quantityToBytes(existing.size, "the StatefulSet's claim size")) {
    problems.push(
      `spec.storage.size ${spec.size} is smaller than the members' volumes` +
        `${larger.length > 0 ? `: ${larger.join(", ")}` : ` (${existing.size})`}; volumes cannot shrink`,
    );
  }
  return { template: existing, grow, problems };
}
