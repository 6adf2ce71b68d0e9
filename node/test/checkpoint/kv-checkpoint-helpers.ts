// Shared by the checkpoint store, KV checkpoint and install tests.

import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after } from "node:test";
import { type Logger, pino } from "pino";
import type { CheckpointManifest } from "../../src/checkpoint/checkpoint-store.js";
import { decodeKvCommand, encodeKvCommand } from "../../src/sm/kv-command.js";

const tempRoots: string[] = [];
after(async () => {
  for (const dir of tempRoots) await rm(dir, { recursive: true, force: true });
});

export async function tempRoot(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  tempRoots.push(dir);
  return dir;
}

/** A logger that keeps its lines for assertions. */
export function capturingLogger(): { logger: Logger; lines: () => { level: number; msg: string }[] } {
  const raw: string[] = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void raw.push(line) });
  return { logger, lines: () => raw.map((l) => JSON.parse(l) as { level: number; msg: string }) };
}

export const silentLogger: Logger = pino({ level: "silent" });

/** Writes `files` into `dir` and returns a manifest for them. */
export async function writeFilesWithManifest(
  dir: string,
  instanceId: number,
  files: Record<string, Buffer>,
): Promise<CheckpointManifest> {
  const listed = [];
  for (const [name, data] of Object.entries(files)) {
    await writeFile(path.join(dir, name), data);
    listed.push({ path: name, size: data.length, sha256: createHash("sha256").update(data).digest("hex") });
  }
  return { format: 1, instanceId, createdAt: new Date().toISOString(), entries: 0, files: listed };
}

export async function names(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

/** Polls `cond` every 10 ms for at most `ms`. */
export async function eventually(cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const put = (key: string, value: string | Buffer) =>
  encodeKvCommand({ op: "put", key, value: typeof value === "string" ? Buffer.from(value) : value });
export const del = (key: string) => encodeKvCommand({ op: "delete", key });

/** Applies commands, as executed, to a plain map: the model of the KV state. */
export function applyToModel(model: Map<string, Buffer>, commands: readonly Uint8Array[]): void {
  for (const bytes of commands) {
    const c = decodeKvCommand(bytes);
    if (c.op === "put") model.set(c.key, Buffer.from(c.value));
    else model.delete(c.key);
  }
}
