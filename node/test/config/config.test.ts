import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  type Config,
  ConfigError,
  DEFAULT_TERMINATION_LOG,
  helpText,
  parseConfig,
  readToken,
  resolveTerminationLog,
} from "../../src/config.js";

const PEERS = "kv-0=kv-0.kv-peers:7070,kv-1=kv-1.kv-peers:7070,kv-2=kv-2.kv-peers:7070";
const BASE = ["--member", "kv-0", "--peers", PEERS];

function parse(argv: readonly string[], env: NodeJS.ProcessEnv = {}): Config {
  const result = parseConfig(argv, env);
  assert.ok(!("help" in result), "expected a configuration, got help");
  return result;
}

function parseError(argv: readonly string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    parseConfig(argv, env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return err.message;
  }
  assert.fail(`expected a ConfigError for ${JSON.stringify(argv)} ${JSON.stringify(env)}`);
}

describe("parseConfig: defaults", () => {
  test("only the required settings given", () => {
    const c = parse(BASE);
    assert.deepEqual(c, {
      member: "kv-0",
      group: "kv",
      peers: [
        { name: "kv-0", host: "kv-0.kv-peers", port: 7070, address: "kv-0.kv-peers:7070" },
        { name: "kv-1", host: "kv-1.kv-peers", port: 7070, address: "kv-1.kv-peers:7070" },
        { name: "kv-2", host: "kv-2.kv-peers", port: 7070, address: "kv-2.kv-peers:7070" },
      ],
      dataDir: "/data",
      peerPort: 7070,
      httpPort: 8080,
      host: "0.0.0.0",
      tokenFile: undefined,
      holdCount: 100000,
      checkpointEvery: 100000,
      checkpointMinIntervalMs: 60000,
      maxLogSize: undefined,
      terminationLog: undefined,
      logLevel: "info",
    });
  });

  const groups: [member: string, peers: string, group: string][] = [
    ["kv-0", "kv-0=a:1", "kv"],
    ["my-set-12", "my-set-12=a:1", "my-set"],
    ["n1", "n1=127.0.0.1:7071", "paxos"],
    ["kv", "kv=a:1", "paxos"],
    ["0-1", "0-1=a:1", "0"],
  ];
  for (const [member, peers, group] of groups) {
    test(`group defaults to ${group} for member ${member}`, () => {
      assert.equal(parse(["--member", member, "--peers", peers]).group, group);
    });
  }
});

describe("parseConfig: precedence", () => {
  const env: NodeJS.ProcessEnv = {
    PAXOS_MEMBER: "kv-1",
    PAXOS_PEERS: PEERS,
    PAXOS_GROUP: "env-group",
    PAXOS_DATA_DIR: "/env/data",
    PAXOS_PEER_PORT: "7001",
    PAXOS_HTTP_PORT: "8001",
    PAXOS_HOST: "127.0.0.1",
    PAXOS_TOKEN_FILE: "/env/token",
    PAXOS_HOLD_COUNT: "5",
    PAXOS_TERMINATION_LOG: "/env/term",
    PAXOS_LOG_LEVEL: "debug",
  };

  test("environment overrides defaults", () => {
    const c = parse([], env);
    assert.equal(c.member, "kv-1");
    assert.equal(c.group, "env-group");
    assert.equal(c.dataDir, "/env/data");
    assert.equal(c.peerPort, 7001);
    assert.equal(c.httpPort, 8001);
    assert.equal(c.host, "127.0.0.1");
    assert.equal(c.tokenFile, "/env/token");
    assert.equal(c.holdCount, 5);
    assert.equal(c.terminationLog, "/env/term");
    assert.equal(c.logLevel, "debug");
  });

  test("flags override the environment, in both spellings", () => {
    const c = parse(
      [
        "--member=kv-2",
        "--peers",
        PEERS,
        "--group=flag-group",
        "--data-dir",
        "/flag/data",
        "--peer-port=7002",
        "--http-port",
        "8002",
        "--host=::1",
        "--token-file",
        "/flag/token",
        "--hold-count=0",
        "--checkpoint-every=7",
        "--checkpoint-min-interval=0",
        "--max-log-size=1048576",
        "--termination-log",
        "/flag/term",
        "--log-level=warn",
      ],
      env,
    );
    assert.equal(c.member, "kv-2");
    assert.equal(c.group, "flag-group");
    assert.equal(c.dataDir, "/flag/data");
    assert.equal(c.peerPort, 7002);
    assert.equal(c.httpPort, 8002);
    assert.equal(c.host, "::1");
    assert.equal(c.tokenFile, "/flag/token");
    assert.equal(c.holdCount, 0);
    assert.equal(c.checkpointEvery, 7);
    assert.equal(c.checkpointMinIntervalMs, 0);
    assert.equal(c.maxLogSize, 1048576);
    assert.equal(c.terminationLog, "/flag/term");
    assert.equal(c.logLevel, "warn");
  });

  test("an empty environment variable counts as unset", () => {
    const c = parse(BASE, { PAXOS_TOKEN_FILE: "", PAXOS_HOLD_COUNT: "", PAXOS_GROUP: "" });
    assert.equal(c.tokenFile, undefined);
    assert.equal(c.holdCount, 100000);
    assert.equal(c.group, "kv");
  });

  test("a flag value may contain '='", () => {
    assert.equal(parse([...BASE, "--data-dir=/a=b"]).dataDir, "/a=b");
  });

  test("the member's group default follows the member given by flag, not env", () => {
    assert.equal(parse(["--member", "db-3", "--peers", "db-3=h:1"], { PAXOS_MEMBER: "kv-0" }).group, "db");
  });
});

describe("parseConfig: peers", () => {
  test("IPv4, IPv6 in brackets and DNS names", () => {
    const c = parse([
      "--member",
      "a",
      "--peers",
      "a=127.0.0.1:7071, b=[::1]:7072 ,c=Node-C.example.com:65535",
    ]);
    assert.deepEqual(c.peers, [
      { name: "a", host: "127.0.0.1", port: 7071, address: "127.0.0.1:7071" },
      { name: "b", host: "::1", port: 7072, address: "[::1]:7072" },
      { name: "c", host: "Node-C.example.com", port: 65535, address: "Node-C.example.com:65535" },
    ]);
  });

  test("a single member group", () => {
    assert.equal(parse(["--member", "solo", "--peers", "solo=localhost:7070"]).peers.length, 1);
  });
});

describe("parseConfig: help", () => {
  for (const argv of [["--help"], ["-h"], [...BASE, "--help"], ["--bogus", "--help"]]) {
    test(`help for ${argv.join(" ")}`, () => {
      const result = parseConfig(argv, {});
      assert.ok("help" in result);
      assert.equal(result.help, helpText());
    });
  }

  test("help lists every flag with its environment variable and default", () => {
    const help = helpText();
    const rows: [flag: string, env: string, fallback: string][] = [
      ["--member", "PAXOS_MEMBER", "required"],
      ["--peers", "PAXOS_PEERS", "required"],
      ["--group", "PAXOS_GROUP", "minus trailing -<ordinal>"],
      ["--data-dir", "PAXOS_DATA_DIR", "/data"],
      ["--peer-port", "PAXOS_PEER_PORT", "7070"],
      ["--http-port", "PAXOS_HTTP_PORT", "8080"],
      ["--host", "PAXOS_HOST", "0.0.0.0"],
      ["--token-file", "PAXOS_TOKEN_FILE", "none"],
      ["--hold-count", "PAXOS_HOLD_COUNT", "100000"],
      ["--termination-log", "PAXOS_TERMINATION_LOG", "/dev/termination-log if writable"],
      ["--log-level", "PAXOS_LOG_LEVEL", "info"],
    ];
    const lines = help.split("\n");
    for (const [flag, env, fallback] of rows) {
      const line = lines.find((l) => l.startsWith(`  ${flag} `));
      assert.ok(line !== undefined, `help has no line for ${flag}`);
      assert.ok(line.includes(env), `${flag} line lacks ${env}: ${line}`);
      assert.ok(line.includes(fallback), `${flag} line lacks its default: ${line}`);
    }
    assert.match(help, /--help/);
  });
});

describe("parseConfig: invalid input", () => {
  const cases: [name: string, argv: string[], env: NodeJS.ProcessEnv, message: RegExp][] = [
    ["member missing", ["--peers", PEERS], {}, /--member \(or PAXOS_MEMBER\) is required/],
    ["peers missing", ["--member", "kv-0"], {}, /--peers \(or PAXOS_PEERS\) is required/],
    ["member uppercase", ["--member", "Kv-0", "--peers", "Kv-0=a:1"], {}, /--member: "Kv-0" is not a valid/],
    ["member from env invalid", [], { PAXOS_MEMBER: "kv_0", PAXOS_PEERS: PEERS }, /PAXOS_MEMBER: "kv_0"/],
    ["member starts with -", ["--member=-kv", "--peers", PEERS], {}, /--member: "-kv"/],
    ["member ends with -", ["--member", "kv-", "--peers", PEERS], {}, /--member: "kv-"/],
    ["member too long", ["--member", "a".repeat(64), "--peers", PEERS], {}, /--member: "a{64}"/],
    ["member empty", ["--member=", "--peers", PEERS], {}, /--member: "" is not a valid member name/],
    ["group invalid", [...BASE, "--group", "My.Group"], {}, /--group: "My.Group" is not a valid group name/],
    ["group env invalid", BASE, { PAXOS_GROUP: "a b" }, /PAXOS_GROUP: "a b"/],
    [
      "peers lack self",
      ["--member", "kv-9", "--peers", PEERS],
      {},
      /--peers must include this member "kv-9"/,
    ],
    ["peers empty entry", ["--member", "a", "--peers", "a=h:1,,b=h:2"], {}, /--peers: entry "" is empty/],
    ["peers trailing comma", ["--member", "a", "--peers", "a=h:1,"], {}, /--peers: entry "" is empty/],
    ["peers no =", ["--member", "a", "--peers", "a=h:1,h:2"], {}, /entry "h:2" has no '='/],
    ["peers bad name", ["--member", "a", "--peers", "a=h:1,B_2=h:2"], {}, /invalid member name "B_2"/],
    ["peers empty name", ["--member", "a", "--peers", "a=h:1,=h:2"], {}, /invalid member name ""/],
    ["peers no port", ["--member", "a", "--peers", "a=host"], {}, /entry "a=host" has no port/],
    ["peers port 0", ["--member", "a", "--peers", "a=h:0"], {}, /invalid port "0"/],
    ["peers port 65536", ["--member", "a", "--peers", "a=h:65536"], {}, /invalid port "65536"/],
    ["peers port text", ["--member", "a", "--peers", "a=h:http"], {}, /invalid port "http"/],
    ["peers port empty", ["--member", "a", "--peers", "a=h:"], {}, /invalid port ""/],
    ["peers port sign", ["--member", "a", "--peers", "a=h:+80"], {}, /invalid port "\+80"/],
    ["peers empty host", ["--member", "a", "--peers", "a=:7070"], {}, /invalid host ""/],
    ["peers bad host", ["--member", "a", "--peers", "a=bad_host:1"], {}, /invalid host "bad_host"/],
    ["peers bad IPv4", ["--member", "a", "--peers", "a=256.1.1.1:1"], {}, /invalid host "256.1.1.1"/],
    ["peers host label -", ["--member", "a", "--peers", "a=-x.y:1"], {}, /invalid host "-x.y"/],
    ["peers bare IPv6", ["--member", "a", "--peers", "a=::1:7070"], {}, /IPv6 address without brackets/],
    ["peers bad bracket", ["--member", "a", "--peers", "a=[::1]7070"], {}, /without a closing '\]:'/],
    ["peers bracket not v6", ["--member", "a", "--peers", "a=[host]:1"], {}, /"host" in brackets/],
    [
      "peers duplicate name",
      ["--member", "a", "--peers", "a=h:1,b=h:2,a=h:3"],
      {},
      /repeats the member name "a"/,
    ],
    ["peers duplicate address", ["--member", "a", "--peers", "a=H:1,b=h:1"], {}, /repeats the address h:1/],
    ["peers env named", ["--member", "a"], { PAXOS_PEERS: "a=h" }, /^PAXOS_PEERS: entry "a=h"/],
    ["peer-port 0", [...BASE, "--peer-port", "0"], {}, /--peer-port: "0" is not a port/],
    ["peer-port too big", [...BASE, "--peer-port=70000"], {}, /--peer-port: "70000" is not a port/],
    ["http-port negative", [...BASE, "--http-port=-1"], {}, /--http-port: "-1" is not a port/],
    ["http-port env", BASE, { PAXOS_HTTP_PORT: "80a" }, /PAXOS_HTTP_PORT: "80a" is not a port/],
    ["hold-count negative", [...BASE, "--hold-count", "-1"], {}, /--hold-count: "-1" is not an integer >= 0/],
    ["hold-count fraction", [...BASE, "--hold-count=1.5"], {}, /--hold-count: "1.5" is not an integer/],
    ["hold-count exponent", [...BASE, "--hold-count=1e3"], {}, /--hold-count: "1e3"/],
    ["hold-count huge", [...BASE, "--hold-count=99999999999999999999"], {}, /--hold-count: "9+"/],
    ["hold-count env", BASE, { PAXOS_HOLD_COUNT: "lots" }, /PAXOS_HOLD_COUNT: "lots"/],
    ["checkpoint-every zero", [...BASE, "--checkpoint-every=0"], {}, /--checkpoint-every must be at least 1/],
    [
      "checkpoint-min-interval negative",
      [...BASE, "--checkpoint-min-interval=-1"],
      {},
      /"-1" is not an integer/,
    ],
    ["max-log-size env", BASE, { PAXOS_MAX_LOG_SIZE: "1G" }, /PAXOS_MAX_LOG_SIZE: "1G"/],
    ["host invalid", [...BASE, "--host", "not a host"], {}, /--host: "not a host" is not an IP address/],
    ["log-level invalid", [...BASE, "--log-level=verbose"], {}, /--log-level: "verbose" is not a log level/],
    ["log-level env", BASE, { PAXOS_LOG_LEVEL: "INFO" }, /PAXOS_LOG_LEVEL: "INFO"/],
    ["data-dir empty", [...BASE, "--data-dir="], {}, /--data-dir: the path is empty/],
    ["token-file empty", [...BASE, "--token-file="], {}, /--token-file: the path is empty/],
    ["termination-log blank", [...BASE, "--termination-log= "], {}, /--termination-log: the path is empty/],
    ["unknown flag", [...BASE, "--verbose"], {}, /unknown flag --verbose/],
    ["unknown flag with value", [...BASE, "--port=1"], {}, /unknown flag --port/],
    ["positional argument", [...BASE, "extra"], {}, /unexpected argument "extra"/],
    ["single dash flag", ["-m", "kv-0"], {}, /unexpected argument "-m"/],
    ["bare --", [...BASE, "--"], {}, /unexpected argument "--"/],
    ["value missing at end", [...BASE, "--data-dir"], {}, /--data-dir needs a value/],
    ["value is a flag", ["--member", "--peers", PEERS], {}, /--member needs a value/],
    ["flag repeated", [...BASE, "--member", "kv-1"], {}, /--member is given more than once/],
    ["help with value", ["--help=yes"], {}, /--help takes no value/],
  ];
  for (const [name, argv, env, message] of cases) {
    test(name, () => {
      assert.match(parseError(argv, env), message);
    });
  }
});

describe("readToken and resolveTerminationLog", () => {
  const dir = mkdtempSync(join(tmpdir(), "paxos-config-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("the token is trimmed", () => {
    const file = join(dir, "token");
    writeFileSync(file, "  s3cr3t-token\n");
    assert.equal(readToken(file), "s3cr3t-token");
  });

  test("an empty or blank token file is refused", () => {
    const file = join(dir, "blank");
    writeFileSync(file, " \n\t\n");
    assert.throws(
      () => readToken(file),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /token file .* is empty/);
        assert.ok(err.message.includes(file));
        return true;
      },
    );
  });

  test("a token with inner whitespace is refused", () => {
    const file = join(dir, "spaced");
    writeFileSync(file, "two words\n");
    assert.throws(() => readToken(file), /must hold one word of visible ASCII/);
  });

  test("a missing token file is a ConfigError naming the file", () => {
    const file = join(dir, "missing");
    assert.throws(
      () => readToken(file),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /cannot read the token file .*missing.*ENOENT/);
        return true;
      },
    );
  });

  test("termination log: a configured path wins", () => {
    assert.equal(resolveTerminationLog("/somewhere/log", join(dir, "nope")), "/somewhere/log");
  });

  test("termination log: the default only when it exists and is writable", () => {
    const file = join(dir, "termination-log");
    assert.equal(resolveTerminationLog(undefined, file), undefined);
    writeFileSync(file, "");
    assert.equal(resolveTerminationLog(undefined, file), file);
    chmodSync(file, 0o444);
    // root may write anyway; then the default is (correctly) used.
    const writableAnyway = process.getuid?.() === 0;
    assert.equal(resolveTerminationLog(undefined, file), writableAnyway ? file : undefined);
  });

  test("the default termination log is the Kubernetes one", () => {
    assert.equal(DEFAULT_TERMINATION_LOG, "/dev/termination-log");
  });
});
