// A hand-driven network of cores: every persist succeeds at once, ticks come every TICK_MS to
// every member, and messages are delivered in order, except where a partition or a member that is
// down drops them. For schedules that random runs rarely produce (rejoin.test.ts, thrifty.test.ts).

import assert from "node:assert/strict";
import { fenceBallot, PaxosCore, type RejoinAnswer, rejoinState, type Timing } from "../../src/paxos/core.js";
import { type Ballot, type Envelope, type MemberId, type Value, ZERO_BALLOT } from "../../src/paxos/types.js";

export const TICK_MS = 10;
export const NAMES = ["m1", "m2", "m3", "m4", "m5"];

/** A small deterministic generator (mulberry32), one per member life. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Every persist succeeds at once; messages between members on different sides are lost. */
export class Network {
  readonly cores = new Map<MemberId, PaxosCore>();
  /** instance -> value id, as each member executed it. */
  readonly executed = new Map<MemberId, Map<number, string>>();
  /** What each member's log holds as chosen, to answer learners from. */
  private readonly chosen = new Map<MemberId, Map<number, Value>>();
  readonly acknowledged = new Map<number, { instance: number; valueId: string }>();
  readonly down = new Set<MemberId>();
  private sides: Map<MemberId, number> | null = null;
  private readonly inbox: { from: MemberId; env: Envelope }[] = [];
  /** Every message sent, in order: sender, receiver and the message. */
  readonly sent: { from: MemberId; env: Envelope }[] = [];
  /** Ready.lateAccepts summed over every member. */
  lateAccepts = 0;
  private now = 0;
  private nextRequestId = 1;

  constructor(
    private readonly names: readonly MemberId[] = NAMES,
    private readonly timing: Partial<Timing> = {},
  ) {}

  /** Members (five by default) that have elected a master, and its name. */
  static withMaster(
    names: readonly MemberId[] = NAMES,
    timing: Partial<Timing> = {},
  ): { net: Network; m: MemberId } {
    const net = new Network(names, timing);
    for (const name of names) net.start(name, null);
    net.run(600);
    const m = net.master();
    assert.ok(m !== null, "a master is elected");
    return { net, m };
  }

  start(self: MemberId, recovered: { promised: Ballot; abstainUntil: number } | null): void {
    this.down.delete(self);
    this.executed.set(self, new Map());
    this.chosen.set(self, new Map());
    this.cores.set(
      self,
      new PaxosCore({
        self,
        voters: [...this.names],
        incarnation: `${self}-${this.now}`,
        random: seeded(this.names.indexOf(self) + 1 + this.now),
        now: this.now,
        recovered: { promised: recovered?.promised ?? ZERO_BALLOT, chosenUpTo: -1, unchosen: [] },
        ...(recovered !== null ? { abstainUntil: recovered.abstainUntil } : {}),
        timing: { heartbeatMs: 20, electionTimeoutMs: 100, retryMs: 40, ...this.timing },
      }),
    );
  }

  /** The disk is gone with the process. */
  lose(name: MemberId): void {
    this.down.add(name);
    this.cores.delete(name);
  }

  step(name: MemberId, event: Parameters<PaxosCore["step"]>[0]): void {
    const core = this.cores.get(name)!;
    core.step(event, this.now);
    const rd = core.ready();
    this.lateAccepts += rd.lateAccepts;
    for (const env of [...rd.sendNow, ...rd.send]) {
      this.inbox.push({ from: name, env });
      this.sent.push({ from: name, env });
    }
    const chosen = this.chosen.get(name)!;
    for (const c of rd.committed) {
      chosen.set(c.instance, c.value);
      this.executed.get(name)!.set(c.instance, c.value.id);
      for (const id of c.requestIds ?? [])
        this.acknowledged.set(id, { instance: c.instance, valueId: c.value.id });
    }
    for (const load of rd.loads) {
      const entries = [];
      for (let i = load.from; chosen.has(i) && entries.length < 64; i++)
        entries.push({ instance: i, value: chosen.get(i)! });
      this.step(name, { type: "learnLoaded", to: load.to, entries });
    }
  }

  partition(groups: MemberId[][] | null): void {
    this.sides = groups === null ? null : new Map(groups.flatMap((g, i) => g.map((n) => [n, i] as const)));
  }

  run(ms: number): void {
    for (let t = 0; t < ms; t += TICK_MS) {
      this.now += TICK_MS;
      for (const name of this.cores.keys())
        if (!this.down.has(name)) this.step(name, { type: "tick", now: this.now });
      this.deliver();
    }
  }

  /** Delivers what is in flight, and what that sends, with no time passing. */
  deliver(): void {
    while (this.inbox.length > 0) {
      const { from, env } = this.inbox.shift()!;
      if (this.down.has(env.to) || this.down.has(from) || !this.cores.has(env.to)) continue;
      if (this.sides !== null && this.sides.get(from) !== this.sides.get(env.to)) continue;
      this.step(env.to, { type: "receive", from, message: env.message });
    }
  }

  master(among: readonly MemberId[] = this.names): MemberId | null {
    return among.find((n) => !this.down.has(n) && this.cores.get(n)?.currentRole === "master") ?? null;
  }

  write(name: MemberId): number {
    const requestId = this.nextRequestId++;
    this.step(name, { type: "propose", requestId, command: new TextEncoder().encode(`w${requestId}`) });
    return requestId;
  }

  /**
   * The rejoin of discovery.ts: the answerers' promised ballots, a fence above them that each
   * promises (its persist is instant here), then their answers from after the fence.
   */
  rejoin(name: MemberId, answerers: readonly MemberId[]): { fence: Ballot; abstainUntil: number } {
    const answers = (): RejoinAnswer[] => answerers.map((a) => this.cores.get(a)!.rejoinAnswer());
    const fence = fenceBallot(name, answers());
    for (const a of answerers) this.step(a, { type: "fence", ballot: fence });
    const joined = rejoinState(answers());
    this.start(name, joined);
    return { fence, abstainUntil: joined.abstainUntil };
  }
}
