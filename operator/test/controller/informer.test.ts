// The informer's reaction to a 410 Gone, against a small HTTP stand-in for the API server (the
// real-server behaviour is covered by e2e/test/controller.test.ts).
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { KubeConfig } from "@kubernetes/client-node";
import { Informer } from "../../src/controller/informer.js";
import { KubeRest } from "../../src/controller/rest.js";

const cm = (name: string, rv: string) => ({
  apiVersion: "v1",
  kind: "ConfigMap",
  metadata: { name, namespace: "ns", resourceVersion: rv },
});

test("a 410 Gone in the watch leads to a re-list whose difference reaches the handlers", async (t) => {
  const lists: string[] = [];
  const watches: string[] = [];
  const open = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    assert.equal(url.pathname, "/api/v1/namespaces/ns/configmaps");
    if (url.searchParams.get("watch") !== "1") {
      lists.push(url.searchParams.get("labelSelector") ?? "");
      const items = lists.length === 1 ? [cm("a", "5")] : [cm("b", "20")];
      res.end(JSON.stringify({ metadata: { resourceVersion: lists.length === 1 ? "5" : "20" }, items }));
      return;
    }
    watches.push(url.searchParams.get("resourceVersion") ?? "");
    res.writeHead(200, { "content-type": "application/json" });
    open.add(res);
    res.on("close", () => open.delete(res));
    if (watches.length === 1) {
      res.write(
        `${JSON.stringify({ type: "ERROR", object: { kind: "Status", code: 410, reason: "Expired", message: "too old resource version" } })}\n`,
      );
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const kc = new KubeConfig();
  // client-node refuses a plain-http server unless TLS verification is marked as skipped.
  kc.loadFromOptions({
    clusters: [
      {
        name: "c",
        server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        skipTLSVerify: true,
      },
    ],
    users: [{ name: "u" }],
    contexts: [{ name: "ctx", cluster: "c", user: "u" }],
    currentContext: "ctx",
  });
  const rest = await KubeRest.fromKubeConfig(kc);
  t.after(() => rest.close());

  const events: string[] = [];
  const informer = new Informer(rest, {
    path: "/api/v1/configmaps",
    namespace: "ns",
    labelSelector: "app=x",
    initialBackoffMs: 10,
    handlers: {
      onAdd: (o) => events.push(`add ${o.metadata.name}`),
      onUpdate: (_o, n) => events.push(`update ${n.metadata.name}`),
      onDelete: (o) => events.push(`delete ${o.metadata.name}`),
    },
  });
  informer.start();
  try {
    await informer.waitForSync();
    for (let i = 0; i < 500 && informer.stats().lists < 2; i++) await new Promise((r) => setTimeout(r, 10));
    for (let i = 0; i < 500 && watches.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(lists, ["app=x", "app=x"]);
    assert.deepEqual(watches, ["5", "20"], "the second watch starts from the re-list's resourceVersion");
    assert.deepEqual(events, ["add a", "delete a", "add b"]);
    assert.deepEqual(informer.keys(), ["ns/b"]);
    assert.equal(informer.stats().restarts, 1);
  } finally {
    for (const res of open) res.destroy();
    await informer.stop();
  }
});
