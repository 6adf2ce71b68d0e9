// The records the kill -9 test's child writes, derived from the instance so the parent can check them.

import type { LogRecord } from "../../src/paxos/types.js";

export function crashTestRecord(instance: number): LogRecord {
  return {
    instance,
    ballot: { counter: 1 + Math.floor(instance / 100), member: "n1" },
    chosen: true,
    value: {
      kind: "commands",
      id: `crash-${instance}`,
      commands: [new Uint8Array(100).fill(instance & 0xff)],
    },
  };
}
