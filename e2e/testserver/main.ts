// The `e2e-testserver` image of the local pod runner: a tiny HTTP server that shows what a pod
// sees (its name, DNS, volumes, service-account files) and can exit on purpose.
//
//   --host ADDR          listen address (default $POD_IP, else 0.0.0.0)
//   --port N             default 8080
//   --data-dir DIR       where PUT /data stores its body (default /data)
//   --exit-code N        write the termination message, then exit with N (after --exit-after-ms)
//   --message TEXT       the termination message (default "exit <N>")
//   --termination-log F  default /dev/termination-log
//
// GET /healthz, /readyz -> 200; GET /whoami -> {hostname, podIP, namespace}; GET /env -> the environment;
// GET /resolve?name=N -> {addresses} via the system resolver; GET /fetch?url=U -> {status, body};
// PUT /data (body) and GET /data; GET /file?path=P -> the file's content.
import { lookup } from "node:dns/promises";
import { open, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string" },
    port: { type: "string", default: "8080" },
    "data-dir": { type: "string", default: "/data" },
    "exit-code": { type: "string" },
    "exit-after-ms": { type: "string", default: "0" },
    message: { type: "string" },
    "termination-log": { type: "string", default: "/dev/termination-log" },
  },
});

if (values["exit-code"] !== undefined) {
  const code = Number(values["exit-code"]);
  setTimeout(async () => {
    await writeFile(values["termination-log"], values.message ?? `exit ${code}`).catch(() => {});
    console.log(`exiting with ${code} on purpose`);
    process.exit(code);
  }, Number(values["exit-after-ms"]));
}

const dataFile = path.join(values["data-dir"], "value.txt");

function json(res: http.ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function body(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://x");
  const handle = async () => {
    switch (`${req.method} ${url.pathname}`) {
      case "GET /healthz":
      case "GET /readyz":
        return json(res, 200, { ok: true });
      case "GET /whoami":
        return json(res, 200, {
          hostname: os.hostname(),
          podIP: process.env.POD_IP ?? null,
          namespace: process.env.POD_NAMESPACE ?? null,
        });
      case "GET /env":
        return json(res, 200, process.env);
      case "GET /resolve": {
        const addresses = await lookup(url.searchParams.get("name") ?? "", { all: true });
        return json(res, 200, { addresses: addresses.map((a) => a.address) });
      }
      case "GET /fetch": {
        const r = await fetch(url.searchParams.get("url") ?? "", { signal: AbortSignal.timeout(5_000) });
        return json(res, 200, { status: r.status, body: await r.text() });
      }
      case "PUT /data": {
        const fh = await open(dataFile, "w");
        await fh.writeFile(await body(req));
        await fh.sync();
        await fh.close();
        return json(res, 200, { ok: true });
      }
      case "GET /data":
        return res.end(await readFile(dataFile));
      case "GET /file":
        return res.end(await readFile(url.searchParams.get("path") ?? ""));
      default:
        return json(res, 404, { error: "not_found", message: `${req.method} ${url.pathname}` });
    }
  };
  handle().catch((e: NodeJS.ErrnoException) =>
    json(res, e.code === "ENOENT" ? 404 : 500, { error: e.code ?? "error", message: e.message }),
  );
});

const host = values.host ?? process.env.POD_IP ?? "0.0.0.0";
server.listen(Number(values.port), host, () =>
  console.log(`e2e-testserver listening on ${host}:${values.port}`),
);
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    console.log(`${sig}: shutting down`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
