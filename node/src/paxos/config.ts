// Membership: configurations, the one-step changes between them, and which configuration governs
// which instance. Pure functions over data; the rule and its safety argument are in README.md.

import type { ConfigChange, Configuration, Member, MemberId, MemberRole } from "./types.js";

/** Instances a master may keep in flight, and the delay before a chosen configuration governs. */
export const DEFAULT_ACTIVATION_DELAY = 32;

export function votersOf(c: Configuration): MemberId[] {
  return c.members.filter((m) => m.role === "voter").map((m) => m.name);
}

export function learnersOf(c: Configuration): MemberId[] {
  return c.members.filter((m) => m.role === "learner").map((m) => m.name);
}

export function roleOf(c: Configuration, name: MemberId): MemberRole | null {
  return c.members.find((m) => m.name === name)?.role ?? null;
}

export function isVoter(c: Configuration, name: MemberId): boolean {
  return roleOf(c, name) === "voter";
}

/** Votes needed to decide anything in `c`: a majority of its voters. */
export function majority(c: Configuration): number {
  return Math.floor(votersOf(c).length / 2) + 1;
}

/**
 * Answers a member without its state needs from the other voters of `c` before it votes: enough
 * that every majority has one of them among its members other than the newcomer.
 */
export function rejoinAnswersNeeded(c: Configuration): number {
  return votersOf(c).length - majority(c) + 1;
}

/** True when the voters of `c` found in `members` are a majority of its voters. */
export function hasMajority(c: Configuration, members: { has(name: MemberId): boolean }): boolean {
  let n = 0;
  for (const v of votersOf(c)) if (members.has(v)) n++;
  return n >= majority(c);
}

export function sameConfiguration(a: Configuration, b: Configuration): boolean {
  if (a.members.length !== b.members.length) return false;
  return a.members.every((m) => {
    const o = b.members.find((x) => x.name === m.name);
    return o !== undefined && o.role === m.role && o.address === m.address;
  });
}

export function describeChange(change: ConfigChange): string {
  switch (change.kind) {
    case "addLearner":
      return `add learner ${change.name} (${change.address})`;
    case "promote":
      return `promote ${change.name}`;
    case "remove":
      return `remove ${change.name}`;
  }
}

export type ChangeCheck =
  | { readonly ok: true; readonly config: Configuration }
  | { readonly ok: false; readonly reason: "invalid" | "no_quorum"; readonly message: string };

/**
 * The configuration `change` leads to from `current`, or why it is refused. `live` holds the
 * members known to be up (the master counts peers that answered it recently, and itself): a change
 * of voters is refused when the live voters of the new configuration would not be a majority of
 * it, since the group would then stop deciding anything.
 */
export function validateChange(
  current: Configuration,
  change: ConfigChange,
  live: { has(name: MemberId): boolean },
): ChangeCheck {
  const invalid = (message: string): ChangeCheck => ({ ok: false, reason: "invalid", message });
  const role = roleOf(current, change.name);
  if (change.name === "") return invalid("a member name must not be empty");
  let members: Member[];
  switch (change.kind) {
    case "addLearner":
      if (role !== null) return invalid(`${change.name} is already a member (${role})`);
      if (change.address === "") return invalid(`learner ${change.name} needs an address`);
      members = [...current.members, { name: change.name, address: change.address, role: "learner" }];
      break;
    case "promote":
      if (role === null) return invalid(`${change.name} is not a member`);
      if (role === "voter") return invalid(`${change.name} is already a voter`);
      members = current.members.map((m) => (m.name === change.name ? { ...m, role: "voter" as const } : m));
      break;
    case "remove":
      if (role === null) return invalid(`${change.name} is not a member`);
      // Not malformed, just impossible for this group: the same answer as any other change that
      // would leave the group unable to decide.
      if (role === "voter" && votersOf(current).length === 1) {
        return { ok: false, reason: "no_quorum", message: `removing ${change.name} would leave no voter` };
      }
      members = current.members.filter((m) => m.name !== change.name);
      break;
  }
  const next: Configuration = { members };
  if (role === "voter" || change.kind === "promote") {
    const voters = votersOf(next);
    const up = voters.filter((v) => live.has(v));
    if (up.length < majority(next)) {
      const down = voters.filter((v) => !live.has(v));
      return {
        ok: false,
        reason: "no_quorum",
        message:
          `after "${describeChange(change)}" the ${voters.length} voters need ${majority(next)} live, ` +
          `but only ${up.length} answer (${up.join(", ") || "none"}; not answering: ${down.join(", ")})`,
      };
    }
  }
  return { ok: true, config: next };
}

/** True when `next` is `prev` changed by exactly one step (one learner added, promoted or one member removed). */
export function isOneStep(prev: Configuration, next: Configuration): boolean {
  const removed = prev.members.filter((m) => roleOf(next, m.name) === null);
  const added = next.members.filter((m) => roleOf(prev, m.name) === null);
  const promoted = next.members.filter((m) => m.role === "voter" && roleOf(prev, m.name) === "learner");
  const demoted = next.members.filter((m) => m.role === "learner" && roleOf(prev, m.name) === "voter");
  const steps = removed.length + added.length + promoted.length + demoted.length;
  return steps === 1 && demoted.length === 0 && added.every((m) => m.role === "learner");
}

/** A configuration and the instances it governs. */
export interface ConfigEntry {
  /** Instance whose chosen value is this configuration; -1 for the initial one. */
  readonly chosenAt: number;
  /** First instance it governs: `chosenAt + activationDelay` (0 for the initial one). */
  readonly since: number;
  readonly config: Configuration;
}

/**
 * The configurations of the chosen log, oldest first. The configuration of instance j is the last
 * one with `since <= j`: it depends only on instances <= j - activationDelay, so whoever knows the
 * log up to there knows the quorum of j.
 */
export class ConfigHistory {
  private entries: ConfigEntry[];

  constructor(
    initial: Configuration,
    readonly activationDelay: number,
  ) {
    this.entries = [{ chosenAt: -1, since: 0, config: initial }];
  }

  /** Record the configuration chosen at `instance` (called in instance order, once per instance). */
  add(instance: number, config: Configuration): void {
    const last = this.latest;
    if (instance <= last.chosenAt) return;
    this.entries.push({ chosenAt: instance, since: instance + this.activationDelay, config });
  }

  get latest(): ConfigEntry {
    return this.entries[this.entries.length - 1]!;
  }

  entryAt(instance: number): ConfigEntry {
    for (let i = this.entries.length - 1; i > 0; i--) {
      const e = this.entries[i]!;
      if (e.since <= instance) return e;
    }
    return this.entries[0]!;
  }

  at(instance: number): Configuration {
    return this.entryAt(instance).config;
  }

  /** Distinct configurations governing some instance in [from, to], oldest first. */
  between(from: number, to: number): Configuration[] {
    const first = this.entryAt(from);
    return this.entries.filter((e) => e === first || (e.since > from && e.since <= to)).map((e) => e.config);
  }

  /** Configurations governing some instance >= from (the one in force there and any pending). */
  from(instance: number): Configuration[] {
    return this.between(instance, Number.POSITIVE_INFINITY);
  }

  /** Forget configurations that govern no instance >= `instance`. */
  prune(instance: number): void {
    const keep = this.entryAt(instance);
    const i = this.entries.indexOf(keep);
    if (i > 0) this.entries = this.entries.slice(i);
  }

  all(): readonly ConfigEntry[] {
    return this.entries;
  }
}
