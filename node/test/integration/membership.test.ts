// Membership changes and master handover on real processes (issue 4): transfer the master and
// remove a follower or the master while writers run, without losing an acknowledged write; two
// concurrent changes (one 409); bad input and non-master requests, each a clear error and no change;
// a new process that joins as a learner, catches up and is promoted.

import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { assertAllReadable, Cluster, Writers, waitCaughtUp, waitFor } from "./cluster.js";

const TOKEN = "membership-test-token";

interface MemberJson {
  name: string;
  address: string;
  role: "voter" | "learner";
}

interface MembersJson {
  master: string | null;
  members: MemberJson[];
  pending: { members: MemberJson[] } | null;
}

interface StatusMembersJson {
  members: { name: string; address: string; role: string; lag: number | null }[];
}

async function membersOf(c: Cluster, name: string): Promise<MembersJson> {
  const r = await c.admin(name, "GET", "/v1/admin/members");
  assert.equal(
    r.status,
    200,
    `GET /v1/admin/members on ${name} answered ${r.status}: ${JSON.stringify(r.json)}`,
  );
  return r.json as unknown as MembersJson;
}

async function statusMembersOf(c: Cluster, name: string): Promise<StatusMembersJson["members"]> {
  const r = await fetch(c.url(name, "/v1/status"), { signal: AbortSignal.timeout(10_000) });
  assert.equal(r.status, 200);
  return ((await r.json()) as StatusMembersJson).members;
}

/** The members as `--peers` gave them, all voters, sorted by name. */
function votersAsStarted(c: Cluster, names: readonly string[]): MemberJson[] {
  return [...names].sort().map((name) => ({
    name,
    address: `127.0.0.1:${c.member(name).peerPort}`,
    role: "voter" as const,
  }));
}

/** Only the fields of the contract, sorted by name, so rows compare whatever else they carry. */
function project(members: readonly MemberJson[]): MemberJson[] {
  return members
    .map(({ name, address, role }) => ({ name, address, role }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

function assertError(
  r: { status: number; json: Record<string, unknown> },
  status: number,
  error: string,
  what: string,
): void {
  assert.equal(r.status, status, `${what} answered ${r.status}: ${JSON.stringify(r.json)}`);
  assert.equal(r.json.error, error, `${what}: ${JSON.stringify(r.json)}`);
  assert.equal(typeof r.json.message, "string", `${what}: no message in ${JSON.stringify(r.json)}`);
}

/** An admin call with a raw body and an explicit token (`null`: no Authorization header). */
async function rawAdmin(
  c: Cluster,
  name: string,
  method: string,
  path: string,
  body: string | undefined,
  token: string | null,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(c.url(name, path), {
    method,
    headers,
    ...(body !== undefined ? { body } : {}),
    signal: AbortSignal.timeout(60_000),
  });
  const text = await r.text();
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { unparsed: text };
  }
  return { status: r.status, json };
}

async function waitAcknowledged(w: Writers, count: number, what: string): Promise<void> {
  await waitFor(
    60_000,
    () => `${what} (${w.acknowledged.size}/${count} acknowledged, ${w.errors} errors)`,
    async () => (w.acknowledged.size >= count ? true : undefined),
  );
}

function instanceOf(r: { status: number; json: Record<string, unknown> }, what: string): number {
  assert.equal(r.status, 200, `${what} answered ${r.status}: ${JSON.stringify(r.json)}`);
  const instance = r.json.instance;
  assert.ok(
    typeof instance === "number" && Number.isInteger(instance) && instance >= 0,
    `${what}: ${JSON.stringify(r.json)}`,
  );
  return instance;
}

function logsTail(c: Cluster, name: string): string {
  return c.logs(name).split("\n").slice(-30).join("\n");
}

/** Waits for a master, and says what each member logged if none comes. */
async function masterOf(c: Cluster, timeoutMs = 30_000, among?: readonly string[]): Promise<string> {
  try {
    return await c.waitForMaster(timeoutMs, among);
  } catch (e) {
    const tails = (among ?? c.members.map((m) => m.name)).map(
      (n) => `--- ${n} log tail ---\n${logsTail(c, n)}`,
    );
    throw new Error(`${(e as Error).message}\n${tails.join("\n")}`);
  }
}

describe("a group of three voters", () => {
  let c: Cluster;

  before(async () => {
    c = await Cluster.start(3, { token: TOKEN });
    await masterOf(c);
  });

  after(async () => {
    await c.destroy();
  });

  test("GET members and /v1/status list the three voters, no change pending", async () => {
    const master = await masterOf(c);
    const m = await membersOf(c, master);
    assert.equal(m.master, master);
    assert.deepStrictEqual(project(m.members), votersAsStarted(c, ["n1", "n2", "n3"]));
    assert.equal(m.pending, null);
    for (const member of c.members) {
      const rows = await statusMembersOf(c, member.name);
      assert.deepStrictEqual(
        rows
          .map(({ name, address, role }) => ({ name, address, role }))
          .sort((a, b) => a.name.localeCompare(b.name)),
        votersAsStarted(c, ["n1", "n2", "n3"]),
        `/v1/status members on ${member.name}`,
      );
    }
    // The master knows every member's lag once each has acknowledged something.
    await waitFor(30_000, "the master to report every member's lag", async () => {
      const rows = await statusMembersOf(c, master);
      return rows.every((r) => Number.isInteger(r.lag) && (r.lag as number) >= 0) ? true : undefined;
    });
  });

  test("a follower asked for a change answers 503 not_master naming the master, and nothing changes", async () => {
    const master = await masterOf(c);
    const [follower, other] = c.members.filter((m) => m.name !== master).map((m) => m.name) as [
      string,
      string,
    ];
    const before = await membersOf(c, master);
    const asks: [string, string, unknown][] = [
      ["DELETE", `/v1/admin/members/${other}`, undefined],
      ["POST", "/v1/admin/master/transfer", { to: follower }],
      ["POST", "/v1/admin/members", { name: "n9", address: "127.0.0.1:9", role: "learner" }],
    ];
    for (const [method, path, body] of asks) {
      const what = `${method} ${path} on follower ${follower}`;
      const r = await c.admin(follower, method, path, body);
      assertError(r, 503, "not_master", what);
      assert.ok(
        (r.json.message as string).includes(master),
        `${what}: the message does not name the master ${master}: ${r.json.message}`,
      );
      assert.deepStrictEqual(await membersOf(c, master), before, `${what} changed the members`);
    }
  });

  test("bad input on the master is a clear 4xx and changes nothing", async () => {
    const master = await masterOf(c);
    const [follower] = c.members.filter((m) => m.name !== master).map((m) => m.name) as [string];
    const before = await membersOf(c, master);
    const existing = { name: follower, address: `127.0.0.1:${c.member(follower).peerPort}`, role: "learner" };
    const cases: [method: string, path: string, body: string | undefined, status: number, error: string][] = [
      ["DELETE", "/v1/admin/members/nobody", undefined, 400, "invalid_change"],
      ["POST", `/v1/admin/members/${follower}/promote`, undefined, 400, "invalid_change"],
      ["POST", `/v1/admin/members/${master}/promote`, undefined, 400, "invalid_change"],
      ["POST", "/v1/admin/members/nobody/promote", undefined, 400, "invalid_change"],
      ["POST", "/v1/admin/members", JSON.stringify(existing), 400, "invalid_change"],
      ["POST", "/v1/admin/members", "{}", 400, "bad_request"],
      ["POST", "/v1/admin/members", '{"name":"x"}', 400, "bad_request"],
      ["POST", "/v1/admin/members", '{"name":"x","address":"a:1","role":"voter"}', 400, "bad_request"],
      [
        "POST",
        "/v1/admin/members",
        '{"name":5,"address":"127.0.0.1:1","role":"learner"}',
        400,
        "bad_request",
      ],
      [
        "POST",
        "/v1/admin/members",
        '{"name":"x","address":"127.0.0.1:1","role":"learner","extra":true}',
        400,
        "bad_request",
      ],
      ["POST", "/v1/admin/members", "[]", 400, "bad_request"],
      ["POST", "/v1/admin/members", '{"name": "x",', 400, "bad_request"],
      ["POST", "/v1/admin/master/transfer", '{"to":"nobody"}', 400, "invalid_change"],
      ["POST", "/v1/admin/master/transfer", "{}", 400, "bad_request"],
      ["POST", "/v1/admin/master/transfer", '{"to":5}', 400, "bad_request"],
      ["POST", "/v1/admin/master/transfer", "not json", 400, "bad_request"],
    ];
    for (const [method, path, body, status, error] of cases) {
      const what = `${method} ${path} ${body ?? "(no body)"}`;
      assertError(await rawAdmin(c, master, method, path, body, TOKEN), status, error, what);
      assert.deepStrictEqual(await membersOf(c, master), before, `${what} changed the members`);
    }
    const unauthenticated: [string, string, string | undefined][] = [
      ["GET", "/v1/admin/members", undefined],
      ["POST", "/v1/admin/members", '{"name":"n9","address":"127.0.0.1:9","role":"learner"}'],
      ["DELETE", `/v1/admin/members/${follower}`, undefined],
      ["POST", `/v1/admin/members/${follower}/promote`, undefined],
      ["POST", "/v1/admin/master/transfer", JSON.stringify({ to: follower })],
    ];
    for (const [method, path, body] of unauthenticated) {
      for (const token of [null, "wrong-token"]) {
        const what = `${method} ${path} with ${token === null ? "no token" : "a wrong token"}`;
        const r = await rawAdmin(c, master, method, path, body, token);
        assert.equal(r.status, 401, `${what} answered ${r.status}: ${JSON.stringify(r.json)}`);
        assert.deepStrictEqual(await membersOf(c, master), before, `${what} changed the members`);
      }
    }
  });

  test("transfer the master while a writer runs: every member follows it, no acknowledged write lost", async () => {
    const master = await masterOf(c);
    const to = c.members.find((m) => m.name !== master)!.name;
    const writers = new Writers(c, 2);
    try {
      await waitAcknowledged(writers, 30, "writes before the transfer");
      const r = await c.admin(master, "POST", "/v1/admin/master/transfer", { to });
      assert.equal(r.status, 200, `transfer to ${to} answered ${r.status}: ${JSON.stringify(r.json)}`);
      assert.deepStrictEqual(r.json, { master: to });
      const atTransfer = writers.acknowledged.size;
      assert.equal(
        await masterOf(c, 30_000),
        to,
        "the members agree on another master than the one transferred to",
      );
      assert.equal((await membersOf(c, to)).master, to);
      await waitAcknowledged(writers, atTransfer + 50, "writes after the transfer");
    } finally {
      await writers.stop();
    }
    for (const m of c.members) await assertAllReadable(c, m.name, writers.acknowledged);
  });

  test("remove a follower voter while a writer runs: two voters remain and serve every acknowledged write", async () => {
    const master = await masterOf(c);
    const removed = c.members.find((m) => m.name !== master)!.name;
    const remaining = c.members.map((m) => m.name).filter((n) => n !== removed);
    let targets = c.members.map((m) => m.name);
    const writers = new Writers(c, 2, 5000, () => targets);
    try {
      await waitAcknowledged(writers, 30, "writes before the removal");
      const r = await c.admin(master, "DELETE", `/v1/admin/members/${removed}`);
      instanceOf(r, `DELETE ${removed}`);
      // The removed process keeps running; what it answers to writes is not part of the contract.
      targets = remaining;
      const atRemoval = writers.acknowledged.size;
      const m = await membersOf(c, master);
      assert.deepStrictEqual(project(m.members), votersAsStarted(c, remaining));
      assert.equal(m.pending, null);
      const rows = await statusMembersOf(c, master);
      assert.ok(
        !rows.some((row) => row.name === removed),
        `/v1/status still lists ${removed}: ${JSON.stringify(rows)}`,
      );
      await waitAcknowledged(writers, atRemoval + 50, "writes after the removal");
    } finally {
      await writers.stop();
    }
    const now = await masterOf(c, 30_000, remaining);
    assert.ok(remaining.includes(now));
    for (const name of remaining) await assertAllReadable(c, name, writers.acknowledged);
    await c.stop(removed);
  });
});

test("remove the master while a writer runs: one of the other two takes over, no acknowledged write lost", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN });
  t.after(() => c.destroy());
  const master = await masterOf(c);
  const others = c.members.map((m) => m.name).filter((n) => n !== master);
  let targets = c.members.map((m) => m.name);
  const writers = new Writers(c, 2, 5000, () => targets);
  try {
    await waitAcknowledged(writers, 30, "writes before the removal");
    const r = await c.admin(master, "DELETE", `/v1/admin/members/${master}`);
    instanceOf(r, `DELETE ${master} (the master)`);
    targets = others;
    const newMaster = await masterOf(c, 60_000, others);
    assert.ok(others.includes(newMaster), `${newMaster} is not one of ${others.join(", ")}`);
    const m = await membersOf(c, newMaster);
    assert.equal(m.master, newMaster);
    assert.deepStrictEqual(project(m.members), votersAsStarted(c, others));
    assert.equal(m.pending, null);
    const atRemoval = writers.acknowledged.size;
    await waitAcknowledged(writers, atRemoval + 50, "writes after the removal").catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\n--- ${newMaster} log tail ---\n${logsTail(c, newMaster)}`);
    });
  } finally {
    await writers.stop();
  }
  for (const name of others) await assertAllReadable(c, name, writers.acknowledged);
  await c.stop(master);
});

test("two concurrent removals: one wins with 200, the other gets 409 and changes nothing", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN });
  t.after(() => c.destroy());
  const master = await masterOf(c);
  const [f1, f2] = c.members.map((m) => m.name).filter((n) => n !== master) as [string, string];
  const [a, b] = await Promise.all([
    c.admin(master, "DELETE", `/v1/admin/members/${f1}`),
    c.admin(master, "DELETE", `/v1/admin/members/${f2}`),
  ]);
  const answers = `${f1}: ${a.status} ${JSON.stringify(a.json)}; ${f2}: ${b.status} ${JSON.stringify(b.json)}`;
  assert.deepStrictEqual([a.status, b.status].sort(), [200, 409], answers);
  const [winner, loser, lost] = a.status === 200 ? [f1, f2, b] : [f2, f1, a];
  assert.ok(lost.json.error === "conflict" || lost.json.error === "unsafe_change", answers);
  assert.equal(typeof lost.json.message, "string", answers);
  instanceOf(a.status === 200 ? a : b, `DELETE ${winner}`);
  const m = await membersOf(c, master);
  assert.deepStrictEqual(project(m.members), votersAsStarted(c, [master, loser]), `after removing ${winner}`);
  assert.equal(m.pending, null);
  const w = await c.put(master, "after-concurrent-changes", "ok");
  assert.equal(w.status, 200);
  await assertAllReadable(c, loser, new Map([["after-concurrent-changes", "ok"]]));
});

test("removing the only voter is refused with 409 unsafe_change and changes nothing", async (t) => {
  const c = await Cluster.start(1, { token: TOKEN });
  t.after(() => c.destroy());
  await masterOf(c);
  const before = await membersOf(c, "n1");
  assert.deepStrictEqual(project(before.members), votersAsStarted(c, ["n1"]));
  assertError(
    await c.admin("n1", "DELETE", "/v1/admin/members/n1"),
    409,
    "unsafe_change",
    "DELETE the only voter",
  );
  assert.deepStrictEqual(await membersOf(c, "n1"), before);
  const w = await c.put("n1", "still-serving", "yes");
  assert.equal(w.status, 200);
});

test("a learner joins, catches up and is promoted; a voter is removed; all while writers run", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN });
  t.after(() => c.destroy());
  const master = await c.waitForMaster();
  let targets = ["n1", "n2", "n3"];
  const writers = new Writers(c, 2, 5000, () => targets);
  await waitFor(30_000, "some writes", async () => (writers.acknowledged.size >= 50 ? true : undefined));

  // The new member starts with every member as --peers, finds the running group and waits as a learner.
  const learner = await c.joinLearner(master);
  await waitCaughtUp(c, learner, master);
  assert.equal((await c.status(learner))?.role, "learner");

  const promoted = await c.admin(master, "POST", `/v1/admin/members/${learner}/promote`);
  assert.equal(promoted.status, 200, JSON.stringify(promoted.json));
  const four = await membersOf(c, master);
  assert.deepStrictEqual(
    project(four.members).map((m) => `${m.name}:${m.role}`),
    ["n1:voter", "n2:voter", "n3:voter", `${learner}:voter`],
  );

  const removed = ["n1", "n2", "n3"].find((n) => n !== master)!;
  const removal = await c.admin(master, "DELETE", `/v1/admin/members/${removed}`);
  assert.equal(removal.status, 200, JSON.stringify(removal.json));
  targets = [master, learner];
  const three = await membersOf(c, master);
  assert.deepStrictEqual(
    project(three.members).map((m) => m.name),
    ["n1", "n2", "n3", learner].filter((n) => n !== removed),
  );

  const before = writers.acknowledged.size;
  await waitFor(30_000, "writes after the changes", async () =>
    writers.acknowledged.size >= before + 50 ? true : undefined,
  );
  await writers.stop();
  await c.stop(removed);
  await waitCaughtUp(c, learner, master);
  await assertAllReadable(c, learner, writers.acknowledged, true);
  await assertAllReadable(c, master, writers.acknowledged);
});

test("a restart keeps the configuration a member started with, whatever --peers a scale step left", async (t) => {
  const c = await Cluster.start(3, { token: TOKEN });
  t.after(() => c.destroy());
  const master = await masterOf(c);
  assert.equal((await c.put(master, "before-scale", "ok")).status, 200);

  // A new member that the group has not added yet: it joins as a learner of the running group.
  const learner = await c.addMember();
  c.startMember(learner);
  await waitFor(30_000, `${learner} to join as a learner`, async () =>
    (await c.status(learner))?.role === "learner" ? true : undefined,
  );

  // From now on every start gets the longer --peers, as pods do after a scale step. Nothing the
  // log chose names the new member, so only what each member recorded can keep it a learner.
  const founder = c.members.find((m) => m.name !== master && m.name !== learner)!.name;
  await c.kill(founder);
  await c.kill(learner);
  c.startMember(founder);
  c.startMember(learner);
  const founding = ["n1:voter", "n2:voter", "n3:voter"];
  for (const [name, expected] of [
    [founder, founding],
    [learner, [...founding, `${learner}:learner`]],
  ] as const) {
    const view = await waitFor(
      30_000,
      `${name} to serve its status again`,
      async () => (await c.status(name)) ?? undefined,
    );
    assert.deepStrictEqual(
      view.members.map((m) => `${m.name}:${m.role}`).sort(),
      expected,
      `${name}'s configuration after its restart`,
    );
  }
  await waitFor(30_000, `${learner} to be a learner again`, async () =>
    (await c.status(learner))?.role === "learner" ? true : undefined,
  );
  assert.equal((await c.put(founder, "after-restarts", "ok")).status, 200);
  assert.deepEqual(await c.stop(founder), { code: 0, signal: null });
  assert.match(c.logs(founder), /--peers differs from the configuration this member started with/);
});

test("a member rejoining without its state fences the voters of a promotion it learns of while catching up", async (t) => {
  const c = await Cluster.start(4, { token: TOKEN });
  t.after(() => c.destroy());
  const master = await masterOf(c);
  const [stale, rejoiner, fourth] = ["n1", "n2", "n3", "n4"].filter((n) => n !== master) as [
    string,
    string,
    string,
  ];
  assert.equal((await c.put(master, "before", "ok")).status, 200);
  const learner = await c.joinLearner(master);
  await waitCaughtUp(c, learner, master);

  // Five voters, chosen while one of the four is down: it will not have heard of them. (A frozen
  // process would read what was sent to it meanwhile once it runs again.)
  await c.kill(stale);
  const promoted = await c.admin(master, "POST", `/v1/admin/members/${learner}/promote`);
  assert.equal(promoted.status, 200, JSON.stringify(promoted.json));
  await c.kill(rejoiner);
  await rm(c.member(rejoiner).dataDir, { recursive: true, force: true });

  // The stale voter alone answers at first: it names the four voters, whose majorities two of the
  // three others meet. The master answers next; both promise the fence.
  for (const name of [master, fourth, learner]) c.pause(name);
  c.startMember(stale);
  await waitFor(30_000, `${stale} to serve again`, async () =>
    (await c.status(stale)) !== null ? true : undefined,
  );
  c.startMember(rejoiner);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  c.resume(master);

  // Caught up to what they had seen, it learns of the five voters, of whose majorities {master,
  // stale} may miss one ({rejoiner, fourth, learner}): it must not promise until those answer too.
  const waiting = await waitFor(60_000, `${rejoiner} to catch up to its first bound`, async () => {
    const s = await c.status(rejoiner);
    const until = s?.instances.abstainUntil;
    return s !== null && until !== null && until !== undefined && s.instances.chosen >= until ? s : undefined;
  });
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const still = await c.status(rejoiner);
  assert.notEqual(still?.instances.abstainUntil, null, "stopped abstaining with two of five voters fenced");
  assert.ok(still !== null && still.instances.chosen >= waiting.instances.chosen);

  c.resume(fourth);
  c.resume(learner);
  await waitFor(60_000, `${rejoiner} to stop abstaining`, async () =>
    (await c.status(rejoiner))?.instances.abstainUntil === null ? true : undefined,
  );
  const now = await masterOf(c);
  assert.equal((await c.put(now, "after", "ok")).status, 200);
  await waitCaughtUp(c, rejoiner, now);
  assert.deepEqual(await c.stop(rejoiner), { code: 0, signal: null });
  const logs = c.logs(rejoiner);
  assert.match(logs, /learned of a configuration whose majorities the voters that answered may miss/);
  assert.match(logs, /rejoining: fenced them/);
});
