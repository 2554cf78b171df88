/**
 * Starts one grain in its sandbox: bubblewrap with every namespace
 * unshared (so no network but its own loopback), the package read-only as
 * `/`, the grain's volume at `/var`, a small tmpfs at `/tmp`, a minimal
 * `/dev`, the seccomp filter of seccomp.ts, a host uid of its own, and a
 * memory cgroup with a hard limit.
 *
 * The launch chain is: a root bash that connects fd 3 to the worker (see
 * api_socket.ts) and moves itself into the grain's cgroup, then `setpriv`
 * dropping to the grain's host uid with no capabilities, then an
 * unprivileged bwrap, which maps that uid to 1000 inside (as Sandstorm
 * apps expect) and runs the app. Every process of the grain is therefore
 * in the cgroup from its first instruction.
 *
 * @module
 */
import type { CommandInfo } from "../spk/mod.ts";
import type { ApiSocketHub } from "./api_socket.ts";
import type { GrainCgroup } from "./cgroup.ts";

/** The uid and gid a grain sees for itself, as on Sandstorm. */
export const SANDBOX_UID = 1000;

const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin";

/** Directories the sandbox provides itself; a package's own are hidden. */
const PROVIDED = new Set(["dev", "proc", "tmp", "var"]);

/** How to run one grain. */
export interface SandboxSpec {
  /** The unpacked package; it becomes `/`, read-only. */
  packageDir: string;
  /** The grain's volume (a directory, or the mounted ext4); `/var`. */
  volumeDir: string;
  /** The host uid (and gid) that owns the grain's processes and files. */
  hostUid: number;
  command: CommandInfo;
  /** Size of the tmpfs at /tmp; it counts against the memory limit. */
  tmpBytes: number;
  cgroup: GrainCgroup;
  /** A file holding the seccomp filter (seccomp.ts). */
  seccompFile: string;
  /** Set up everything but hold the app back until `release()` (a warm
   * sandbox: bubblewrap waits on its stdin, `--block-fd 0`). */
  holdUntilReleased?: boolean;
}

/** How a grain's process ended. */
export interface GrainExit {
  code: number;
  signal: Deno.Signal | null;
  /** Whether the kernel killed a process of the grain for memory. */
  outOfMemory: boolean;
}

/** A running grain's processes. */
export interface SandboxProcess {
  /** Pid of the bwrap monitor on the host. */
  pid: number;
  exited: Promise<GrainExit>;
  /** The last lines the grain wrote to stdout and stderr. */
  output(): string[];
  /** Kills every process of the grain and waits for the exit. */
  kill(): Promise<GrainExit>;
  /** Lets a held sandbox run its app (see SandboxSpec.holdUntilReleased). */
  release(): Promise<void>;
}

// Runs as root: move the inherited API socket to fd 3, join the cgroups,
// then drop to the grain's uid and start bubblewrap with the filter on
// fd 10.
const LAUNCHER = `
if [ "$BR_API_FD" != 3 ]; then
  exec 3<&"$BR_API_FD" || exit 120
  eval "exec $BR_API_FD<&-"
fi
for procs in $BR_CGROUP_PROCS; do
  echo $$ >"$procs" || exit 122
done
exec setpriv --reuid="$BR_UID" --regid="$BR_UID" --clear-groups \\
  --inh-caps=-all --bounding-set=-all bwrap "$@" 10<"$BR_SECCOMP"
`;

/** The bwrap arguments for a grain, package entries bound one by one. */
export async function bwrapArguments(spec: SandboxSpec): Promise<string[]> {
  const args = [
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--uid",
    String(SANDBOX_UID),
    "--gid",
    String(SANDBOX_UID),
    "--hostname",
    "sandbox",
  ];
  if (spec.holdUntilReleased) args.push("--block-fd", "0");
  const entries = [];
  for await (const entry of Deno.readDir(spec.packageDir)) {
    entries.push(entry);
  }
  entries.sort((a, b) => a.name < b.name ? -1 : 1);
  for (const entry of entries) {
    if (PROVIDED.has(entry.name)) continue;
    const source = `${spec.packageDir}/${entry.name}`;
    if (entry.isSymlink) {
      args.push("--symlink", await Deno.readLink(source), `/${entry.name}`);
    } else {
      args.push("--ro-bind", source, `/${entry.name}`);
    }
  }
  args.push(
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--size",
    String(spec.tmpBytes),
    "--tmpfs",
    "/tmp",
    "--bind",
    spec.volumeDir,
    "/var",
    "--remount-ro",
    "/",
    "--chdir",
    "/",
    "--clearenv",
  );
  const environment = new Map([
    ["PATH", DEFAULT_PATH],
    ["HOME", "/var"],
    ["SANDSTORM", "1"],
  ]);
  for (const { key, value } of spec.command.environ) {
    environment.set(key, value);
  }
  for (const [key, value] of environment) args.push("--setenv", key, value);
  args.push("--seccomp", "10", "--", ...spec.command.argv);
  return args;
}

/**
 * Gives the volume to the grain's host uid. A restored grain may get a
 * different uid than last time, so ownership is changed throughout; `-P`
 * keeps chown from following symlinks the grain made.
 */
export async function prepareVolume(
  volumeDir: string,
  hostUid: number,
): Promise<void> {
  await Deno.mkdir(volumeDir, { recursive: true });
  const info = await Deno.lstat(volumeDir);
  if (!info.isDirectory) throw new Error(`${volumeDir} is not a directory`);
  if (info.uid !== hostUid || info.gid !== hostUid) {
    let empty = true;
    for await (const _ of Deno.readDir(volumeDir)) {
      empty = false;
      break;
    }
    if (empty) {
      // A fresh volume: the directory itself, checked above not to be a
      // symlink, is all there is to give.
      await Deno.chown(volumeDir, hostUid, hostUid);
      await Deno.chmod(volumeDir, 0o700);
      return;
    }
    const result = await new Deno.Command("chown", {
      args: ["-R", "-P", "-h", `${hostUid}:${hostUid}`, volumeDir],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!result.success) {
      throw new Error(
        `chown of ${volumeDir} failed: ${
          new TextDecoder().decode(result.stderr).trim()
        }`,
      );
    }
  }
  await Deno.chmod(volumeDir, 0o700);
}

/** Keeps the last lines of a stream. */
function collectLines(
  stream: ReadableStream<Uint8Array>,
  lines: string[],
  maxLines: number,
): Promise<void> {
  return (async () => {
    let partial = "";
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      partial += decoder.decode(chunk, { stream: true });
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) {
        lines.push(line.slice(0, 1000));
        if (lines.length > maxLines) lines.shift();
      }
    }
    if (partial !== "") lines.push(partial.slice(0, 1000));
  })().catch(() => {});
}

/**
 * Starts the grain with its fd 3 connected through `hub`. Resolves once
 * the processes exist; `connection` resolves with the worker's end of
 * fd 3 and `token` names it to `hub.forget`.
 */
export async function startSandbox(
  spec: SandboxSpec,
  hub: ApiSocketHub,
): Promise<{
  process: SandboxProcess;
  connection: Promise<Deno.UnixConn>;
  token: string;
}> {
  const args = await bwrapArguments(spec);
  const { child, connection, token } = hub.connectChild((fd) =>
    new Deno.Command("bash", {
      args: ["-c", LAUNCHER, "grain-launcher", ...args],
      clearEnv: true,
      env: {
        BR_API_FD: String(fd),
        BR_CGROUP_PROCS: spec.cgroup.procsFiles.join(" "),
        BR_UID: String(spec.hostUid),
        BR_SECCOMP: spec.seccompFile,
        PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
      },
      stdin: spec.holdUntilReleased ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn()
  );

  const lines: string[] = [];
  const reading = Promise.all([
    collectLines(child.stdout, lines, 200),
    collectLines(child.stderr, lines, 200),
  ]);
  const exited = (async (): Promise<GrainExit> => {
    const status = await child.status;
    await reading;
    return {
      code: status.code,
      signal: status.signal,
      outOfMemory: (await spec.cgroup.oomKills()) > 0,
    };
  })();

  const process: SandboxProcess = {
    pid: child.pid,
    exited,
    output: () => [...lines],
    async kill() {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await spec.cgroup.killAll();
      return await exited;
    },
    async release() {
      if (!spec.holdUntilReleased) return;
      const writer = child.stdin.getWriter();
      await writer.write(new Uint8Array([1]));
      await writer.close();
    },
  };
  return { process, connection, token };
}
