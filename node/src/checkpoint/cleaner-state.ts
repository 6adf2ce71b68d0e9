// The log cleaner's settings: the admin API's input (`PUT /v1/admin/cleaner`) and the state file
// that keeps them across restarts (`<data>/cleaner.json`).

import { open, readFile, rename } from "node:fs/promises";
import path from "node:path";

export type CleanerState = "running" | "paused";

/** What `/v1/status` shows as `cleaner` and what `PUT /v1/admin/cleaner` answers. */
export interface CleanerSettings {
  state: CleanerState;
  /** RFC 3339 (UTC) time at which a running cleaner pauses itself; null when it has none. */
  until: string | null;
  holdCount: number;
}

/** A validated `PUT /v1/admin/cleaner` body. */
export interface CleanerUpdate {
  state: CleanerState;
  /** Only with state "running". Absent or null: no end. */
  until?: Date | null;
  /** Absent: unchanged. */
  holdCount?: number;
}

/** A bad admin request: the HTTP layer answers 400 with this message. */
export class CleanerInputError extends Error {
  override readonly name = "CleanerInputError";
  constructor(
    /** The body field at fault ("body" for the body as a whole). */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const UPDATE_FIELDS = new Set(["state", "until", "holdCount"]);

/** Validates a parsed JSON body of `PUT /v1/admin/cleaner`; throws CleanerInputError naming the field. */
export function parseCleanerUpdate(body: unknown): CleanerUpdate {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new CleanerInputError(
      "body",
      `the body must be a JSON object such as {"state":"running"}, got ${describe(body)}`,
    );
  }
  const fields = body as Record<string, unknown>;
  for (const name of Object.keys(fields)) {
    if (!UPDATE_FIELDS.has(name)) {
      throw new CleanerInputError(name, `unknown field "${name}" (allowed: state, until, holdCount)`);
    }
  }
  const { state, until, holdCount } = fields;
  if (state !== "running" && state !== "paused") {
    throw new CleanerInputError(
      "state",
      state === undefined
        ? 'state is required: "running" or "paused"'
        : `state must be "running" or "paused", got ${describe(state)}`,
    );
  }
  const update: CleanerUpdate = { state };
  if (until !== undefined && until !== null) {
    if (typeof until !== "string") {
      throw new CleanerInputError(
        "until",
        `until must be an RFC 3339 timestamp string, got ${describe(until)}`,
      );
    }
    const ms = parseRfc3339(until);
    if (ms === undefined) {
      throw new CleanerInputError(
        "until",
        `until must be an RFC 3339 timestamp with a time zone, such as 2026-11-28T10:00:00Z or 2026-11-28T12:00:00+02:00, got ${JSON.stringify(until)}`,
      );
    }
    if (state !== "running") {
      throw new CleanerInputError(
        "until",
        'until is only allowed with state "running": it is the time at which the cleaner pauses itself',
      );
    }
    update.until = new Date(ms);
  } else if (until === null) {
    update.until = null;
  }
  if (holdCount !== undefined) {
    if (typeof holdCount !== "number" || !Number.isSafeInteger(holdCount) || holdCount < 0) {
      throw new CleanerInputError(
        "holdCount",
        `holdCount must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}, got ${describe(holdCount)}`,
      );
    }
    update.holdCount = holdCount;
  }
  return update;
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  if (Array.isArray(v)) return "an array";
  const json = JSON.stringify(v);
  return json.length > 80 ? `${json.slice(0, 80)}...` : json;
}

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * Milliseconds since the epoch of an RFC 3339 date-time (section 5.6: a time zone is required), or
 * undefined when the text is not one or names an impossible date. Leap seconds (":60") are refused:
 * JavaScript time cannot represent them.
 */
export function parseRfc3339(text: string): number | undefined {
  const m = RFC3339.exec(text);
  if (m === null) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const millis = m[7] === undefined ? 0 : Number(m[7].padEnd(3, "0").slice(0, 3));
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) return undefined;
  let offsetMinutes = 0;
  if (m[8] === undefined) {
    const offsetHours = Number(m[10]);
    const offsetMins = Number(m[11]);
    if (offsetHours > 23 || offsetMins > 59) return undefined;
    offsetMinutes = (m[9] === "-" ? -1 : 1) * (offsetHours * 60 + offsetMins);
  }
  // setUTCFullYear, unlike Date.UTC, does not map years 0..99 to 1900..1999.
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  if (date.getUTCMonth() !== month - 1) return undefined; // e.g. February 30th rolled over
  date.setUTCHours(hour, minute, second, millis);
  const ms = date.getTime() - offsetMinutes * 60_000;
  // The offset may carry 0000-01-01 or 9999-12-31 out of the four-digit years that RFC 3339 (and
  // the state file, which stores toISOString()) can write.
  const utcYear = new Date(ms).getUTCFullYear();
  return utcYear < 0 || utcYear > 9999 ? undefined : ms;
}

/** The content of the state file. */
export interface StoredCleanerState {
  state: CleanerState;
  /** Epoch milliseconds, or null. */
  until: number | null;
  holdCount: number;
  /** The `--hold-count` flag in force when holdCount was set: a different flag at start wins. */
  flagHoldCount: number;
}

const STATE_FORMAT = 1;

/** The state file exists but its content is not a valid state. */
export class CleanerStateFileError extends Error {
  override readonly name = "CleanerStateFileError";
}

/**
 * Reads the state file: undefined when there is none; CleanerStateFileError (naming the file and
 * the field) when its content is not a valid state; other errors as the file system reports them.
 */
export async function readCleanerState(file: string): Promise<StoredCleanerState | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  const bad = (why: string) => new CleanerStateFileError(`cleaner state file ${file} is unusable: ${why}`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw bad("not a JSON object");
  const d = doc as Record<string, unknown>;
  if (d.format !== STATE_FORMAT) throw bad(`format ${JSON.stringify(d.format)} is not ${STATE_FORMAT}`);
  if (d.state !== "running" && d.state !== "paused") throw bad(`state ${JSON.stringify(d.state)}`);
  let until: number | null = null;
  if (d.until !== null) {
    const ms = typeof d.until === "string" ? parseRfc3339(d.until) : undefined;
    if (ms === undefined) throw bad(`until ${JSON.stringify(d.until)} is not an RFC 3339 timestamp`);
    until = ms;
  }
  const count = (name: "holdCount" | "flagHoldCount"): number => {
    const v = d[name];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      throw bad(`${name} ${JSON.stringify(v)} is not an integer >= 0`);
    }
    return v;
  };
  return { state: d.state, until, holdCount: count("holdCount"), flagHoldCount: count("flagHoldCount") };
}

/**
 * Replaces the state file atomically and durably: write a temporary file, fsync it, rename it over
 * the old one, fsync the directory. A crash leaves either the old or the new content.
 */
export async function writeCleanerState(file: string, s: StoredCleanerState): Promise<void> {
  const doc = {
    format: STATE_FORMAT,
    state: s.state,
    until: s.until === null ? null : new Date(s.until).toISOString(),
    holdCount: s.holdCount,
    flagHoldCount: s.flagHoldCount,
  };
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, "w");
  try {
    await fh.writeFile(`${JSON.stringify(doc)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  const dir = await open(path.dirname(file), "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
