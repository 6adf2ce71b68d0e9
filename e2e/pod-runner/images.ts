// What an image means to the local pod runner: the entry point of a program in this checkout.
import path from "node:path";

export interface LocalImage {
  /** ENTRYPOINT: replaced by the container's `command` when it has one. */
  entrypoint: string[];
  /** CMD: replaced by the container's `args` when it has any. */
  cmd: string[];
  workingDir: string;
  /** ENV of the image: the base of the container's environment, under what the pod spec sets. */
  env: Record<string, string>;
}

/** The repository's last path element, without registry, tag or digest: `ghcr.io/x/paxos-node:0.1` -> `paxos-node`. */
export function imageName(image: string): string {
  const noDigest = image.split("@")[0] ?? image;
  const last = noDigest.split("/").pop() ?? noDigest;
  return last.split(":")[0] ?? last;
}

/**
 * What node/Dockerfile and operator/Dockerfile set with ENV. HOME matters most: the host's /root is
 * visible in the sandbox, and a client library that finds /root/.kube/config there would talk to
 * whatever cluster that file names instead of using the pod's service account.
 */
const DOCKERFILE_ENV = { NODE_ENV: "production", HOME: "/tmp" };

/** The images the runner knows; anything else fails the way an unpullable image does. */
export function resolveImage(image: string, repoRoot: string): LocalImage | undefined {
  const node = process.execPath;
  switch (imageName(image)) {
    case "paxos-node":
      return {
        entrypoint: [node, path.join(repoRoot, "bin", "paxos-node.js")],
        cmd: [],
        workingDir: repoRoot,
        env: { ...DOCKERFILE_ENV, PAXOS_DATA_DIR: "/data" },
      };
    case "paxos-operator":
      return {
        entrypoint: [node, path.join(repoRoot, "dist", "operator", "src", "main.js")],
        cmd: [],
        workingDir: repoRoot,
        env: DOCKERFILE_ENV,
      };
    case "e2e-testserver":
      return {
        entrypoint: [node, path.join(repoRoot, "dist", "e2e", "testserver", "main.js")],
        cmd: [],
        workingDir: repoRoot,
        env: {},
      };
    default:
      return undefined;
  }
}

export const KNOWN_IMAGES = ["paxos-node", "paxos-operator", "e2e-testserver"];
