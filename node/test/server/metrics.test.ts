import assert from "node:assert/strict";
import { test } from "node:test";
import { createMetrics } from "../../src/server/metrics.js";

/** The value of the sample with exactly these labels, in any order; undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)\{(.*)\} (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const found = Object.fromEntries([...m[2]!.matchAll(/([a-z_]+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (JSON.stringify(Object.entries(found).sort()) === JSON.stringify(Object.entries(labels).sort())) {
      return Number(m[3]);
    }
  }
  return undefined;
}

test("every instrument is registered under its stable name, labelled with member and group", async () => {
  const m = createMetrics({ member: "kv-1", group: "kv" });
  m.proposals.inc();
  m.chosenInstances.inc(3);
  m.commitLatency.observe(0.003);
  m.fsyncSeconds.observe(0.0004);
  m.batchCommands.observe(12);
  m.batchRecords.observe(5);
  m.peerLinkUp.set({ peer: "kv-0" }, 1);
  m.rejectedFrames.inc({ peer: "kv-2", reason: "checksum" });
  m.droppedMessages.inc({ peer: "kv-2" });
  m.lateAccepts.inc(2);
  m.instanceChosen.set(42);
  m.instanceExecuted.set(41);
  m.memberLag.set({ peer: "kv-2" }, 7);
  m.observeHttpRequest("GET /v1/kv/{key}", 200, 0.001);
  m.observeHttpRequest("GET /v1/kv/{key}", 200, 0.002);
  m.observeHttpRequest("GET /v1/kv/{key}", 404, 0.001);
  const text = await m.registry.metrics();
  const own = { member: "kv-1", group: "kv" };
  const expected: [name: string, labels: Record<string, string>, value: number][] = [
    ["paxos_proposals_total", own, 1],
    ["paxos_chosen_instances_total", own, 3],
    ["paxos_commit_latency_seconds_bucket", { ...own, le: "0.005" }, 1],
    ["paxos_commit_latency_seconds_bucket", { ...own, le: "0.0002" }, 0],
    ["paxos_commit_latency_seconds_bucket", { ...own, le: "5" }, 1],
    ["paxos_fsync_seconds_count", own, 1],
    ["paxos_batch_commands_sum", own, 12],
    ["paxos_batch_records_sum", own, 5],
    ["paxos_peer_link_up", { ...own, peer: "kv-0" }, 1],
    ["paxos_rejected_frames_total", { ...own, peer: "kv-2", reason: "checksum" }, 1],
    ["paxos_dropped_messages_total", { ...own, peer: "kv-2" }, 1],
    ["paxos_late_accepts_total", own, 2],
    ["paxos_instance_chosen", own, 42],
    ["paxos_instance_executed", own, 41],
    ["paxos_member_lag", { ...own, peer: "kv-2" }, 7],
    ["paxos_http_requests_total", { ...own, route: "GET /v1/kv/{key}", code: "200" }, 2],
    ["paxos_http_requests_total", { ...own, route: "GET /v1/kv/{key}", code: "404" }, 1],
    ["paxos_http_request_duration_seconds_count", { ...own, route: "GET /v1/kv/{key}" }, 3],
  ];
  for (const [name, labels, value] of expected) {
    assert.equal(sample(text, name, labels), value, `${name} ${JSON.stringify(labels)}`);
  }
  // Default process metrics live on the member's registry as well.
  assert.match(text, /^process_resident_memory_bytes\{member="kv-1",group="kv"\} \d+/m);
});

test("setRole leaves exactly one role at 1", async () => {
  const m = createMetrics({ member: "kv-0", group: "kv" });
  const roles = async (): Promise<Record<string, number>> => {
    const out: Record<string, number> = {};
    for (const v of (await m.role.get()).values) out[String(v.labels.role)] = v.value;
    return out;
  };
  assert.deepEqual(await roles(), { master: 0, follower: 0, candidate: 0, learner: 0 });
  m.setRole("candidate");
  assert.deepEqual(await roles(), { master: 0, follower: 0, candidate: 1, learner: 0 });
  m.setRole("master");
  assert.deepEqual(await roles(), { master: 1, follower: 0, candidate: 0, learner: 0 });
});

test("members in one process keep separate registries", async () => {
  const a = createMetrics({ member: "n1", group: "paxos" });
  const b = createMetrics({ member: "n2", group: "paxos" });
  a.proposals.inc(5);
  assert.match(await a.registry.metrics(), /^paxos_proposals_total\{member="n1",group="paxos"\} 5$/m);
  assert.match(await b.registry.metrics(), /^paxos_proposals_total\{member="n2",group="paxos"\} 0$/m);
});
