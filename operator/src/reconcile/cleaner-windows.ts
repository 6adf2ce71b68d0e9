// Cleaner windows: when may the members' log cleaners run? Pure: the answer depends only on the
// spec's windows and the given instant, so it is table-testable and the reconciler just applies
// it (tell members `running` until `until`, or `paused`) and requeues at `nextBoundary`.
import { Cron } from "croner";
import { type CleanerWindow, DEFAULT_TIME_ZONE } from "../api/paxos-group.js";

export interface CleanerWindowState {
  /** True while inside a window, or always when no windows are configured. */
  open: boolean;
  /** End of the open (merged) window; null when closed or when there are no windows. */
  until: Date | null;
  /** Start and end of the first window that begins after now (after the open one, if open). */
  nextWindowStart: Date | null;
  nextWindowEnd: Date | null;
  /** When the answer next changes: the operator requeues itself then. */
  nextBoundary: Date | null;
  /** Windows that could not be evaluated (and were ignored), e.g. an unknown time zone. */
  errors: string[];
}

/**
 * Bounds the work per evaluation. A schedule that fires more often than its duration (say every
 * minute for 2h) forms one endless window; after this many fire times the window's end is reported
 * as the last one found, which is a safe lower bound: the operator re-evaluates at that boundary.
 */
const MAX_FIRE_TIMES = 2000;

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "\u00b5s": 1e-3, // micro sign, as Go accepts
  "\u03bcs": 1e-3, // Greek mu, as Go accepts
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

/**
 * Parses a Go duration (time.ParseDuration syntax: "2h", "1h30m", "1.5s", "-10m", "0") into
 * milliseconds, possibly fractional. Throws an Error naming the text and the problem.
 */
export function parseGoDuration(text: string): number {
  function fail(why: string): never {
    throw new Error(`invalid duration ${JSON.stringify(text)}: ${why}`);
  }
  let rest = text;
  let sign = 1;
  if (rest.startsWith("-") || rest.startsWith("+")) {
    if (rest.startsWith("-")) sign = -1;
    rest = rest.slice(1);
  }
  if (rest === "0") return 0;
  if (rest === "") fail("empty");
  let total = 0;
  const component = /^([0-9]*)(?:\.([0-9]*))?([^0-9.]*)/;
  while (rest !== "") {
    // Always matches (every part may be empty), so the checks below decide.
    const m = component.exec(rest) ?? fail(`cannot parse ${JSON.stringify(rest)}`);
    const [matched, whole = "", frac = "", unit = ""] = m;
    if (whole === "" && frac === "") fail(`expected a number at ${JSON.stringify(rest)}`);
    if (unit === "") fail(`missing unit after ${JSON.stringify(matched)} (use ns, us, ms, s, m or h)`);
    const scale = UNIT_MS[unit] ?? fail(`unknown unit ${JSON.stringify(unit)} (use ns, us, ms, s, m or h)`);
    total += Number(`${whole || "0"}.${frac || "0"}`) * scale;
    rest = rest.slice(matched.length);
  }
  if (!Number.isFinite(total)) fail("out of range");
  return sign * total;
}

/** [start, end) in epoch milliseconds. */
interface Interval {
  start: number;
  end: number;
}

interface FireStream {
  cron: Cron;
  durationMs: number;
  next: Date | null;
}

function isKnownTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** Builds one window's fire-time stream starting with the first fire time that could still be open at `now`. */
function openStream(window: CleanerWindow, index: number, now: Date, errors: string[]): FireStream | null {
  const field = `spec.logCleaner.windows[${index}]`;
  const tz = window.timeZone ?? DEFAULT_TIME_ZONE;
  if (!isKnownTimeZone(tz)) {
    errors.push(`${field}.timeZone: unknown IANA time zone ${JSON.stringify(tz)}`);
    return null;
  }
  // croner also takes 6- and 7-field patterns (with seconds and years); the API promises 5 fields.
  const fields = window.schedule.trim().split(/\s+/);
  if (fields.length !== 5) {
    errors.push(
      `${field}.schedule: ${JSON.stringify(window.schedule)} must have 5 fields (minute hour day-of-month month day-of-week), not ${fields.length}`,
    );
    return null;
  }
  let durationMs: number;
  try {
    durationMs = parseGoDuration(window.duration);
  } catch (e) {
    errors.push(`${field}.duration: ${(e as Error).message}`);
    return null;
  }
  if (!(durationMs > 0)) {
    errors.push(`${field}.duration: ${JSON.stringify(window.duration)} must be positive`);
    return null;
  }
  try {
    const cron = new Cron(window.schedule, { timezone: tz, paused: true });
    // A fire time at or before now - duration has closed already; nextRun is strictly after.
    return { cron, durationMs, next: cron.nextRun(new Date(now.getTime() - durationMs)) };
  } catch (e) {
    errors.push(`${field}.schedule: ${JSON.stringify(window.schedule)}: ${(e as Error).message}`);
    return null;
  }
}

/**
 * Evaluates the cleaner windows at `now`. Each window is open from each fire time of its schedule
 * (in its IANA time zone) for its duration; overlapping or touching windows, of the same or of
 * different entries, merge into one. No windows: always open. Windows that cannot be evaluated are
 * ignored and reported in `errors`; if every window is invalid the cleaner stays closed, since a
 * broken schedule must not let it run at any time.
 */
export function cleanerWindowState(
  windows: readonly CleanerWindow[] | undefined,
  now: Date,
): CleanerWindowState {
  if (!windows || windows.length === 0) {
    return {
      open: true,
      until: null,
      nextWindowStart: null,
      nextWindowEnd: null,
      nextBoundary: null,
      errors: [],
    };
  }
  const errors: string[] = [];
  const streams = windows
    .map((w, i) => openStream(w, i, now, errors))
    .filter((s): s is FireStream => s !== null);

  const t = now.getTime();
  let fired = 0;
  // Fire times of all windows in ascending order, merged into blocks [start, end).
  const nextInterval = (): Interval | null => {
    if (fired >= MAX_FIRE_TIMES) return null;
    let best: FireStream | null = null;
    for (const s of streams) {
      if (s.next && (!best?.next || s.next.getTime() < best.next.getTime())) best = s;
    }
    if (!best?.next) return null;
    const start = best.next.getTime();
    best.next = best.cron.nextRun(best.next);
    fired++;
    return { start, end: start + best.durationMs };
  };

  let until: Date | null = null;
  let upcoming: Interval | null = null;
  let block: Interval | null = null;
  for (;;) {
    const iv = nextInterval();
    if (block && iv && iv.start <= block.end) {
      block.end = Math.max(block.end, iv.end);
      continue;
    }
    // `block` is complete. The first one starting after now ends the search.
    if (block) {
      if (block.start > t) {
        upcoming = block;
        break;
      }
      if (block.end > t) until = new Date(block.end);
    }
    if (!iv) break;
    block = iv;
  }

  const nextWindowStart = upcoming ? new Date(upcoming.start) : null;
  return {
    open: until !== null,
    until,
    nextWindowStart,
    nextWindowEnd: upcoming ? new Date(upcoming.end) : null,
    nextBoundary: until ?? nextWindowStart,
    errors,
  };
}
