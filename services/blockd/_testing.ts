/**
 * Helpers shared by the daemon's tests and benchmark: temporary
 * directories, an in-process daemon over a directory store, running
 * commands, and the blockd process.
 *
 * @module
 */
import { Logger } from "../runtime/log.ts";
import { roleCommand } from "../runtime/permissions.ts";
import { BLOCK_BYTES } from "./block_store.ts";
import { BlockDaemon, type BlockDaemonOptions } from "./daemon.ts";
import { DirectoryBlockStore } from "./directory_store.ts";
import { libraryPath } from "../../ffi/native.ts";

/** A temporary directory with socket, cache and store subdirectories. */
export interface Workspace {
  root: string;
  sockets: string;
  cache: string;
  store: string;
  remove(): Promise<void>;
}

export async function makeWorkspace(): Promise<Workspace> {
  const root = await Deno.makeTempDir({ prefix: "blockd-test-" });
  const workspace = {
    root,
    sockets: `${root}/sockets`,
    cache: `${root}/cache`,
    store: `${root}/store`,
    remove: async () => {
      await unmountUnder(root);
      await Deno.remove(root, { recursive: true });
    },
  };
  for (const dir of [workspace.sockets, workspace.cache, workspace.store]) {
    await Deno.mkdir(dir);
  }
  return workspace;
}

/** Lazily unmounts whatever a failed test left mounted under `root`,
 * deepest first, and detaches loop devices backed by files there. */
export async function unmountUnder(root: string): Promise<void> {
  const mounts = (await Deno.readTextFile("/proc/mounts")).split("\n")
    .map((line) => line.split(" ")[1])
    .filter((path) => path?.startsWith(`${root}/`))
    .sort((a, b) => b.length - a.length);
  for (const path of mounts) {
    await run("umount", ["-l", path]);
  }
  const loops = await run("losetup", ["-n", "-O", "NAME,BACK-FILE"]);
  for (const line of loops.stdout.split("\n")) {
    const [name, file] = line.trim().split(/\s+/);
    if (file?.startsWith(`${root}/`)) await run("losetup", ["-d", name]);
  }
}

/** A logger that drops debug lines and writes the rest to stderr. */
export function quietLogger(): Logger {
  return new Logger({ role: "blockd-test", level: "warn" });
}

/** Starts an in-process daemon over directory volumes of `sizeBytes`. */
export function startDaemon(
  workspace: Workspace,
  sizeBytes: number,
  overrides: Partial<BlockDaemonOptions> = {},
  cacheDirectory = workspace.cache,
): BlockDaemon {
  return new BlockDaemon({
    socketDirectory: workspace.sockets,
    cacheDirectory,
    holder: "test-worker",
    leaseWaitMs: 5_000,
    leaseRenewMs: 1_000,
    accessLogRecordMs: 60_000,
    accessLogMaxBlocks: 65_536,
    prefetchConcurrency: 4,
    log: quietLogger(),
    openStore: async (grain) => {
      const root = `${workspace.store}/${grain}`;
      if (!(await DirectoryBlockStore.exists(root))) {
        await DirectoryBlockStore.create(root, sizeBytes / BLOCK_BYTES);
      }
      return DirectoryBlockStore.open(root);
    },
    ...overrides,
  });
}

/** The NBD URI of a grain's export on a socket. */
export function nbdUri(grain: string, socketPath: string): string {
  return `nbd+unix:///${grain}?socket=${socketPath}`;
}

/** Output of a finished command. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end and returns its status and output. */
export async function run(
  program: string,
  args: string[],
  options: { stdin?: Uint8Array } = {},
): Promise<CommandResult> {
  const child = new Deno.Command(program, {
    args,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin) {
    const writer = child.stdin.getWriter();
    await writer.write(options.stdin);
    await writer.close();
  }
  const output = await child.output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs a program and throws with its output unless it exits with 0. */
export async function runOk(program: string, args: string[]): Promise<string> {
  const result = await run(program, args);
  if (result.code !== 0) {
    throw new Error(
      `${program} ${
        args.join(" ")
      } exited with ${result.code}: ${result.stderr}${result.stdout}`,
    );
  }
  return result.stdout;
}

/** The blockd role running as its own process. */
export interface DaemonProcess {
  child: Deno.ChildProcess;
  /** Sends SIGKILL and waits for the process to end. */
  kill(): Promise<void>;
  /** Sends SIGTERM and waits; returns the exit status. */
  stop(): Promise<number>;
}

const mainPath = new URL("./main.ts", import.meta.url).pathname;
const denoPath = Deno.execPath();

/**
 * Starts services/blockd/main.ts with scoped permissions and the given
 * configuration, and waits until every grain's socket exists.
 */
export async function spawnDaemon(
  workspace: Workspace,
  config: Record<string, unknown>,
  grains: string[],
  name = "blockd",
  /** More --allow-net entries (the storage nodes' hosts). */
  net: string[] = [],
): Promise<DaemonProcess> {
  const configFile = `${workspace.root}/${name}.json`;
  await Deno.writeTextFile(configFile, JSON.stringify(config));
  const projectRoot = new URL("../../", import.meta.url).pathname;
  const command = roleCommand({
    deno: denoPath,
    entry: mainPath,
    configFile,
    permissions: {
      read: [projectRoot, workspace.root],
      write: [workspace.root],
      net: [
        ...grains.map((g) => `unix:${workspace.sockets}/${g}.sock`),
        ...net,
      ],
      ffi: [libraryPath],
    },
  });
  for (const grain of grains) {
    await Deno.remove(`${workspace.sockets}/${grain}.sock`).catch(() => {});
  }
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const status = child.status;
  let exited = false;
  status.then(() => exited = true);
  const deadline = Date.now() + 30_000;
  for (const grain of grains) {
    for (;;) {
      const ready = await Deno.stat(`${workspace.sockets}/${grain}.sock`)
        .then(() => true, () => false);
      if (ready) break;
      if (exited || Date.now() > deadline) {
        if (!exited) child.kill("SIGKILL");
        throw new Error(`blockd did not start serving ${grain}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    child,
    kill: async () => {
      if (!exited) child.kill("SIGKILL");
      await status;
    },
    stop: async () => {
      if (!exited) child.kill("SIGTERM");
      return (await status).code;
    },
  };
}
