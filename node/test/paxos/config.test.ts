// Table tests of membership: change validation, quorums, which configuration governs which
// instance, and the encoding of configuration values and handover messages.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  CodecError,
  decodeRecord,
  encodeRecord,
  MESSAGE_TYPE_CODES,
  Reader,
  readMessageBody,
  readValue,
  Writer,
  writeMessageBody,
  writeValue,
} from "../../src/paxos/codec.js";
import {
  ConfigHistory,
  hasMajority,
  isOneStep,
  majority,
  validateChange,
  votersOf,
} from "../../src/paxos/config.js";
import type { ConfigChange, Configuration, Message, Value } from "../../src/paxos/types.js";

function config(spec: string): Configuration {
  // "a b c | d" = voters a, b, c and learner d.
  const [voters = "", learners = ""] = spec.split("|");
  const names = (s: string) => s.trim().split(/\s+/).filter(Boolean);
  return {
    members: [
      ...names(voters).map((name) => ({ name, address: `${name}:7070`, role: "voter" as const })),
      ...names(learners).map((name) => ({ name, address: `${name}:7070`, role: "learner" as const })),
    ],
  };
}

const everyoneLive = { has: () => true };
const liveSet = (...names: string[]) => new Set(names);

test("majority and hasMajority count voters only", () => {
  const cases: [string, string[], number, boolean][] = [
    ["a", ["a"], 1, true],
    ["a b", ["a"], 2, false],
    ["a b c", ["a", "c"], 2, true],
    ["a b c | d e", ["a", "d", "e"], 2, false],
    ["a b c d", ["a", "b"], 3, false],
    ["a b c d", ["a", "b", "d"], 3, true],
    ["a b c d e | f", ["c", "d", "e", "f"], 3, true],
  ];
  for (const [spec, members, need, expected] of cases) {
    const c = config(spec);
    assert.equal(majority(c), need, spec);
    assert.equal(hasMajority(c, new Set(members)), expected, `${spec} with ${members}`);
  }
});

test("validateChange: valid changes give the next configuration", () => {
  const cases: [string, ConfigChange, string][] = [
    ["a b c", { kind: "addLearner", name: "d", address: "d:7070" }, "a b c | d"],
    ["a b c | d", { kind: "promote", name: "d" }, "a b c d"],
    ["a b c d", { kind: "remove", name: "b" }, "a c d"],
    ["a b c | d", { kind: "remove", name: "d" }, "a b c"],
    ["a b", { kind: "remove", name: "a" }, "b"],
    ["a | b", { kind: "promote", name: "b" }, "a b"],
  ];
  for (const [from, change, to] of cases) {
    const r = validateChange(config(from), change, everyoneLive);
    assert.ok(r.ok, `${from} + ${JSON.stringify(change)}: ${r.ok ? "" : r.message}`);
    assert.deepEqual(
      [...r.config.members].sort((x, y) => x.name.localeCompare(y.name)),
      [...config(to).members].sort((x, y) => x.name.localeCompare(y.name)),
    );
    assert.ok(isOneStep(config(from), r.config));
  }
});

test("validateChange: invalid changes are refused with a reason that names the problem", () => {
  const cases: [string, ConfigChange, RegExp][] = [
    ["a b c", { kind: "addLearner", name: "b", address: "b:1" }, /b is already a member \(voter\)/],
    ["a b c | d", { kind: "addLearner", name: "d", address: "d:1" }, /already a member \(learner\)/],
    ["a b c", { kind: "addLearner", name: "d", address: "" }, /needs an address/],
    ["a b c", { kind: "addLearner", name: "", address: "x" }, /must not be empty/],
    ["a b c", { kind: "promote", name: "a" }, /a is already a voter/],
    ["a b c", { kind: "promote", name: "z" }, /z is not a member/],
    ["a b c", { kind: "remove", name: "z" }, /z is not a member/],
  ];
  for (const [from, change, message] of cases) {
    const r = validateChange(config(from), change, everyoneLive);
    assert.equal(r.ok, false, `${from} + ${JSON.stringify(change)}`);
    if (!r.ok) {
      assert.equal(r.reason, "invalid");
      assert.match(r.message, message);
    }
  }
});

test("validateChange: removing the last voter is refused like any change that leaves no quorum", () => {
  const r = validateChange(config("a | b"), { kind: "remove", name: "a" }, everyoneLive);
  assert.deepStrictEqual(r, { ok: false, reason: "no_quorum", message: "removing a would leave no voter" });
});

test("validateChange: a change of voters needs the live voters to be a majority afterwards", () => {
  const cases: [string, ConfigChange, Set<string>, boolean][] = [
    // Removing a dead voter restores the margin; removing a live one with another down does not.
    ["a b c", { kind: "remove", name: "c" }, liveSet("a", "b"), true],
    ["a b c", { kind: "remove", name: "b" }, liveSet("a", "b"), false],
    ["a b c d", { kind: "remove", name: "d" }, liveSet("a", "b"), true],
    // Promoting a learner that does not answer: 4 voters need 3 live.
    ["a b c | d", { kind: "promote", name: "d" }, liveSet("a", "b", "c"), true],
    ["a b c | d", { kind: "promote", name: "d" }, liveSet("a", "b"), false],
    ["a | d", { kind: "promote", name: "d" }, liveSet("a"), false],
    // Learners do not vote: adding or removing one never needs anyone live.
    ["a b c", { kind: "addLearner", name: "d", address: "d:1" }, liveSet(), true],
    ["a b c | d", { kind: "remove", name: "d" }, liveSet(), true],
  ];
  for (const [from, change, live, ok] of cases) {
    const r = validateChange(config(from), change, live);
    assert.equal(r.ok, ok, `${from} + ${JSON.stringify(change)} with ${[...live]} live`);
    if (!r.ok) {
      assert.equal(r.reason, "no_quorum");
      assert.match(r.message, /need \d+ live, but only \d+ answer/);
    }
  }
});

test("isOneStep accepts exactly one add, promotion or removal", () => {
  const cases: [string, string, boolean][] = [
    ["a b c", "a b c | d", true],
    ["a b c | d", "a b c d", true],
    ["a b c d", "a b c", true],
    ["a b c", "a b c", false],
    ["a b c", "a b c d", false],
    ["a b c", "a b | c", false],
    ["a b c", "a b | d", false],
    ["a b c | d", "a b d", false],
  ];
  for (const [a, b, expected] of cases)
    assert.equal(isOneStep(config(a), config(b)), expected, `${a} -> ${b}`);
});

test("ConfigHistory: a configuration chosen at k governs from k + activationDelay", () => {
  const h = new ConfigHistory(config("a b c"), 4);
  h.add(10, config("a b c | d"));
  h.add(20, config("a b c d"));
  const table: [number, string][] = [
    [0, "a b c"],
    [13, "a b c"],
    [14, "a b c | d"],
    [23, "a b c | d"],
    [24, "a b c d"],
    [1000, "a b c d"],
  ];
  for (const [instance, spec] of table)
    assert.deepEqual(h.at(instance), config(spec), `instance ${instance}`);
  assert.deepEqual(h.between(12, 15).map(votersOf), [
    ["a", "b", "c"],
    ["a", "b", "c"],
  ]);
  assert.equal(h.between(12, 15).length, 2, "the initial configuration and the one in force from 14");
  assert.equal(h.from(15).length, 2, "in force at 15, and pending from 24");
  assert.equal(h.latest.since, 24);
  // Adding the same instance twice (a value handed out again after a crash) changes nothing.
  h.add(20, config("a b c d"));
  assert.equal(h.all().length, 3);
  h.prune(30);
  assert.equal(h.all().length, 1);
  assert.deepEqual(h.at(30), config("a b c d"));
});

test("configuration values and handover messages round-trip; old tags are unchanged", () => {
  const value: Value = { kind: "config", id: "m1/x/3", config: config("a b | c") };
  const w = new Writer();
  writeValue(w, value);
  const bytes = w.finish();
  assert.equal(bytes[0], 2, "configuration values use tag 2");
  assert.deepEqual(readValue(new Reader(bytes)), value);
  const rec = { instance: 7, ballot: { counter: 3, member: "a" }, chosen: true, value };
  assert.deepEqual(decodeRecord(encodeRecord(rec)), rec);

  const noop = new Writer();
  writeValue(noop, { kind: "noop", id: "x" });
  assert.equal(noop.finish()[0], 0);

  const msg: Message = { type: "handover", ballot: { counter: 9, member: "a" }, to: "b" };
  const mw = new Writer();
  writeMessageBody(mw, msg);
  assert.equal(MESSAGE_TYPE_CODES.handover, 10);
  assert.deepEqual(readMessageBody(MESSAGE_TYPE_CODES.handover, new Reader(mw.finish())), msg);
  assert.equal(MESSAGE_TYPE_CODES.learnReply, 9, "existing codes keep their numbers");

  // A member with an unknown role is a CodecError, not a guess.
  const bad = new Writer();
  bad.u8(2).string("id").u32(1).string("a").string("a:1").u8(7);
  assert.throws(() => readValue(new Reader(bad.finish())), CodecError);
});
