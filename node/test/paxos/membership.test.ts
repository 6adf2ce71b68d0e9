// Membership changes and handovers through the core's public surface, on a small loss-free
// network driven step by step (the seeded simulation covers the faults).

import assert from "node:assert/strict";
import { test } from "node:test";
import { type AdminFailure, type AdminResult, type CoreEvent, PaxosCore } from "../../src/paxos/core.js";
import type { ConfigChange, Envelope, MemberId, Value } from "../../src/paxos/types.js";
import { ZERO_BALLOT } from "../../src/paxos/types.js";

const TICK_MS = 10;

type AdminEvent = { type: "proposeConfig"; change: ConfigChange } | { type: "transferMaster"; to: MemberId };
const ACTIVATION_DELAY = 4;

/** Members on a perfect network: messages arrive in order at once, every persist succeeds. */
class Group {
  private readonly cores = new Map<MemberId, PaxosCore>();
  private readonly logs = new Map<MemberId, Map<number, Value>>();
  private readonly inbox: { from: MemberId; env: Envelope }[] = [];
  readonly down = new Set<MemberId>();
  /** Sides of a network partition: members on different sides cannot talk. */
  private sides: Map<MemberId, number> | null = null;
  /** What each member executed: instance -> value id. */
  private readonly executed = new Map<MemberId, Map<number, string>>();
  readonly done: AdminResult[] = [];
  readonly failed: AdminFailure[] = [];
  readonly acknowledged: number[] = [];
  private now = 0;
  private nextRequestId = 1;

  add(self: MemberId, voters: MemberId[], learners: MemberId[] = []): void {
    this.logs.set(self, new Map());
    this.executed.set(self, new Map());
    this.cores.set(
      self,
      new PaxosCore({
        self,
        voters,
        learners,
        incarnation: "1",
        random: () => 0.5,
        now: this.now,
        recovered: { promised: ZERO_BALLOT, chosenUpTo: -1, unchosen: [] },
        timing: { heartbeatMs: 20, electionTimeoutMs: 100, retryMs: 40 },
        window: ACTIVATION_DELAY,
        activationDelay: ACTIVATION_DELAY,
      }),
    );
  }

  core(name: MemberId): PaxosCore {
    return this.cores.get(name)!;
  }

  step(name: MemberId, event: CoreEvent): void {
    const core = this.core(name);
    core.step(event);
    const rd = core.ready();
    const log = this.logs.get(name)!;
    for (const rec of rd.persist?.records ?? []) if (rec.chosen) log.set(rec.instance, rec.value);
    for (const env of [...rd.sendNow, ...rd.send]) this.inbox.push({ from: name, env });
    for (const c of rd.committed) {
      this.executed.get(name)!.set(c.instance, c.value.id);
      if (c.requestIds !== null) this.acknowledged.push(...c.requestIds);
    }
    this.done.push(...rd.adminDone);
    this.failed.push(...rd.adminFailed);
    for (const load of rd.loads) {
      const entries = [];
      for (let i = load.from; log.has(i) && entries.length < 64; i++)
        entries.push({ instance: i, value: log.get(i)! });
      this.step(name, { type: "learnLoaded", to: load.to, entries });
    }
  }

  private deliver(): void {
    for (let n = 0; this.inbox.length > 0; n++) {
      assert.ok(n < 100_000, "messages never stop");
      const { from, env } = this.inbox.shift()!;
      if (this.down.has(env.to) || this.down.has(from) || !this.cores.has(env.to)) continue;
      if (this.sides !== null && this.sides.get(from) !== this.sides.get(env.to)) continue;
      this.step(env.to, { type: "receive", from, message: env.message });
    }
  }

  run(ms: number): void {
    for (let t = 0; t < ms; t += TICK_MS) {
      this.now += TICK_MS;
      for (const name of this.cores.keys()) {
        if (!this.down.has(name)) this.step(name, { type: "tick", now: this.now });
      }
      this.deliver();
    }
  }

  /** Runs until `done` holds, at most `ms`. */
  runUntil(done: () => boolean, ms = 3000): void {
    for (let t = 0; t < ms && !done(); t += TICK_MS) this.run(TICK_MS);
    assert.ok(done(), "the group did not get there in time");
  }

  partition(groups: MemberId[][] | null): void {
    this.sides = groups === null ? null : new Map(groups.flatMap((g, i) => g.map((n) => [n, i] as const)));
  }

  /** No instance was executed with two different values anywhere. */
  assertAgreement(): void {
    const chosen = new Map<number, string>();
    for (const [name, log] of this.executed) {
      for (const [instance, id] of log) {
        const other = chosen.get(instance);
        assert.ok(
          other === undefined || other === id,
          `${name} executed ${id} at ${instance}, others ${other}`,
        );
        chosen.set(instance, id);
      }
    }
  }

  master(): MemberId | null {
    const masters = [...this.cores].filter(([n, c]) => !this.down.has(n) && c.status().role === "master");
    return masters.length === 1 ? masters[0]![0] : null;
  }

  request(name: MemberId, event: AdminEvent): number {
    const requestId = this.nextRequestId++;
    // Not delivered yet: two requests in a row are concurrent.
    this.step(name, { ...event, requestId });
    return requestId;
  }

  write(name: MemberId): number {
    const requestId = this.nextRequestId++;
    this.step(name, { type: "propose", requestId, command: new TextEncoder().encode(`w${requestId}`) });
    this.deliver();
    return requestId;
  }

  outcome(requestId: number): AdminResult | AdminFailure | undefined {
    return (
      this.done.find((d) => d.requestId === requestId) ?? this.failed.find((f) => f.requestId === requestId)
    );
  }
}

function voters(core: PaxosCore): string[] {
  return core
    .status()
    .configuration.members.filter((m) => m.role === "voter")
    .map((m) => m.name)
    .sort();
}

test("a learner joins, catches up, is promoted; the master removes itself and hands over", () => {
  const g = new Group();
  g.add("a", ["a"]);
  g.runUntil(() => g.master() === "a");
  for (let i = 0; i < 10; i++) g.write("a");
  g.run(50);
  assert.equal(g.core("a").quorum, 1);

  // The joining member knows the voters and itself, as a learner.
  g.add("b", ["a"], ["b"]);
  const add = g.request("a", {
    type: "proposeConfig",
    change: { kind: "addLearner", name: "b", address: "b:7070" },
  });
  g.runUntil(() => g.outcome(add) !== undefined);
  assert.ok("instance" in g.outcome(add)!, JSON.stringify(g.outcome(add)));
  // The master sees the learner's lag shrink to nothing as its acknowledgements come in.
  const row = () =>
    g
      .core("a")
      .status()
      .members.find((m) => m.name === "b")!;
  g.runUntil(() => row().lag === 0);
  assert.deepEqual([row().role, row().live], ["learner", true]);
  assert.equal(g.core("b").status().chosenUpTo, g.core("a").status().chosenUpTo);
  assert.equal(g.core("b").status().role, "follower");

  const promote = g.request("a", { type: "proposeConfig", change: { kind: "promote", name: "b" } });
  g.runUntil(() => g.outcome(promote) !== undefined);
  assert.ok("instance" in g.outcome(promote)!, JSON.stringify(g.outcome(promote)));
  assert.deepEqual(voters(g.core("a")), ["a", "b"]);
  assert.equal(g.core("a").quorum, 2);
  const s = g.core("a").status().configuration;
  assert.equal(s.pending, null);
  assert.equal(s.since, (g.outcome(promote) as AdminResult).instance + ACTIVATION_DELAY);

  const remove = g.request("a", { type: "proposeConfig", change: { kind: "remove", name: "a" } });
  g.runUntil(() => g.master() === "b");
  assert.deepEqual(voters(g.core("b")), ["b"]);
  assert.ok(g.outcome(remove) !== undefined && "instance" in g.outcome(remove)!);
  // The removed member knows it and stays quiet; writes go on at the new master.
  g.run(500);
  assert.equal(g.master(), "b");
  assert.equal(g.core("a").status().role, "follower");
  const w = g.write("b");
  g.runUntil(() => g.acknowledged.includes(w));
});

test("changes are refused: not the master, one at a time, invalid, no live quorum", () => {
  const g = new Group();
  for (const n of ["a", "b", "c"]) g.add(n, ["a", "b", "c"]);
  g.runUntil(() => g.master() !== null);
  const master = g.master()!;
  const follower = ["a", "b", "c"].find((n) => n !== master)!;

  const cases: [MemberId, ConfigChange, string, RegExp][] = [
    [follower, { kind: "addLearner", name: "d", address: "d:1" }, "not_master", /not the master/],
    [master, { kind: "promote", name: "a" }, "invalid", /already a voter/],
    [master, { kind: "remove", name: "zz" }, "invalid", /zz is not a member/],
  ];
  for (const [at, change, reason, message] of cases) {
    const id = g.request(at, { type: "proposeConfig", change });
    const f = g.failed.find((x) => x.requestId === id);
    assert.equal(f?.reason, reason, JSON.stringify(change));
    assert.match(f!.message, message);
  }

  // Two concurrent requests: the first is taken, the second refused.
  const first = g.request(master, {
    type: "proposeConfig",
    change: { kind: "addLearner", name: "d", address: "d:1" },
  });
  const second = g.request(master, {
    type: "proposeConfig",
    change: { kind: "addLearner", name: "e", address: "e:1" },
  });
  assert.equal(g.failed.find((x) => x.requestId === second)?.reason, "conflict");
  g.runUntil(() => g.outcome(first) !== undefined);
  assert.ok("instance" in g.outcome(first)!);

  // d was never started: promoting it would need 3 live of 4 voters, and one voter is down too.
  const other = ["a", "b", "c"].find((n) => n !== master && n !== follower)!;
  g.down.add(other);
  g.run(300);
  const promote = g.request(master, { type: "proposeConfig", change: { kind: "promote", name: "d" } });
  const f = g.failed.find((x) => x.requestId === promote);
  assert.equal(f?.reason, "no_quorum");
  assert.match(f!.message, new RegExp(`not answering: .*${other}`));
  assert.equal(g.core(master).status().configuration.members.length, 4, "nothing changed");
});

test("transferMaster hands over to a caught-up voter; bad targets are refused", () => {
  const g = new Group();
  for (const n of ["a", "b", "c"]) g.add(n, ["a", "b", "c"]);
  g.runUntil(() => g.master() !== null);
  const master = g.master()!;
  const to = ["a", "b", "c"].find((n) => n !== master)!;
  for (let i = 0; i < 5; i++) g.write(master);

  const self = g.request(master, { type: "transferMaster", to: master });
  assert.equal(g.failed.find((x) => x.requestId === self)?.reason, "invalid");
  const stranger = g.request(master, { type: "transferMaster", to: "zz" });
  assert.match(g.failed.find((x) => x.requestId === stranger)!.message, /zz is not a voter/);

  const id = g.request(master, { type: "transferMaster", to });
  g.runUntil(() => g.master() === to);
  const result = g.outcome(id);
  assert.ok(result !== undefined && "instance" in result, JSON.stringify(result));
  // The old master follows the new one and serves nothing itself.
  assert.equal(g.core(master).status().master, to);
  const w = g.write(to);
  g.runUntil(() => g.acknowledged.includes(w));
});

test("a voter that missed several changes cannot decide with members of its stale configuration", () => {
  const g = new Group();
  const founders = ["a", "b", "c"];
  for (const n of founders) g.add(n, founders);
  g.runUntil(() => g.master() !== null);
  const m = g.master()!;
  const [x, y] = founders.filter((n) => n !== m) as [MemberId, MemberId];
  // x is cut off (and campaigns in vain, raising its ballot) while the group changes three times.
  g.partition([[x], [m, y, "d", "e"]]);
  g.add("d", founders, ["d"]);
  g.add("e", founders, ["e"]);
  const changes: ConfigChange[] = [
    { kind: "addLearner", name: "d", address: "d:1" },
    { kind: "promote", name: "d" },
    { kind: "addLearner", name: "e", address: "e:1" },
    { kind: "promote", name: "e" },
    { kind: "remove", name: y },
  ];
  for (const change of changes) {
    g.write(m);
    const id = g.request(m, { type: "proposeConfig", change });
    g.runUntil(() => g.outcome(id) !== undefined);
    assert.ok("instance" in g.outcome(id)!, JSON.stringify(g.outcome(id)));
  }
  assert.deepEqual(voters(g.core(m)), [m, x, "d", "e"].sort());
  // x still sees the founders' configuration, where x and the removed y make a majority. While
  // they are cut off together, the rest of the group goes on deciding.
  g.partition([
    [x, y],
    [m, "d", "e"],
  ]);
  const before = g.acknowledged.length;
  for (let i = 0; i < 20; i++) {
    g.write(m);
    // Refused unless x has made itself master on its side, which it may: a write there must
    // never be decided where the group already decided something else.
    g.write(x);
    g.run(50);
  }
  assert.ok(g.acknowledged.length >= before + 20);
  // The partition heals just as the group's master fails: x's side meets the others first.
  g.down.add(m);
  g.partition(null);
  g.run(1000);
  g.assertAgreement();
  g.down.delete(m);
  g.run(2000);
  g.assertAgreement();
  const master = g.master();
  assert.ok(master !== null && master !== y, `master ${master}`);
  const w = g.write(master);
  g.runUntil(() => g.acknowledged.includes(w));
  g.assertAgreement();
});
