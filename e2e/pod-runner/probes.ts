// Readiness, liveness and startup probes, run by the pod runner the way a kubelet runs them.
import { execFile } from "node:child_process";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import type { V1Container, V1Probe } from "@kubernetes/client-node";

export interface ProbeResult {
  ok: boolean;
  message: string;
}

function namedPort(container: V1Container, port: number | string): number {
  if (typeof port === "number") return port;
  if (/^\d+$/.test(port)) return Number(port);
  const found = container.ports?.find((p) => p.name === port);
  if (!found) throw new Error(`no container port named "${port}"`);
  return found.containerPort;
}

/** One probe attempt against a container whose pod has `podIP` and whose process is `pid`. */
export async function runProbe(
  probe: V1Probe,
  container: V1Container,
  podIP: string,
  pid: number,
): Promise<ProbeResult> {
  const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
  try {
    if (probe.httpGet) {
      const g = probe.httpGet;
      const port = namedPort(container, g.port);
      const scheme = (g.scheme ?? "HTTP").toUpperCase();
      const host = g.host || podIP;
      const headers: Record<string, string> = { "user-agent": "kube-probe/1.34" };
      for (const h of g.httpHeaders ?? []) headers[h.name] = h.value;
      const url = `${scheme.toLowerCase()}://${host.includes(":") ? `[${host}]` : host}:${port}${g.path ?? "/"}`;
      const code = await new Promise<number>((resolve, reject) => {
        const mod = scheme === "HTTPS" ? https : http;
        const req = mod.get(url, { headers, timeout: timeoutMs, rejectUnauthorized: false }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on("timeout", () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
        req.on("error", reject);
      });
      const ok = code >= 200 && code < 400;
      return { ok, message: ok ? "" : `HTTP probe failed with statuscode: ${code}` };
    }
    if (probe.tcpSocket) {
      const port = namedPort(container, probe.tcpSocket.port);
      await new Promise<void>((resolve, reject) => {
        const s = net.connect({ host: probe.tcpSocket?.host || podIP, port, timeout: timeoutMs });
        s.on("connect", () => {
          s.destroy();
          resolve();
        });
        s.on("timeout", () => s.destroy(new Error(`timeout after ${timeoutMs} ms`)));
        s.on("error", reject);
      });
      return { ok: true, message: "" };
    }
    if (probe.exec?.command?.length) {
      // Enter the container's mount namespace and root, as `kubectl exec` would.
      const args = [
        "--target",
        String(pid),
        "--mount",
        "--uts",
        "--root",
        "--wd",
        "--",
        ...probe.exec.command,
      ];
      return await new Promise<ProbeResult>((resolve) => {
        execFile("nsenter", args, { timeout: timeoutMs }, (err, stdout, stderr) => {
          resolve(
            err
              ? { ok: false, message: `exec probe failed: ${stderr || stdout || err.message}` }
              : { ok: true, message: "" },
          );
        });
      });
    }
    return {
      ok: false,
      message: "probe type not supported by the local pod runner (use httpGet, tcpSocket or exec)",
    };
  } catch (e) {
    return { ok: false, message: `probe failed: ${(e as Error).message}` };
  }
}

/** Threshold bookkeeping of one probe of one container run. */
export class ProbeState {
  private successes = 0;
  private failures = 0;
  private nextAt: number;
  private inFlight = false;
  /** undefined until the first verdict */
  result: boolean | undefined;
  lastMessage = "";

  constructor(
    readonly probe: V1Probe,
    startedAt: number,
  ) {
    this.nextAt = startedAt + (probe.initialDelaySeconds ?? 0) * 1000;
  }

  /** Runs the probe when it is due; returns true when the verdict changed. */
  async tick(now: number, attempt: () => Promise<ProbeResult>): Promise<boolean> {
    if (this.inFlight || now < this.nextAt) return false;
    this.inFlight = true;
    try {
      const r = await attempt();
      this.nextAt = Date.now() + (this.probe.periodSeconds ?? 10) * 1000;
      const before = this.result;
      if (r.ok) {
        this.failures = 0;
        this.successes++;
        if (this.successes >= (this.probe.successThreshold ?? 1)) this.result = true;
      } else {
        this.successes = 0;
        this.failures++;
        this.lastMessage = r.message;
        if (this.failures >= (this.probe.failureThreshold ?? 3)) this.result = false;
      }
      return before !== this.result;
    } finally {
      this.inFlight = false;
    }
  }
}
