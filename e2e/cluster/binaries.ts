// Where the control plane's binaries are, and building them when they are missing.
import { spawn } from "node:child_process";
import { access, constants } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The checkout this file belongs to (dist/e2e/cluster/*.js and e2e/cluster/*.ts both sit 2-3 levels down). */
export const REPO_ROOT = findRepoRoot();

function findRepoRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const parts = here.split(path.sep);
  const dist = parts.lastIndexOf("dist");
  // dist/e2e/cluster -> repo; e2e/cluster -> repo
  return dist >= 0 ? parts.slice(0, dist).join(path.sep) || "/" : path.resolve(here, "..", "..");
}

export const BUILD_SCRIPT = path.join(REPO_ROOT, "e2e", "cluster", "build-binaries.sh");
export const BINARY_NAMES = [
  "etcd",
  "kube-apiserver",
  "kube-controller-manager",
  "kube-scheduler",
  "kubectl",
  "helm",
];

function runScript(args: string[], capture: boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [BUILD_SCRIPT, ...args], {
      stdio: ["ignore", capture ? "pipe" : "inherit", "inherit"],
    });
    let out = "";
    child.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0
        ? resolve(out.trim())
        : reject(new Error(`${BUILD_SCRIPT} ${args.join(" ")} exited with ${code}`)),
    );
  });
}

/** The cache folder of this checkout's go.sum (or $K8S_BIN_DIR). */
export function binaryDir(): Promise<string> {
  return runScript(["--print-dir"], true);
}

async function allPresent(dir: string): Promise<boolean> {
  try {
    await Promise.all(BINARY_NAMES.map((b) => access(path.join(dir, b), constants.X_OK)));
    return true;
  } catch {
    return false;
  }
}

/**
 * The folder holding the binaries, building them first when they are missing (which takes many
 * minutes and prints its progress) unless `build` is false, in which case it fails with a hint.
 */
export async function ensureBinaries(build = true): Promise<string> {
  const dir = await binaryDir();
  if (await allPresent(dir)) return dir;
  if (!build) {
    throw new Error(
      `the control-plane binaries are not built in ${dir}; run ${path.relative(process.cwd(), BUILD_SCRIPT)}`,
    );
  }
  await runScript([], false);
  return dir;
}
