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
import { bindMount, detachMount, makeShared } from "./kernel_files.ts";
import { GrainSupervisor } from "./supervisor.ts";
import type { AttachedVolume, BlockVolumes, VolumeSpec } from "./volumes.ts";

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
  /** Warm sandboxes kept ready per package and command once a grain of
   * that package started (see GrainManager.warm); 0 keeps none. */
  warmPerPackage?: number;
  spkLimits?: SpkLimits;
  /** Attaches grains' storage volumes (see GrainManager.start's
   * `volume`); without it only volume directories can be used. */
  volumes?: BlockVolumes;
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
  /** CPU time used since the grain started, user and system. */
  cpuNanoseconds: number;
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
  /** For a grain started in a warm sandbox: the slot its volume is bound
   * on, unmounted when the grain ends. */
  slotDir?: string;
}

/** A sandbox made ahead of time for one package and command, its app held
 * back until a grain claims it (see GrainManager.warm). */
interface WarmSandbox {
  process: SandboxProcess;
  supervisor: GrainSupervisor;
  cgroup: GrainCgroup;
  hostUid: number;
  slotDir: string;
}

interface GrainRecord {
  grainId: string;
  packageId: string;
  volumeDir: string;
  /** The storage volume mounted on volumeDir, while it is attached. */
  attached?: AttachedVolume;
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

function warmKey(packageId: string, isNew: boolean): string {
  return `${packageId}:${isNew ? "new" : "continue"}`;
}

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
  #warm = new Map<string, WarmSandbox[]>();
  #refilling = new Map<string, Promise<void>>();
  #closing = false;

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
    for (const sub of ["packages", "grains", "slots"]) {
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
    await manager.#clearLeftovers();
    return manager;
  }

  /**
   * A worker that died left its grains' processes, cgroups and warm slots
   * behind. Their names are known from the state directory (grains/ID and
   * slots/NAME), so each is killed, unmounted and removed.
   */
  async #clearLeftovers(): Promise<void> {
    const { stateDir } = this.options;
    for await (const entry of Deno.readDir(`${stateDir}/slots`)) {
      const slotDir = `${stateDir}/slots/${entry.name}`;
      await this.#cgroups.adopt(entry.name).remove();
      while (detachMount(slotDir)) { /* until nothing is mounted */ }
      await Deno.remove(slotDir, { recursive: true });
      this.#log.warn("leftover-cleared", { slot: entry.name });
    }
    for await (const entry of Deno.readDir(`${stateDir}/grains`)) {
      if (!GRAIN_ID.test(entry.name)) continue;
      const cgroup = this.#cgroups.adopt(`grain-${entry.name}`);
      if ((await cgroup.pids()).length > 0) {
        this.#log.warn("leftover-cleared", { grainId: entry.name });
      }
      await cgroup.remove();
    }
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
   * `volumeDir` defaults to a directory under the state directory, or is
   * a directory someone else mounted. `volume` instead names a storage
   * Volume, which the worker attaches there through the block daemon and
   * detaches (flushed to storage) when the grain stops; a volume that
   * already holds a filesystem is never given the "new" action.
   */
  async start(options: {
    grainId: string;
    packageId: string;
    isNew: boolean;
    volumeDir?: string;
    volume?: VolumeSpec;
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
    if (options.volume !== undefined && options.volumeDir !== undefined) {
      throw new GrainError(
        `grain ${grainId}: give a volume or a volume directory, not both`,
      );
    }
    if (options.volume !== undefined) {
      return await this.#startOnVolume(options, options.volume, existing);
    }
    return await this.#start(options, existing);
  }

  /** Attaches the grain's storage volume, then starts the grain on it; a
   * failed start detaches it again. */
  async #startOnVolume(
    options: Parameters<GrainManager["start"]>[0],
    volume: VolumeSpec,
    existing: GrainRecord | undefined,
  ): Promise<GrainSupervisor> {
    const volumes = this.options.volumes;
    if (volumes === undefined) {
      throw new GrainError(
        `grain ${options.grainId} names a storage volume but this worker has no block daemon configured`,
      );
    }
    // A grain that crashed left its volume attached; start from storage.
    if (existing?.attached) {
      await existing.attached.detach();
      existing.attached = undefined;
    }
    const mountPoint =
      `${this.options.stateDir}/grains/${options.grainId}/volume`;
    await Deno.mkdir(dirname(mountPoint), { recursive: true, mode: 0o711 });
    const attached = await volumes.attach(options.grainId, volume, mountPoint);
    try {
      return await this.#start(
        {
          ...options,
          volume: undefined,
          volumeDir: mountPoint,
          isNew: options.isNew && attached.formatted,
        },
        existing,
        attached,
      );
    } catch (error) {
      await attached.detach().catch((detachError) =>
        this.#log.error("volume-detach-failed", {
          grainId: options.grainId,
          error: detachError,
        })
      );
      throw error;
    }
  }

  async #start(
    options: Parameters<GrainManager["start"]>[0],
    existing: GrainRecord | undefined,
    attached?: AttachedVolume,
  ): Promise<GrainSupervisor> {
    const { grainId, packageId } = options;
    const pkg = this.#packages.get(packageId)!;
    const command = options.isNew
      ? pkg.manifest.actions[0]?.command ?? pkg.manifest.continueCommand
      : pkg.manifest.continueCommand;
    if (this.#freeUids.length === 0) await this.#evictWarm();
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
      attached,
      state: "running",
      memoryLimitBytes,
      startedAtMs: Date.now(),
    };

    const warm = this.#warm.get(warmKey(packageId, options.isNew))?.shift();
    this.#refill(packageId, options.isNew);
    if (warm) {
      this.#freeUids.push(hostUid);
      return await this.#claim(warm, record);
    }

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

  /**
   * Makes `count` sandboxes for a package ahead of time, each with its
   * uid, cgroup, namespaces, mounts and fd 3 ready and its app held back.
   * A later start of a grain of that package (new or restored, as given)
   * binds the grain's volume into one (mount propagation through the
   * sandbox's /var slot) and lets the app run, which skips building the
   * sandbox on the start's path.
   */
  async warm(
    packageId: string,
    options: { isNew: boolean; count: number },
  ): Promise<void> {
    const pkg = this.#packages.get(packageId);
    if (!pkg) throw new GrainError(`package ${packageId} is not installed`);
    const command = options.isNew
      ? pkg.manifest.actions[0]?.command ?? pkg.manifest.continueCommand
      : pkg.manifest.continueCommand;
    const key = warmKey(packageId, options.isNew);
    for (let i = 0; i < options.count; i++) {
      const hostUid = this.#freeUids.pop();
      if (hostUid === undefined) {
        throw new GrainError("no free grain uid: the worker is full");
      }
      const name = `warm-${crypto.randomUUID().slice(0, 8)}`;
      const slotDir = `${this.options.stateDir}/slots/${name}`;
      let cgroup: GrainCgroup | undefined;
      let process: SandboxProcess | undefined;
      let mounted = false;
      try {
        await Deno.mkdir(slotDir, { recursive: true });
        await prepareVolume(slotDir, hostUid);
        // A shared mount of its own, so that the volume bound on it later
        // propagates into the sandbox's copy.
        bindMount(slotDir, slotDir);
        mounted = true;
        makeShared(slotDir);
        cgroup = await this.#cgroups.create(
          name,
          this.options.defaultMemoryBytes,
        );
        const started = await startSandbox({
          packageDir: pkg.dir,
          volumeDir: slotDir,
          hostUid,
          command,
          tmpBytes: this.options.tmpBytes,
          cgroup,
          seccompFile: this.#seccompFile,
          holdUntilReleased: true,
        }, this.#hub);
        process = started.process;
        const supervisor = GrainSupervisor.attach(await started.connection);
        const sandbox = { process, supervisor, cgroup, hostUid, slotDir };
        const list = this.#warm.get(key) ?? [];
        list.push(sandbox);
        this.#warm.set(key, list);
        // A warm sandbox that dies is dropped from the pool.
        process.exited.then(async () => {
          const pool = this.#warm.get(key) ?? [];
          const at = pool.indexOf(sandbox);
          if (at < 0) return;
          pool.splice(at, 1);
          await this.#dispose(sandbox);
        });
      } catch (error) {
        await process?.kill();
        await cgroup?.remove().catch(() => {});
        if (mounted) detachMount(slotDir);
        await Deno.remove(slotDir, { recursive: true }).catch(() => {});
        this.#freeUids.push(hostUid);
        throw error;
      }
    }
  }

  /** Gives up one warm sandbox (any package's) so that its uid serves a
   * grain instead. */
  async #evictWarm(): Promise<void> {
    for (const pool of this.#warm.values()) {
      const sandbox = pool.pop();
      if (sandbox) {
        await this.#dispose(sandbox);
        return;
      }
    }
  }

  /** Tops the package's pool up to warmPerPackage in the background. */
  #refill(packageId: string, isNew: boolean): void {
    const target = this.options.warmPerPackage ?? 0;
    const key = warmKey(packageId, isNew);
    if (target === 0 || this.#closing || this.#refilling.has(key)) return;
    const missing = target - (this.#warm.get(key)?.length ?? 0);
    if (missing <= 0 || this.#freeUids.length <= missing) return;
    const work = this.warm(packageId, { isNew, count: missing })
      .catch((error) => this.#log.warn("warm-failed", { packageId, error }))
      .finally(() => this.#refilling.delete(key));
    this.#refilling.set(key, work);
  }

  /** Resolves when no pool is being topped up. */
  async settled(): Promise<void> {
    while (this.#refilling.size > 0) {
      await Promise.all(this.#refilling.values());
    }
  }

  /** How many warm sandboxes wait for grains of a package. */
  warmCount(packageId: string, isNew: boolean): number {
    return this.#warm.get(warmKey(packageId, isNew))?.length ?? 0;
  }

  async #claim(
    warm: WarmSandbox,
    record: GrainRecord,
  ): Promise<GrainSupervisor> {
    try {
      await Deno.mkdir(dirname(record.volumeDir), {
        recursive: true,
        mode: 0o711,
      });
      await prepareVolume(record.volumeDir, warm.hostUid);
      bindMount(record.volumeDir, warm.slotDir);
      warm.cgroup.setLimit(record.memoryLimitBytes);
      await warm.process.release();
    } catch (error) {
      await this.#dispose(warm);
      throw error;
    }
    const running: Running = { ...warm, stopping: false };
    record.running = running;
    this.#grains.set(record.grainId, record);
    this.#watch(record, running);
    this.#log.info("grain-started", {
      grainId: record.grainId,
      packageId: record.packageId,
      hostUid: warm.hostUid,
      warm: true,
    });
    return warm.supervisor;
  }

  /** Ends a warm sandbox (or a grain that ran in one) and frees its slot. */
  async #dispose(
    sandbox: Pick<
      WarmSandbox,
      "process" | "supervisor" | "cgroup" | "hostUid" | "slotDir"
    >,
  ): Promise<void> {
    sandbox.supervisor.close();
    await sandbox.process.kill();
    await sandbox.cgroup.remove().catch((error) =>
      this.#log.error("cgroup-remove-failed", { error })
    );
    // The volume's bind, then the slot's own.
    while (detachMount(sandbox.slotDir)) { /* until nothing is mounted */ }
    await Deno.remove(sandbox.slotDir, { recursive: true }).catch(() => {});
    this.#freeUids.push(sandbox.hostUid);
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
        // No longer running from this moment, even while its resources
        // are being freed.
        record.running = undefined;
        await this.#release(record, running);
      }
    });
  }

  async #release(record: GrainRecord, running: Running): Promise<void> {
    if (running.slotDir !== undefined) {
      await this.#dispose({ ...running, slotDir: running.slotDir });
    } else {
      running.supervisor.close();
      await running.process.kill();
      await running.cgroup.remove().catch((error) =>
        this.#log.error("cgroup-remove-failed", { error })
      );
      this.#freeUids.push(running.hostUid);
    }
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
    if (record.attached) {
      await record.attached.detach();
      record.attached = undefined;
    }
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
    // Never remove files through a mounted storage volume: that would
    // delete the grain's data in storage. Removing the Volume itself is
    // its owner's business (the storage role), not the worker's.
    if (record?.attached) {
      await record.attached.detach();
      record.attached = undefined;
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
      cpuNanoseconds: running ? running.cgroup.cpuNanoseconds() : 0,
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
    this.#closing = true;
    await this.settled();
    for (const [grainId, record] of this.#grains) {
      if (record.running) await this.stop(grainId).catch(() => {});
      // A grain that ended on its own left its volume attached.
      await record.attached?.detach().catch((error) =>
        this.#log.error("volume-detach-failed", { grainId, error })
      );
      record.attached = undefined;
    }
    for (const pool of this.#warm.values()) {
      for (const sandbox of pool.splice(0)) await this.#dispose(sandbox);
    }
    this.#hub.close();
    await this.#cgroups.remove().catch((error) =>
      this.#log.warn("cgroup-remove-failed", { error })
    );
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
