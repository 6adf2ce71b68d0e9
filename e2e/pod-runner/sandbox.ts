// The "container" of the local pod runner: a private mount and UTS namespace with its own root
// folder. The host's system folders are bind-mounted into it read-through; /dev, /run and /tmp
// are private; /etc/hosts is the runner's per-pod hosts file; volumes, the service-account folder
// and the termination-message file are bind-mounted where the pod spec says. Nothing is created
// on the host's own file system, so a mount path such as /data needs no folder on the host.
//
// There is no network namespace: every pod shares the host's network stack and gets its own
// address (10.244.N.x, a block the runner routes to lo), so a workload has to listen on its pod
// IP, not on 0.0.0.0.
import { lstatSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";

/** Quotes a string for sh. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Top-level folders the sandbox replaces with private ones, hiding the host's. */
const PRIVATE_TOPS = new Set(["run", "tmp"]);

/** Host top-level folders a workload may need: system files, and where node and this checkout live. */
function hostTopLevel(extraPaths: string[]): { dirs: string[]; links: [string, string][] } {
  const wanted = new Set([
    "usr",
    "bin",
    "sbin",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "etc",
    "opt",
    "var",
    "home",
    "root",
  ]);
  for (const p of extraPaths) {
    const top = path.resolve(p).split(path.sep)[1];
    if (top) wanted.add(top);
  }
  for (const private_ of ["dev", "proc", "sys", ...PRIVATE_TOPS]) wanted.delete(private_);
  const dirs: string[] = [];
  const links: [string, string][] = [];
  for (const name of readdirSync("/")) {
    if (!wanted.has(name)) continue;
    const st = lstatSync(`/${name}`);
    if (st.isSymbolicLink()) links.push([name, readlinkSync(`/${name}`)]);
    else if (st.isDirectory()) dirs.push(name);
  }
  return { dirs: dirs.sort(), links };
}

export interface SandboxMount {
  /** Host path (file or folder). */
  source: string;
  /** Path inside the container. */
  target: string;
  readOnly: boolean;
  isFile: boolean;
}

export interface SandboxSpec {
  /** Folder that becomes the container's root (created; holds only mount points). */
  root: string;
  hostname: string;
  hostsFile: string;
  /** Folder mounted at /tmp. */
  tmpDir: string;
  mounts: SandboxMount[];
  /** Host file that receives what the container writes to `terminationMessagePath`. */
  terminationFile: string;
  terminationMessagePath: string;
  workingDir: string;
  /** Host paths the container must see (node's binary, this checkout). */
  hostPaths: string[];
}

/**
 * Writes the two scripts that build the sandbox and returns the argv that runs `argv` in it:
 * `unshare` execs the outer script, which execs `chroot`, which execs the inner script, which execs
 * the program, so the pid the runner holds is the program's pid all along.
 */
export async function prepareSandbox(spec: SandboxSpec, dir: string, argv: string[]): Promise<string[]> {
  const { dirs, links } = hostTopLevel(spec.hostPaths);
  const R = shq(spec.root);
  const out: string[] = ["set -eu", `R=${R}`, `hostname ${shq(spec.hostname)}`];
  for (const d of dirs) out.push(`mkdir -p "$R/${d}"`, `mount --rbind ${shq(`/${d}`)} "$R/${d}"`);
  for (const [name, target] of links) out.push(`ln -sfn ${shq(target)} "$R/${name}"`);
  out.push(
    'mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/tmp" "$R/.pod"',
    'mount --rbind /proc "$R/proc"',
    'mount --rbind /sys "$R/sys"',
    'mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"',
    'for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done',
    'mkdir "$R/dev/pts" "$R/dev/shm"',
    'mount --rbind /dev/pts "$R/dev/pts"',
    'mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"',
    'ln -s /proc/self/fd "$R/dev/fd"',
    'ln -s /proc/self/fd/0 "$R/dev/stdin"',
    'ln -s /proc/self/fd/1 "$R/dev/stdout"',
    'ln -s /proc/self/fd/2 "$R/dev/stderr"',
    'ln -s pts/ptmx "$R/dev/ptmx"',
    'mount -t tmpfs -o mode=755 tmpfs "$R/run"',
    `mount --bind ${shq(spec.tmpDir)} "$R/tmp"`,
  );
  if (dirs.includes("etc")) out.push(`mount --bind ${shq(spec.hostsFile)} "$R/etc/hosts"`);

  // Sources are staged under /.pod first; the inner script, already inside the new root, binds
  // them to their targets, so symlinks in target paths (/var/run -> /run) resolve as the container
  // sees them.
  const inner: string[] = ["set -eu"];
  const hostBound = dirs.map((d) => `/${d}`).join(" ");
  inner.push(
    "# a missing mount point may be created only where it does not touch the host's own folders",
    "mountpoint_ok() {",
    '  top="/$(echo "$1" | cut -d/ -f2)"',
    `  for h in ${hostBound}; do`,
    '    if [ "$top" = "$h" ]; then',
    '      echo "local pod runner: mount path $1 does not exist on this machine and would have to be created in the host\'s $h" >&2',
    "      exit 126",
    "    fi",
    "  done",
    "}",
  );
  const stage = (i: number, source: string, isFile: boolean) => {
    const s = `"$R/.pod/${i}"`;
    out.push(isFile ? `touch ${s}` : `mkdir -p ${s}`, `mount --bind ${shq(source)} ${s}`);
  };
  const bindInside = (i: number, target: string, isFile: boolean, readOnly: boolean) => {
    inner.push(`t=$(realpath -m ${shq(target)})`);
    if (isFile) {
      inner.push(
        'if [ ! -e "$t" ]; then d=$(dirname "$t"); [ -d "$d" ] || { mountpoint_ok "$d"; mkdir -p "$d"; }; mountpoint_ok "$t"; touch "$t"; fi',
      );
    } else {
      inner.push('if [ ! -e "$t" ]; then mountpoint_ok "$t"; mkdir -p "$t"; fi');
    }
    inner.push(`mount --bind /.pod/${i} "$t"`);
    if (readOnly) inner.push('mount -o remount,bind,ro "$t"');
    inner.push(`umount /.pod/${i}`);
  };
  // /dev and /run are private tmpfs, so these mount points never reach the host.
  const mounts = [...spec.mounts].sort((a, b) => a.target.split("/").length - b.target.split("/").length);
  mounts.forEach((m, i) => {
    stage(i, m.source, m.isFile);
    bindInside(i, m.target, m.isFile, m.readOnly);
  });
  // A checkout (or node) under /tmp or /run — CI clones often live there — is hidden by those
  // private folders and by any volume the pod mounts over them (an emptyDir at /tmp): bind it
  // back at its own path after every volume.
  const hidden = spec.hostPaths
    .map((p) => path.resolve(p))
    .filter((abs) => PRIVATE_TOPS.has(abs.split(path.sep)[1] ?? ""));
  hidden.forEach((abs, k) => {
    const i = mounts.length + k;
    const isFile = !statSync(abs).isDirectory();
    stage(i, abs, isFile);
    bindInside(i, abs, isFile, false);
  });
  const term = mounts.length + hidden.length;
  stage(term, spec.terminationFile, true);
  bindInside(term, spec.terminationMessagePath, true, false);
  inner.push(`cd ${shq(spec.workingDir)}`, 'exec "$@"');

  await mkdir(spec.root, { recursive: true });
  await mkdir(path.join(spec.root, ".pod"), { recursive: true });
  const innerFile = path.join(spec.root, ".pod-init.sh");
  await writeFile(innerFile, `${inner.join("\n")}\n`);
  out.push('exec chroot "$R" /bin/sh /.pod-init.sh "$@"');
  const outerFile = path.join(dir, "sandbox.sh");
  await writeFile(outerFile, `${out.join("\n")}\n`);
  return ["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", outerFile, ...argv];
}
