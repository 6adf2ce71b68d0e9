// Child process for the kill -9 test: appends chosen records to a PaxosLog, keeping a few
// persist() calls in flight so that group commit merges them, and prints each instance to stdout
// only after its persist() resolved. The parent kills it at an arbitrary point.
//
// Usage: node log-writer-child.js <log dir> <records to write> <journal bytes> <inline|background>

import { PaxosLog } from "../../src/storage/paxos-log.js";
import { crashTestRecord } from "./crash-records.js";

const [dir, countArg, journalArg, mode] = process.argv.slice(2);
const count = Number(countArg);
const journalBytes = Number(journalArg);
if (
  dir === undefined ||
  !Number.isSafeInteger(count) ||
  count < 1 ||
  !Number.isSafeInteger(journalBytes) ||
  (mode !== "inline" && mode !== "background")
) {
  process.stderr.write(
    "usage: log-writer-child.js <log dir> <records to write> <journal bytes> <inline|background>\n",
  );
  process.exit(2);
}
const background = mode === "background";

const IN_FLIGHT = 8;

const log = await PaxosLog.open(dir, {}, { journalBytes });
const start = (await log.recover()).chosenUpTo + 1;
const end = start + count;
let next = start;

async function writer(): Promise<void> {
  while (next < end) {
    const instance = next++;
    const record = crashTestRecord(instance);
    await log.persist({ promised: record.ballot, records: [record], chosenUpTo: instance }, { background });
    // stdout is a pipe: writes to it are synchronous on Linux, so an acknowledged line is never lost.
    process.stdout.write(`${instance}\n`);
  }
}

await Promise.all(Array.from({ length: IN_FLIGHT }, writer));
await log.close();
