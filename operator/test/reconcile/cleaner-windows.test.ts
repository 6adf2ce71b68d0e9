import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { CleanerWindow } from "../../src/api/paxos-group.js";
import { cleanerWindowState, parseGoDuration } from "../../src/reconcile/cleaner-windows.js";

const iso = (d: Date | null): string | null => (d ? d.toISOString() : null);

describe("parseGoDuration", () => {
  const valid: [string, number][] = [
    ["2h", 7_200_000],
    ["1h30m", 5_400_000],
    ["1.5s", 1500],
    ["300ms", 300],
    ["1500us", 1.5],
    ["2\u00b5s", 0.002],
    ["1m0.5s", 60_500],
    ["5.h", 18_000_000],
    [".5m", 30_000],
    ["-10m", -600_000],
    ["+5s", 5000],
    ["0", 0],
    ["0s", 0],
  ];
  for (const [text, ms] of valid) {
    test(`${JSON.stringify(text)} is ${ms} ms`, () => {
      assert.ok(Math.abs(parseGoDuration(text) - ms) < 1e-9, `got ${parseGoDuration(text)}`);
    });
  }
  const invalid: [string, RegExp][] = [
    ["", /invalid duration "": empty/],
    ["-", /invalid duration "-": empty/],
    ["5", /missing unit/],
    ["1h5", /missing unit/],
    ["1d", /unknown unit "d"/],
    ["h", /expected a number/],
    [".s", /expected a number/],
    ["2 h", /unknown unit " h"/],
  ];
  for (const [text, message] of invalid) {
    test(`${JSON.stringify(text)} is refused`, () => {
      assert.throws(() => parseGoDuration(text), message);
    });
  }
});

interface Case {
  name: string;
  windows: CleanerWindow[] | undefined;
  now: string;
  open: boolean;
  until: string | null;
  nextWindowStart: string | null;
  nextWindowEnd: string | null;
  errors?: RegExp[];
}

const nightly: CleanerWindow = { schedule: "0 2 * * *", duration: "2h" };

const cases: Case[] = [
  {
    name: "no windows: always open, nothing to requeue for",
    windows: undefined,
    now: "2025-06-01T12:00:00Z",
    open: true,
    until: null,
    nextWindowStart: null,
    nextWindowEnd: null,
  },
  {
    name: "empty list: always open",
    windows: [],
    now: "2025-06-01T12:00:00Z",
    open: true,
    until: null,
    nextWindowStart: null,
    nextWindowEnd: null,
  },
  {
    name: "a window open now (timeZone defaults to UTC)",
    windows: [nightly],
    now: "2025-06-01T03:00:00Z",
    open: true,
    until: "2025-06-01T04:00:00.000Z",
    nextWindowStart: "2025-06-02T02:00:00.000Z",
    nextWindowEnd: "2025-06-02T04:00:00.000Z",
  },
  {
    name: "a later window",
    windows: [nightly],
    now: "2025-06-01T01:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-06-01T02:00:00.000Z",
    nextWindowEnd: "2025-06-01T04:00:00.000Z",
  },
  {
    name: "the start is inside the window",
    windows: [nightly],
    now: "2025-06-01T02:00:00Z",
    open: true,
    until: "2025-06-01T04:00:00.000Z",
    nextWindowStart: "2025-06-02T02:00:00.000Z",
    nextWindowEnd: "2025-06-02T04:00:00.000Z",
  },
  {
    name: "the end is outside the window",
    windows: [nightly],
    now: "2025-06-01T04:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-06-02T02:00:00.000Z",
    nextWindowEnd: "2025-06-02T04:00:00.000Z",
  },
  {
    name: "a window spanning midnight, evaluated after midnight",
    windows: [{ schedule: "0 23 * * *", duration: "3h", timeZone: "UTC" }],
    now: "2025-06-02T00:30:00Z",
    open: true,
    until: "2025-06-02T02:00:00.000Z",
    nextWindowStart: "2025-06-02T23:00:00.000Z",
    nextWindowEnd: "2025-06-03T02:00:00.000Z",
  },
  {
    name: "a window spanning midnight on the last day of the month, evaluated before midnight",
    windows: [{ schedule: "30 22 * * *", duration: "2h30m" }],
    now: "2025-06-30T23:59:00Z",
    open: true,
    until: "2025-07-01T01:00:00.000Z",
    nextWindowStart: "2025-07-01T22:30:00.000Z",
    nextWindowEnd: "2025-07-02T01:00:00.000Z",
  },
  {
    name: "a non-UTC zone: 02:00 in New York (EDT, UTC-4)",
    windows: [{ ...nightly, timeZone: "America/New_York" }],
    now: "2025-06-01T05:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-06-01T06:00:00.000Z",
    nextWindowEnd: "2025-06-01T08:00:00.000Z",
  },
  {
    // Berlin leaves summer time on 2025-10-26 at 01:00Z (03:00 CEST -> 02:00 CET).
    name: "Europe/Berlin before the October change: 04:00 CEST is 02:00Z",
    windows: [{ schedule: "0 4 * * *", duration: "1h", timeZone: "Europe/Berlin" }],
    now: "2025-10-25T00:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-10-25T02:00:00.000Z",
    nextWindowEnd: "2025-10-25T03:00:00.000Z",
  },
  {
    name: "Europe/Berlin across the October change: the next 04:00 is CET, 03:00Z",
    windows: [{ schedule: "0 4 * * *", duration: "1h", timeZone: "Europe/Berlin" }],
    now: "2025-10-25T12:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-10-26T03:00:00.000Z",
    nextWindowEnd: "2025-10-26T04:00:00.000Z",
  },
  {
    name: "Europe/Berlin: a window open across the change lasts its duration in real time",
    // Fires at 01:00 CEST (23:00Z); 3h later is 02:00Z, which Berlin clocks show as 03:00 CET.
    windows: [{ schedule: "0 1 * * *", duration: "3h", timeZone: "Europe/Berlin" }],
    now: "2025-10-26T01:30:00Z",
    open: true,
    until: "2025-10-26T02:00:00.000Z",
    nextWindowStart: "2025-10-27T00:00:00.000Z",
    nextWindowEnd: "2025-10-27T03:00:00.000Z",
  },
  {
    name: "Europe/Berlin: the repeated hour 02:30 fires once on the day of the change",
    windows: [{ schedule: "30 2 * * *", duration: "30m", timeZone: "Europe/Berlin" }],
    now: "2025-10-26T02:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-10-27T01:30:00.000Z",
    nextWindowEnd: "2025-10-27T02:00:00.000Z",
  },
  {
    name: "overlapping windows of two entries merge",
    windows: [nightly, { schedule: "0 3 * * *", duration: "2h" }],
    now: "2025-06-01T02:30:00Z",
    open: true,
    until: "2025-06-01T05:00:00.000Z",
    nextWindowStart: "2025-06-02T02:00:00.000Z",
    nextWindowEnd: "2025-06-02T05:00:00.000Z",
  },
  {
    name: "touching windows merge",
    windows: [
      { schedule: "0 2 * * *", duration: "1h" },
      { schedule: "0 3 * * *", duration: "1h" },
    ],
    now: "2025-06-01T02:30:00Z",
    open: true,
    until: "2025-06-01T04:00:00.000Z",
    nextWindowStart: "2025-06-02T02:00:00.000Z",
    nextWindowEnd: "2025-06-02T04:00:00.000Z",
  },
  {
    name: "one entry overlapping itself merges",
    windows: [{ schedule: "0 0,1 * * *", duration: "90m" }],
    now: "2025-06-01T00:15:00Z",
    open: true,
    until: "2025-06-01T02:30:00.000Z",
    nextWindowStart: "2025-06-02T00:00:00.000Z",
    nextWindowEnd: "2025-06-02T02:30:00.000Z",
  },
  {
    name: "a later window of the second entry while the first is closed",
    windows: [nightly, { schedule: "0 12 * * 1", duration: "30m" }],
    now: "2025-06-01T05:00:00Z", // a Sunday
    open: false,
    until: null,
    nextWindowStart: "2025-06-02T02:00:00.000Z",
    nextWindowEnd: "2025-06-02T04:00:00.000Z",
  },
  {
    name: "an unknown time zone is reported and that window ignored",
    windows: [
      { ...nightly, timeZone: "Mars/Olympus" },
      { schedule: "0 6 * * *", duration: "1h" },
    ],
    now: "2025-06-01T03:00:00Z",
    open: false,
    until: null,
    nextWindowStart: "2025-06-01T06:00:00.000Z",
    nextWindowEnd: "2025-06-01T07:00:00.000Z",
    errors: [/^spec\.logCleaner\.windows\[0\]\.timeZone: unknown IANA time zone "Mars\/Olympus"$/],
  },
  {
    name: "only invalid windows: closed, never open",
    windows: [
      { ...nightly, timeZone: "Not/AZone" },
      { schedule: "0 0 2 * * *", duration: "1h" },
      { schedule: "0 2 * * *", duration: "0s" },
      { schedule: "0 2 * * *", duration: "-1h" },
      { schedule: "0 2 * * *", duration: "2 days" },
      { schedule: "0 99 * * *", duration: "1h" },
    ],
    now: "2025-06-01T03:00:00Z",
    open: false,
    until: null,
    nextWindowStart: null,
    nextWindowEnd: null,
    errors: [
      /^spec\.logCleaner\.windows\[0\]\.timeZone: unknown IANA time zone "Not\/AZone"$/,
      /^spec\.logCleaner\.windows\[1\]\.schedule: "0 0 2 \* \* \*" must have 5 fields .*not 6$/,
      /^spec\.logCleaner\.windows\[2\]\.duration: "0s" must be positive$/,
      /^spec\.logCleaner\.windows\[3\]\.duration: "-1h" must be positive$/,
      /^spec\.logCleaner\.windows\[4\]\.duration: invalid duration "2 days"/,
      /^spec\.logCleaner\.windows\[5\]\.schedule: "0 99 \* \* \*": /,
    ],
  },
];

describe("cleanerWindowState", () => {
  for (const c of cases) {
    test(c.name, () => {
      const s = cleanerWindowState(c.windows, new Date(c.now));
      assert.deepEqual(
        {
          open: s.open,
          until: iso(s.until),
          nextWindowStart: iso(s.nextWindowStart),
          nextWindowEnd: iso(s.nextWindowEnd),
          nextBoundary: iso(s.nextBoundary),
        },
        {
          open: c.open,
          until: c.until,
          nextWindowStart: c.nextWindowStart,
          nextWindowEnd: c.nextWindowEnd,
          nextBoundary: c.open ? c.until : c.nextWindowStart,
        },
      );
      const expected = c.errors ?? [];
      assert.equal(s.errors.length, expected.length, `errors: ${JSON.stringify(s.errors)}`);
      expected.forEach((re, i) => {
        assert.match(s.errors[i] ?? "", re);
      });
    });
  }

  test("a schedule that overlaps itself forever stays open with a bounded look-ahead", () => {
    const now = new Date("2025-06-01T00:10:00Z");
    const s = cleanerWindowState([{ schedule: "*/30 * * * *", duration: "1h" }], now);
    assert.equal(s.open, true);
    assert.ok(s.until && s.until.getTime() > now.getTime() + 24 * 3_600_000, `until ${iso(s.until)}`);
    assert.deepEqual(s.nextBoundary, s.until);
    assert.equal(s.nextWindowStart, null);
    assert.deepEqual(s.errors, []);
  });

  test("requeueing at nextBoundary walks through open and closed states", () => {
    let now = new Date("2025-06-01T00:00:00Z");
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const s = cleanerWindowState([nightly], now);
      seen.push(`${s.open ? "open" : "closed"} until ${iso(s.nextBoundary)}`);
      assert.ok(s.nextBoundary && s.nextBoundary.getTime() > now.getTime());
      now = s.nextBoundary;
    }
    assert.deepEqual(seen, [
      "closed until 2025-06-01T02:00:00.000Z",
      "open until 2025-06-01T04:00:00.000Z",
      "closed until 2025-06-02T02:00:00.000Z",
      "open until 2025-06-02T04:00:00.000Z",
    ]);
  });
});
