// Commands of the built-in key-value state machine, as carried inside a chosen value.

import { CodecError, Reader, Writer } from "../paxos/codec.js";

export type KvCommand =
  | { readonly op: "put"; readonly key: string; readonly value: Uint8Array }
  | { readonly op: "delete"; readonly key: string };

const OP_PUT = 1;
const OP_DELETE = 2;

export function encodeKvCommand(c: KvCommand): Uint8Array {
  const w = new Writer(16 + c.key.length * 3 + (c.op === "put" ? c.value.length : 0));
  if (c.op === "put") w.u8(OP_PUT).string(c.key).bytes(c.value);
  else w.u8(OP_DELETE).string(c.key);
  return w.finish();
}

export function decodeKvCommand(buf: Uint8Array): KvCommand {
  const r = new Reader(buf);
  const op = r.u8();
  const key = r.string();
  let c: KvCommand;
  if (op === OP_PUT) c = { op: "put", key, value: r.bytes() };
  else if (op === OP_DELETE) c = { op: "delete", key };
  else throw new CodecError(`unknown kv op ${op}`);
  r.end();
  return c;
}
