/**
 * The grains of one worker: packages cached by package ID, host uids
 * handed out from a configured range, one memory cgroup and one sandbox
 * per grain, and the supervisor on each grain's fd 3.
 *
 * @module
 */
import { dirname } from "node:path";
import type { Logger } from "../runtime/log.ts";
import {
  type ManifestInfo,
  readSpk,
  type SpkLimits,
  unpackSpk,
} from "../spk/mod.ts";
import { DEFAULT_LIMITS, isPackageId } from "../spk/mod.ts";
import { ApiSocketHub } from "./api_socket.ts";
import { CgroupTree, type GrainCgroup } from "./cgroup.ts";
import {
  type GrainExit,
  prepareVolume,
  type SandboxProcess,
  startSandbox,
} from "./sandbox.ts";
import { grainFilterBytes } from "./seccomp.ts";
import { removeKernelDirectory } from "./kernel_files.ts";
import { GrainSupervisor } from "./supervisor.ts";

/** Where and how a worker keeps its grains. */
export interface GrainManagerOptions {
  /** Holds packages/, grains/ and the seccomp filter. */
  stateDir: string;
  /** Host uids [uidFirst, uidFirst + uidCount) are for grains only. */
  uidFirst: number;
  uidCount: number;
  /** Name of the worker's memory cgroup. */
  cgroupName: string;
  defaultMemoryBytes: number;
  tmpBytes: number;
  /** How long a grain may take to connect its fd 3. */
  connectTimeoutMs?: number;
  spkLimits?: SpkLimits;
}

/** Where a grain is in its life. */
export type GrainState =
  | "running"
  | "stopped"
  | "out-of-memory"
  | "crashed";

/** A package on this worker. */
export interface InstalledPackage {
  packageId: string;
  appId: string;
  manifest: ManifestInfo;
  dir: string;
}

/** What the worker reports about one grain. */
export interface GrainStatus {
  grainId: string;
  packageId: string;
  state: GrainState;
  hostUid?: number;
  memoryLimitBytes: number;
  memoryBytes: number;
  memoryPeakBytes: number;
  startedAtMs: number;
  exit?: GrainExit;
}

/** A grain's running parts. */
interface Running {
  process: SandboxProcess;
  supervisor: GrainSupervisor;
  cgroup: GrainCgroup;
  hostUid: number;
  stopping: boolean;
}

interface GrainRecord {
  grainId: string;
  packageId: string;
  volumeDir: string;
  state: GrainState;
  memoryLimitBytes: number;
  startedAtMs: number;
  exit?: GrainExit;
  running?: Running;
}

/** Raised for a request about a grain or package in the wrong state. */
export class GrainError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GrainError";
  }
}

const GRAIN_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Runs the grains of one worker. */
export class GrainManager {
  readonly options: GrainManagerOptions;
  #log: Logger;
  #cgroups: CgroupTree;
  #hub: ApiSocketHub;
  #seccompFile: string;
  #grains = new Map<string, GrainRecord>();
  #packages = new Map<string, InstalledPackage>();
  #freeUids: number[];

  private constructor(
    options: GrainManagerOptions,
    log: Logger,
    cgroups: CgroupTree,
    seccompFile: string,
  ) {
    this.options = options;
    this.#log = log;
    this.#cgroups = cgroups;
    this.#hub = ApiSocketHub.open(`${options.stateDir}/api.sock`);
    this.#seccompFile = seccompFile;
    this.#freeUids = Array.from(
      { length: options.uidCount },
      (_, i) => options.uidFirst + options.uidCount - 1 - i,
    );
  }

  /** Prepares the state directory and the worker's cgroup. */
  static async open(
    options: GrainManagerOptions,
    log: Logger,
  ): Promise<GrainManager> {
    if (options.uidFirst < 1000 || options.uidCount < 1) {
      throw new RangeError(
        `grain uid range ${options.uidFirst}+${options.uidCount} must start at 1000 or above`,
      );
    }
    for (const sub of ["packages", "grains"]) {
      await Deno.mkdir(`${options.stateDir}/${sub}`, { recursive: true });
    }
    // Grains may pass through grains/ to their own volume, nothing more.
    await Deno.chmod(options.stateDir, 0o711);
    await Deno.chmod(`${options.stateDir}/grains`, 0o711);
    await Deno.chmod(`${options.stateDir}/packages`, 0o755);
    const seccompFile = `${options.stateDir}/seccomp.bpf`;
    await Deno.writeFile(seccompFile, grainFilterBytes(), { mode: 0o644 });
    const cgroups = await CgroupTree.open(options.cgroupName);
    const manager = new GrainManager(options, log, cgroups, seccompFile);
    await manager.#loadPackages();
    return manager;
  }

  async #loadPackages(): Promise<void> {
    for await (
      const entry of Deno.readDir(`${this.options.stateDir}/packages`)
    ) {
      const dir = `${this.options.stateDir}/packages/${entry.name}`;
      if (entry.name.startsWith(".unpacking-")) {
        // Left by a worker that died mid-unpack.
        await Deno.remove(dir, { recursive: true });
        continue;
      }
      if (!isPackageId(entry.name)) continue;
      try {
        const info = JSON.parse(
          await Deno.readTextFile(`${dir}.json`),
        ) as Omit<InstalledPackage, "dir">;
        this.#packages.set(entry.name, { ...info, dir });
      } catch {
        await Deno.remove(dir, { recursive: true });
      }
    }
  }

  /**
   * Verifies and unpacks a package unless it is already cached (by its
   * package ID, which is the hash of the file). Throws SpkError for a bad
   * package; nothing of it stays on disk then.
   */
  async installPackage(spk: Uint8Array): Promise<InstalledPackage> {
    const limits = this.options.spkLimits ?? DEFAULT_LIMITS;
    const verified = await readSpk(spk, limits);
    const cached = this.#packages.get(verified.packageId);
    if (cached) return cached;
    const dir = `${this.options.stateDir}/packages/${verified.packageId}`;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    const info = await unpackSpk(spk, dir, limits);
    const record = {
      packageId: info.packageId,
      appId: info.appId,
      manifest: info.manifest,
    };
    await Deno.writeTextFile(`${dir}.json`, JSON.stringify(record));
    const installed = { ...record, dir };
    this.#packages.set(info.packageId, installed);
    this.#log.info("package-installed", {
      packageId: info.packageId,
      appId: info.appId,
      bytes: info.unpackedBytes,
    });
    return installed;
  }

  /** A cached package, if this worker has it. */
  package(packageId: string): InstalledPackage | undefined {
    return this.#packages.get(packageId);
  }

  /**
   * Starts a grain. `isNew` runs the manifest's first action on an empty
   * volume; otherwise the continue command runs on the volume as it is.
   * `volumeDir` defaults to a directory under the state directory; in
   * production it is where the grain's NBD volume is mounted.
   */
  async start(options: {
    grainId: string;
    packageId: string;
    isNew: boolean;
    volumeDir?: string;
    memoryBytes?: number;
  }): Promise<GrainSupervisor> {
    const { grainId, packageId } = options;
    if (!GRAIN_ID.test(grainId)) {
      throw new GrainError(`bad grain ID ${JSON.stringify(grainId)}`);
    }
    const pkg = this.#packages.get(packageId);
    if (!pkg) throw new GrainError(`package ${packageId} is not installed`);
    const existing = this.#grains.get(grainId);
    if (existing?.running) {
      throw new GrainError(`grain ${grainId} is already running`);
    }
    const command = options.isNew
      ? pkg.manifest.actions[0]?.command ?? pkg.manifest.continueCommand
      : pkg.manifest.continueCommand;
    const hostUid = this.#freeUids.pop();
    if (hostUid === undefined) {
      throw new GrainError("no free grain uid: the worker is full");
    }
    const volumeDir = options.volumeDir ?? existing?.volumeDir ??
      `${this.options.stateDir}/grains/${grainId}/volume`;
    const memoryLimitBytes = options.memoryBytes ??
      this.options.defaultMemoryBytes;
    const record: GrainRecord = {
      grainId,
      packageId,
      volumeDir,
      state: "running",
      memoryLimitBytes,
      startedAtMs: Date.now(),
    };

    let cgroup: GrainCgroup | undefined;
    let process: SandboxProcess | undefined;
    let token: string | undefined;
    try {
      await Deno.mkdir(dirname(volumeDir), { recursive: true, mode: 0o711 });
      await prepareVolume(volumeDir, hostUid);
      cgroup = await this.#cgroups.create(`grain-${grainId}`, memoryLimitBytes);
      const started = await startSandbox({
        packageDir: pkg.dir,
        volumeDir,
        hostUid,
        command,
        tmpBytes: this.options.tmpBytes,
        cgroup,
        seccompFile: this.#seccompFile,
      }, this.#hub);
      process = started.process;
      token = started.token;
      const connection = started.connection;
      const timeoutMs = this.options.connectTimeoutMs ?? 10_000;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const conn = await Promise.race([
        connection,
        process.exited.then((exit) => {
          throw new GrainError(
            `grain ${grainId} exited before connecting: ${
              JSON.stringify(exit)
            } ${process!.output().join("\n")}`,
          );
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new GrainError(`grain ${grainId} did not connect`)),
            timeoutMs,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      const supervisor = GrainSupervisor.attach(conn);
      record.running = {
        process,
        supervisor,
        cgroup,
        hostUid,
        stopping: false,
      };
      this.#grains.set(grainId, record);
      this.#watch(record, record.running);
      this.#log.info("grain-started", { grainId, packageId, hostUid });
      return supervisor;
    } catch (error) {
      if (token) this.#hub.forget(token, new GrainError("start failed"));
      await process?.kill();
      await cgroup?.remove().catch(() => {});
      this.#freeUids.push(hostUid);
      throw error;
    }
  }

  /** Marks a grain that ended on its own, and frees what it held. */
  #watch(record: GrainRecord, running: Running): void {
    running.process.exited.then(async (exit) => {
      if (record.running !== running) return;
      record.exit = exit;
      record.state = running.stopping
        ? "stopped"
        : exit.outOfMemory
        ? "out-of-memory"
        : "crashed";
      if (!running.stopping) {
        this.#log.warn("grain-ended", {
          grainId: record.grainId,
          state: record.state,
          code: exit.code,
          signal: exit.signal,
          output: running.process.output().slice(-5),
        });
        await this.#release(record, running);
      }
    });
  }

  async #release(record: GrainRecord, running: Running): Promise<void> {
    running.supervisor.close();
    await running.process.kill();
    await running.cgroup.remove().catch((error) =>
      this.#log.error("cgroup-remove-failed", { error })
    );
    this.#freeUids.push(running.hostUid);
    if (record.running === running) record.running = undefined;
  }

  /** The supervisor of a running grain. */
  supervisor(grainId: string): GrainSupervisor | undefined {
    return this.#grains.get(grainId)?.running?.supervisor;
  }

  /** Stops a grain and syncs its volume so that nothing written is lost. */
  async stop(grainId: string): Promise<void> {
    const record = this.#grains.get(grainId);
    const running = record?.running;
    if (!record || !running) {
      throw new GrainError(`grain ${grainId} is not running`);
    }
    running.stopping = true;
    await this.#release(record, running);
    record.state = "stopped";
    await syncVolume(record.volumeDir);
    this.#log.info("grain-stopped", { grainId });
  }

  /** Stops a grain if it runs and removes its volume and record. */
  async delete(grainId: string): Promise<void> {
    const record = this.#grains.get(grainId);
    if (record?.running) await this.stop(grainId);
    const dir = record?.volumeDir ??
      `${this.options.stateDir}/grains/${grainId}/volume`;
    if (!GRAIN_ID.test(grainId)) {
      throw new GrainError(`bad grain ID ${JSON.stringify(grainId)}`);
    }
    await Deno.remove(dir, { recursive: true }).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
    await Deno.remove(`${this.options.stateDir}/grains/${grainId}`, {
      recursive: true,
    }).catch(() => {});
    this.#grains.delete(grainId);
  }

  /** One grain's status with live memory figures. */
  async status(grainId: string): Promise<GrainStatus | undefined> {
    const record = this.#grains.get(grainId);
    if (!record) return undefined;
    const running = record.running;
    return {
      grainId,
      packageId: record.packageId,
      state: record.state,
      hostUid: running?.hostUid,
      memoryLimitBytes: record.memoryLimitBytes,
      memoryBytes: running ? await running.cgroup.usageBytes() : 0,
      memoryPeakBytes: running ? (await running.cgroup.peakBytes()) ?? 0 : 0,
      startedAtMs: record.startedAtMs,
      exit: record.exit,
    };
  }

  /** Every grain this worker knows, running or not. */
  async list(): Promise<GrainStatus[]> {
    const out = [];
    for (const grainId of this.#grains.keys()) {
      const status = await this.status(grainId);
      if (status) out.push(status);
    }
    return out;
  }

  /** The machine's memory and load, and what the grains use together. */
  async machineUsage(): Promise<{
    memoryTotalBytes: number;
    memoryAvailableBytes: number;
    grainMemoryBytes: number;
    runningGrains: number;
    load1: number;
    freeUids: number;
  }> {
    // Deno's own calls: /proc is closed to a role without --allow-all.
    const memory = Deno.systemMemoryInfo();
    const [load1] = Deno.loadavg();
    let running = 0;
    for (const record of this.#grains.values()) if (record.running) running++;
    return {
      memoryTotalBytes: memory.total,
      memoryAvailableBytes: memory.available,
      grainMemoryBytes: await this.#cgroups.usageBytes(),
      runningGrains: running,
      load1,
      freeUids: this.#freeUids.length,
    };
  }

  /** Stops every grain and closes the fd-3 hub. */
  async close(): Promise<void> {
    for (const [grainId, record] of this.#grains) {
      if (record.running) await this.stop(grainId).catch(() => {});
    }
    this.#hub.close();
    try {
      removeKernelDirectory(this.#cgroups.path);
    } catch (error) {
      this.#log.warn("cgroup-remove-failed", { error });
    }
  }
}

/** Flushes a volume's filesystem (syncfs through `sync -f`). */
async function syncVolume(volumeDir: string): Promise<void> {
  const result = await new Deno.Command("sync", {
    args: ["-f", volumeDir],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!result.success) {
    throw new Error(
      `sync of ${volumeDir} failed: ${
        new TextDecoder().decode(result.stderr).trim()
      }`,
    );
  }
}
