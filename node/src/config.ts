// paxos-node's configuration: flags override environment variables, which override defaults
// (DESIGN.md, "paxos-node process"). Parsing is pure; reading the token file and probing the
// termination log are separate helpers for the caller.

import { accessSync, constants, readFileSync } from "node:fs";
import { isIP } from "node:net";

/** Invalid configuration. The message names the flag or environment variable and says why. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

export interface PeerAddress {
  readonly name: string;
  /** A DNS name or an IP address; IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
  /** `host:port` as it belongs in a URL (IPv6 in brackets). */
  readonly address: string;
}

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  readonly member: string;
  readonly group: string;
  /** In the order given; includes this member. */
  readonly peers: readonly PeerAddress[];
  readonly dataDir: string;
  readonly peerPort: number;
  readonly httpPort: number;
  /** The address both the peer port and the HTTP port listen on. */
  readonly host: string;
  /** Path of the shared-secret file; read it with readToken(). */
  readonly tokenFile: string | undefined;
  readonly holdCount: number;
  /** Make a checkpoint once this many instances were executed since the last one. */
  readonly checkpointEvery: number;
  /** ... but not more often than this (milliseconds); 0 allows back-to-back checkpoints. */
  readonly checkpointMinIntervalMs: number;
  /** Safety valve: past this many bytes of PaxosLog, clean even while paused; undefined = off. */
  readonly maxLogSize: number | undefined;
  /** An explicitly configured path; when undefined, resolveTerminationLog() picks the default if writable. */
  readonly terminationLog: string | undefined;
  readonly logLevel: LogLevel;
}

export const DEFAULT_TERMINATION_LOG = "/dev/termination-log";
const DEFAULT_GROUP = "paxos";

interface OptionSpec {
  readonly flag: string;
  readonly env: string;
  readonly arg: string;
  /** A plain default value. */
  readonly defaultValue?: string;
  /** How --help describes the default when there is no plain one. */
  readonly fallback?: string;
  readonly help: string;
}

const OPTIONS = [
  {
    flag: "member",
    env: "PAXOS_MEMBER",
    arg: "NAME",
    fallback: "required",
    help: "this member's name, e.g. kv-0 (lowercase letters, digits and '-', at most 63)",
  },
  {
    flag: "peers",
    env: "PAXOS_PEERS",
    arg: "LIST",
    fallback: "required",
    help:
      "name=host:port,... : for a founding member every voter (self included); for a joining learner " +
      "the current voters plus itself. Once a configuration is chosen, the log wins. IPv6: name=[::1]:7070",
  },
  {
    flag: "group",
    env: "PAXOS_GROUP",
    arg: "NAME",
    fallback: `member minus trailing -<ordinal> (kv-0 -> kv), else ${DEFAULT_GROUP}`,
    help: "the group's name, used in logs and metric labels",
  },
  {
    flag: "data-dir",
    env: "PAXOS_DATA_DIR",
    arg: "DIR",
    defaultValue: "/data",
    help: "log, state machine and checkpoints",
  },
  {
    flag: "peer-port",
    env: "PAXOS_PEER_PORT",
    arg: "PORT",
    defaultValue: "7070",
    help: "WebSocket port for peers",
  },
  {
    flag: "http-port",
    env: "PAXOS_HTTP_PORT",
    arg: "PORT",
    defaultValue: "8080",
    help: "client and admin API, probes, metrics",
  },
  {
    flag: "host",
    env: "PAXOS_HOST",
    arg: "ADDR",
    defaultValue: "0.0.0.0",
    help: "address the peer and HTTP ports listen on",
  },
  {
    flag: "token-file",
    env: "PAXOS_TOKEN_FILE",
    arg: "FILE",
    fallback: "none",
    help: "shared secret: peers and admin calls must present it",
  },
  {
    flag: "hold-count",
    env: "PAXOS_HOLD_COUNT",
    arg: "N",
    defaultValue: "100000",
    help: "log entries kept below the checkpoint instance; any integer >= 0",
  },
  {
    flag: "checkpoint-every",
    env: "PAXOS_CHECKPOINT_EVERY",
    arg: "N",
    defaultValue: "100000",
    help: "make a checkpoint once N instances were executed since the last one; integer >= 1",
  },
  {
    flag: "checkpoint-min-interval",
    env: "PAXOS_CHECKPOINT_MIN_INTERVAL",
    arg: "SECONDS",
    defaultValue: "60",
    help: "at most one checkpoint per this many seconds; integer >= 0",
  },
  {
    flag: "max-log-size",
    env: "PAXOS_MAX_LOG_SIZE",
    arg: "BYTES",
    fallback: "none",
    help: "safety valve: past this PaxosLog size the cleaner runs even while paused (it still keeps the log above the checkpoint bound)",
  },
  {
    flag: "termination-log",
    env: "PAXOS_TERMINATION_LOG",
    arg: "FILE",
    fallback: `${DEFAULT_TERMINATION_LOG} if writable`,
    help: "gets a one-line exit reason",
  },
  {
    flag: "log-level",
    env: "PAXOS_LOG_LEVEL",
    arg: "LEVEL",
    defaultValue: "info",
    help: LOG_LEVELS.join(", "),
  },
] as const satisfies readonly OptionSpec[];

type Flag = (typeof OPTIONS)[number]["flag"];

const BY_FLAG = new Map<string, OptionSpec>(OPTIONS.map((o) => [o.flag, o]));

export function helpText(): string {
  const width = Math.max(...OPTIONS.map((o) => o.flag.length + o.arg.length)) + 7;
  const envWidth = Math.max(...OPTIONS.map((o) => o.env.length)) + 2;
  const lines = [
    "Usage: paxos-node [flags]",
    "",
    "Runs one member of a Paxos-replicated key-value group. Flags override environment variables,",
    "which override defaults. Both --flag value and --flag=value work. Empty environment variables",
    "count as unset.",
    "",
    `${"  flag".padEnd(width)}${"env".padEnd(envWidth)}default`,
  ];
  for (const o of BY_FLAG.values()) {
    const fallback = o.defaultValue ?? o.fallback;
    lines.push(`${`  --${o.flag} ${o.arg}`.padEnd(width)}${o.env.padEnd(envWidth)}${fallback}`);
    lines.push(...wrap(o.help, 92).map((l) => `        ${l}`));
  }
  lines.push(
    "  --help, -h",
    "        print this text and exit",
    "",
    "Exit codes: 0 clean shutdown on SIGTERM/SIGINT; 75 checkpoint loaded from a peer, restart me;",
    "1 fatal error (the reason is in the termination log).",
  );
  return `${lines.join("\n")}\n`;
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  lines.push(line);
  return lines;
}

interface Setting {
  readonly value: string;
  /** How the user spelled it, for error messages: `--peers` or `PAXOS_PEERS`. */
  readonly source: string;
}

/**
 * Parses `argv` (without the node and script paths, i.e. `process.argv.slice(2)`) and `env`.
 * Returns `{ help }` when `--help` or `-h` is present; throws ConfigError on any invalid input.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): Config | { help: string } {
  if (argv.includes("--help") || argv.includes("-h")) return { help: helpText() };

  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--") || arg === "--") {
      throw new ConfigError(`unexpected argument "${arg}": every setting is a --flag; see --help`);
    }
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    if (name === "help") throw new ConfigError("--help takes no value");
    if (!BY_FLAG.has(name)) throw new ConfigError(`unknown flag --${name}; see --help`);
    if (flags.has(name)) throw new ConfigError(`--${name} is given more than once`);
    let value: string;
    if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) throw new ConfigError(`--${name} needs a value`);
      value = next;
      i++;
    }
    flags.set(name, value);
  }

  const setting = (flag: Flag): Setting | undefined => {
    const fromFlag = flags.get(flag);
    if (fromFlag !== undefined) return { value: fromFlag, source: `--${flag}` };
    const spec = BY_FLAG.get(flag)!;
    const fromEnv = env[spec.env];
    // Templated manifests often set an unused variable to "": treat that as not set.
    if (fromEnv !== undefined && fromEnv !== "") return { value: fromEnv, source: spec.env };
    return undefined;
  };
  const required = (flag: Flag): Setting => {
    const s = setting(flag);
    if (s === undefined) {
      const spec = BY_FLAG.get(flag)!;
      throw new ConfigError(`--${flag} (or ${spec.env}) is required: ${spec.help}`);
    }
    return s;
  };
  const withDefault = (flag: Flag): Setting =>
    setting(flag) ?? { value: BY_FLAG.get(flag)!.defaultValue!, source: `default of --${flag}` };

  const memberSetting = required("member");
  const member = parseName(memberSetting, "member name");
  const groupSetting = setting("group");
  const group = groupSetting === undefined ? defaultGroup(member) : parseName(groupSetting, "group name");
  const peers = parsePeers(required("peers"), member, memberSetting.source);

  const tokenFile = setting("token-file");
  const maxLogSize = setting("max-log-size");
  const checkpointEvery = parseCount(withDefault("checkpoint-every"));
  if (checkpointEvery < 1) throw new ConfigError("--checkpoint-every must be at least 1");
  const terminationLog = setting("termination-log");
  return {
    member,
    group,
    peers,
    dataDir: parsePath(withDefault("data-dir")),
    peerPort: parsePort(withDefault("peer-port")),
    httpPort: parsePort(withDefault("http-port")),
    host: parseListenHost(withDefault("host")),
    tokenFile: tokenFile === undefined ? undefined : parsePath(tokenFile),
    holdCount: parseCount(withDefault("hold-count")),
    checkpointEvery,
    checkpointMinIntervalMs: parseCount(withDefault("checkpoint-min-interval")) * 1000,
    maxLogSize: maxLogSize === undefined ? undefined : parseCount(maxLogSize),
    terminationLog: terminationLog === undefined ? undefined : parsePath(terminationLog),
    logLevel: parseLogLevel(withDefault("log-level")),
  };
}

/** `kv-0` -> `kv`: StatefulSet pods are named `<set>-<ordinal>`. */
function defaultGroup(member: string): string {
  const m = /^(.+)-\d+$/.exec(member);
  return m === null ? DEFAULT_GROUP : m[1]!;
}

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function parseName(s: Setting, what: string): string {
  if (!DNS_LABEL.test(s.value)) {
    throw new ConfigError(
      `${s.source}: "${s.value}" is not a valid ${what}: use 1 to 63 lowercase letters, digits and '-', ` +
        "starting and ending with a letter or digit",
    );
  }
  return s.value;
}

function parsePeers(s: Setting, member: string, memberSource: string): PeerAddress[] {
  const peers: PeerAddress[] = [];
  const names = new Set<string>();
  const addresses = new Set<string>();
  for (const rawEntry of s.value.split(",")) {
    const entry = rawEntry.trim();
    const fail = (why: string): never => {
      throw new ConfigError(`${s.source}: entry "${entry}" ${why}; expected name=host:port,...`);
    };
    if (entry === "") fail("is empty");
    const eq = entry.indexOf("=");
    if (eq < 0) fail("has no '='");
    const name = entry.slice(0, eq);
    if (!DNS_LABEL.test(name)) {
      fail(
        `has an invalid member name "${name}": use 1 to 63 lowercase letters, digits and '-', ` +
          "starting and ending with a letter or digit",
      );
    }
    const { host, port } = splitHostPort(entry.slice(eq + 1), fail);
    const address = isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
    if (names.has(name)) fail(`repeats the member name "${name}"`);
    const addressKey = address.toLowerCase();
    if (addresses.has(addressKey)) fail(`repeats the address ${address}`);
    names.add(name);
    addresses.add(addressKey);
    peers.push({ name, host, port, address });
  }
  if (!names.has(member)) {
    throw new ConfigError(
      `${s.source} must include this member "${member}" (from ${memberSource}); it lists ${[...names].join(", ")}`,
    );
  }
  return peers;
}

function splitHostPort(text: string, fail: (why: string) => never): { host: string; port: number } {
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":")
      fail("has an IPv6 address without a closing ']:' before the port");
    host = text.slice(1, close);
    if (isIP(host) !== 6) fail(`has "${host}" in brackets, which is not an IPv6 address`);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) fail("has no port");
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) fail("has an IPv6 address without brackets; write it as [addr]:port");
    if (!isHostName(host)) fail(`has an invalid host "${host}"`);
  }
  const port = portNumber(portText);
  if (port === undefined) fail(`has an invalid port "${portText}": use an integer in 1..65535`);
  return { host, port };
}

/** A DNS name (RFC 1123) or an IPv4 address. */
function isHostName(host: string): boolean {
  if (isIP(host) === 4) return true;
  if (host.length === 0 || host.length > 253) return false;
  const labels = host.split(".");
  // An all-numeric last label would make "256.1.1.1" pass as a name.
  if (/^\d+$/.test(labels[labels.length - 1]!)) return false;
  return labels.every((l) => /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(l));
}

function portNumber(text: string): number | undefined {
  if (!/^\d{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
}

function parsePort(s: Setting): number {
  const port = portNumber(s.value);
  if (port === undefined)
    throw new ConfigError(`${s.source}: "${s.value}" is not a port: use an integer in 1..65535`);
  return port;
}

function parseCount(s: Setting): number {
  const n = /^\d+$/.test(s.value) ? Number(s.value) : Number.NaN;
  if (!Number.isSafeInteger(n)) {
    throw new ConfigError(`${s.source}: "${s.value}" is not an integer >= 0`);
  }
  return n;
}

function parseListenHost(s: Setting): string {
  if (isIP(s.value) !== 0 || isHostName(s.value)) return s.value;
  throw new ConfigError(`${s.source}: "${s.value}" is not an IP address or host name to listen on`);
}

function parsePath(s: Setting): string {
  if (s.value.trim() === "") throw new ConfigError(`${s.source}: the path is empty`);
  return s.value;
}

function parseLogLevel(s: Setting): LogLevel {
  const level = LOG_LEVELS.find((l) => l === s.value);
  if (level === undefined) {
    throw new ConfigError(
      `${s.source}: "${s.value}" is not a log level: use one of ${LOG_LEVELS.join(", ")}`,
    );
  }
  return level;
}

/**
 * Reads the shared secret: surrounding whitespace (a trailing newline) is dropped; an empty file
 * or one that is not a single visible-ASCII word is refused, since it could not travel as a
 * Bearer token.
 */
export function readToken(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new ConfigError(`cannot read the token file (--token-file / PAXOS_TOKEN_FILE) "${path}": ${why}`);
  }
  const token = text.trim();
  if (token === "") {
    throw new ConfigError(`the token file (--token-file / PAXOS_TOKEN_FILE) "${path}" is empty`);
  }
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new ConfigError(
      `the token file (--token-file / PAXOS_TOKEN_FILE) "${path}" must hold one word of visible ASCII ` +
        "characters (no inner spaces or control characters)",
    );
  }
  return token;
}

/**
 * The termination log to write the exit reason to: the configured path, else `defaultPath` when
 * it exists and is writable (Kubernetes mounts it), else none. Never creates the default file.
 */
export function resolveTerminationLog(
  configured: string | undefined,
  defaultPath: string = DEFAULT_TERMINATION_LOG,
): string | undefined {
  if (configured !== undefined) return configured;
  try {
    accessSync(defaultPath, constants.W_OK);
    return defaultPath;
  } catch {
    return undefined;
  }
}
