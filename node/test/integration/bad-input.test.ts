// Bad input against real processes: clear 4xx answers, refused peer links, garbage frames
// dropped and counted while the member keeps serving.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { PEER_PATH } from "../../src/transport/peer-transport.js";
import { Cluster, waitFor } from "./cluster.js";

const TOKEN = "integration-secret";
let cluster: Cluster;

before(async () => {
  cluster = await Cluster.start(3, { token: TOKEN });
  await cluster.waitForMaster();
});

after(async () => {
  await cluster.destroy();
});

async function errorOf(r: Response): Promise<string> {
  const body = (await r.json()) as { error: string; message: string };
  assert.equal(typeof body.message, "string");
  return body.error;
}

test("empty and over-long keys are refused with 400", async () => {
  const empty = await fetch(cluster.url("n1", "/v1/kv/"), { method: "PUT", body: "x" });
  assert.equal(empty.status, 400);
  assert.equal(await errorOf(empty), "bad_key");
  const long = await cluster.put("n1", "k".repeat(1025), "x");
  assert.equal(long.status, 400);
  assert.equal(await errorOf(long), "bad_key");
  const longest = await cluster.put("n1", "k".repeat(1024), "x");
  assert.equal(longest.status, 200);
});

test("a value over 1 MiB is refused with 413 and nothing is written", async () => {
  const r = await cluster.put("n2", "big", "x".repeat(1024 * 1024 + 1));
  assert.equal(r.status, 413);
  assert.equal((await cluster.get("n2", "big")).status, 404);
  const fits = await cluster.put("n2", "big", "x".repeat(1024 * 1024));
  assert.equal(fits.status, 200);
});

/**
 * A raw peer link. It claims a name no member uses: claiming a real member's name would replace
 * that member's live link, whose redial would then replace ours and cut off what we sent.
 */
function dial(port: number, token: string | null): WebSocket {
  const headers: Record<string, string> = { "x-paxos-member": "intruder" };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  return new WebSocket(`ws://127.0.0.1:${port}${PEER_PATH}`, { headers });
}

test("a peer link with a wrong or missing token is refused", async () => {
  for (const token of ["wrong-secret", null]) {
    const ws = dial(cluster.member("n1").peerPort, token);
    const status = await new Promise<number>((resolve, reject) => {
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.on("open", () => reject(new Error("the link opened without the right token")));
      ws.on("error", () => {});
    });
    ws.terminate();
    assert.equal(status, 401);
  }
});

async function rejectedFrames(name: string): Promise<number> {
  const text = await (await fetch(cluster.url(name, "/metrics"))).text();
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("paxos_rejected_frames_total{")) total += Number(line.split(" ").pop());
  }
  return total;
}

test("garbage frames from a raw socket are dropped and counted; the member keeps serving", async () => {
  const before = await rejectedFrames("n1");
  const ws = dial(cluster.member("n1").peerPort, TOKEN);
  await new Promise<void>((resolve, reject) => {
    ws.on("open", () => resolve());
    ws.on("error", reject);
  });
  const sent = 50;
  for (let i = 0; i < sent; i++) ws.send(randomBytes(1 + Math.floor(Math.random() * 200)));
  await waitFor(10_000, "the garbage to be counted", async () =>
    (await rejectedFrames("n1")) >= before + sent ? true : undefined,
  );
  ws.close();
  const r = await cluster.put("n1", "after-garbage", "still serving");
  assert.equal(r.status, 200);
  assert.equal(await (await cluster.get("n3", "after-garbage")).text(), "still serving");
});

test("admin calls need the token", async () => {
  const r = await fetch(cluster.url("n1", "/v1/admin/cleaner"), {
    method: "PUT",
    body: JSON.stringify({ state: "paused" }),
  });
  assert.equal(r.status, 401);
});
