/**
 * Memory cgroups for grains, on cgroup v1 (a `memory` hierarchy, as on
 * this project's test machines) or v2 (the unified hierarchy). One parent
 * group per worker holds one child group per running grain; the child's
 * limit is what the kernel enforces, and its OOM-kill counter is how the
 * worker learns that the kernel killed something in the grain.
 *
 * Control files are read and written through kernel_files.ts (libc),
 * since Deno refuses /sys paths to a process without --allow-all.
 *
 * @module
 */
import {
  KernelFileError,
  kernelFileExists,
  killProcess,
  makeKernelDirectory,
  readKernelFile,
  removeKernelDirectory,
  writeKernelFile,
} from "./kernel_files.ts";

/** Which cgroup interface a machine offers for memory. */
export type CgroupVersion = 1 | 2;

/** Finds the memory controller: v1 when a `memory` hierarchy is mounted,
 * else v2 when the unified hierarchy has it. Throws if neither does. */
export function detectMemoryCgroup(
  mountRoot = "/sys/fs/cgroup",
): { version: CgroupVersion; base: string } {
  if (kernelFileExists(`${mountRoot}/memory/memory.limit_in_bytes`)) {
    return { version: 1, base: `${mountRoot}/memory` };
  }
  if (kernelFileExists(`${mountRoot}/cgroup.controllers`)) {
    const controllers = readKernelFile(`${mountRoot}/cgroup.controllers`);
    if (controllers.split(/\s+/).includes("memory")) {
      return { version: 2, base: mountRoot };
    }
  }
  throw new Error(`no memory cgroup controller under ${mountRoot}`);
}

/** Reads a counter file; undefined if it is absent. */
function readNumber(path: string): number | undefined {
  try {
    const text = readKernelFile(path).trim();
    return text === "max" ? Infinity : Number(text);
  } catch (error) {
    if (error instanceof KernelFileError && error.notFound) return undefined;
    throw error;
  }
}

/** A "key value" line file such as memory.events or memory.oom_control. */
function readKeyed(path: string): Map<string, number> {
  const map = new Map<string, number>();
  let text = "";
  try {
    text = readKernelFile(path);
  } catch (error) {
    if (error instanceof KernelFileError && error.notFound) return map;
    throw error;
  }
  for (const line of text.split("\n")) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined) map.set(key, Number(value));
  }
  return map;
}

/** The memory cgroup of one grain (and on v1 its cpuacct twin). */
export class GrainCgroup {
  constructor(
    readonly version: CgroupVersion,
    /** Absolute path of the group's directory. */
    readonly path: string,
    /** v1 only: the grain's group in the cpuacct hierarchy, if mounted. */
    readonly cpuPath?: string,
  ) {}

  /** The file a launcher writes its own pid into to join the group. */
  get procsFile(): string {
    return `${this.path}/cgroup.procs`;
  }

  /** Every procs file a launcher joins (memory, then cpuacct on v1). */
  get procsFiles(): string[] {
    return this.cpuPath === undefined
      ? [this.procsFile]
      : [this.procsFile, `${this.cpuPath}/cgroup.procs`];
  }

  /** CPU time the grain used, user and system, in nanoseconds. */
  cpuNanoseconds(): number {
    if (this.version === 2) {
      const usec = readKeyed(`${this.path}/cpu.stat`).get("usage_usec");
      return (usec ?? 0) * 1000;
    }
    if (this.cpuPath === undefined) return 0;
    return readNumber(`${this.cpuPath}/cpuacct.usage`) ?? 0;
  }

  /** Sets the hard memory limit. */
  setLimit(limitBytes: number): void {
    const limit = String(Math.floor(limitBytes));
    if (this.version === 1) {
      const memory = `${this.path}/memory.limit_in_bytes`;
      const memsw = `${this.path}/memory.memsw.limit_in_bytes`;
      // With swap accounting on, also cap memory+swap so that swapping out
      // does not let a grain pass its limit. The kernel keeps memsw at or
      // above memory, so a raise writes memsw first and a cut memory first.
      if (!kernelFileExists(memsw)) {
        writeKernelFile(memory, limit);
      } else {
        try {
          writeKernelFile(memory, limit);
          writeKernelFile(memsw, limit);
        } catch {
          writeKernelFile(memsw, limit);
          writeKernelFile(memory, limit);
        }
      }
    } else {
      writeKernelFile(`${this.path}/memory.max`, limit);
      if (kernelFileExists(`${this.path}/memory.swap.max`)) {
        writeKernelFile(`${this.path}/memory.swap.max`, "0");
      }
    }
  }

  /** Bytes of memory the grain uses now (page cache and tmpfs included). */
  async usageBytes(): Promise<number> {
    const file = this.version === 1
      ? "memory.usage_in_bytes"
      : "memory.current";
    return await Promise.resolve(readNumber(`${this.path}/${file}`) ?? 0);
  }

  /** The most the grain has used since it started. */
  async peakBytes(): Promise<number | undefined> {
    const file = this.version === 1
      ? "memory.max_usage_in_bytes"
      : "memory.peak";
    return await Promise.resolve(readNumber(`${this.path}/${file}`));
  }

  /** How many processes of the grain the kernel's OOM killer ended. */
  async oomKills(): Promise<number> {
    const file = this.version === 1 ? "memory.oom_control" : "memory.events";
    return await Promise.resolve(
      readKeyed(`${this.path}/${file}`).get("oom_kill") ?? 0,
    );
  }

  /** Pids still in the group. */
  async pids(): Promise<number[]> {
    try {
      return await Promise.resolve(
        readKernelFile(this.procsFile).split("\n")
          .filter((line) => line !== "").map(Number),
      );
    } catch (error) {
      if (error instanceof KernelFileError && error.notFound) return [];
      throw error;
    }
  }

  /** Kills every process in the group and waits until it is empty. */
  async killAll(): Promise<void> {
    if (this.version === 2) {
      try {
        writeKernelFile(`${this.path}/cgroup.kill`, "1");
      } catch { /* older kernel: fall back to signalling each pid */ }
    }
    for (let round = 0; round < 100; round++) {
      const pids = await this.pids();
      if (pids.length === 0) return;
      for (const pid of pids) killProcess(pid);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    throw new Error(`processes remain in ${this.path} after SIGKILL`);
  }

  /** Kills what is left in the group and removes it. */
  async remove(): Promise<void> {
    await this.killAll();
    for (const path of [this.path, this.cpuPath]) {
      if (path !== undefined) await removeWhenEmpty(path);
    }
  }
}

async function removeWhenEmpty(path: string): Promise<void> {
  for (let attempt = 0;; attempt++) {
    try {
      removeKernelDirectory(path);
      return;
    } catch (error) {
      // The kernel may still be tearing down the last task (EBUSY).
      if (attempt >= 50) throw error;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}

/** The worker's parent group, under which each grain gets its own. */
export class CgroupTree {
  private constructor(
    readonly version: CgroupVersion,
    /** Absolute path of the worker's group. */
    readonly path: string,
    /** v1: the worker's group in the cpuacct hierarchy, if mounted. */
    readonly cpuPath?: string,
  ) {}

  /** Creates (or reuses) the worker's group `name` under the memory
   * controller's root. */
  static async open(name: string, mountRoot?: string): Promise<CgroupTree> {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
      throw new RangeError(`bad cgroup name ${JSON.stringify(name)}`);
    }
    const { version, base } = detectMemoryCgroup(mountRoot);
    const path = `${base}/${name}`;
    makeKernelDirectory(path);
    if (version === 2) {
      // Children only get a memory controller if the parent hands it on.
      writeKernelFile(`${path}/cgroup.subtree_control`, "+memory");
    } else {
      // Hierarchical accounting makes the worker group's usage the sum of
      // its grains'. Refused (EBUSY) once children exist; already set then.
      try {
        writeKernelFile(`${path}/memory.use_hierarchy`, "1");
      } catch { /* already set */ }
    }
    // v1 keeps CPU accounting in a hierarchy of its own.
    const cpuRoot = `${mountRoot ?? "/sys/fs/cgroup"}/cpuacct`;
    let cpuPath: string | undefined;
    if (version === 1 && kernelFileExists(`${cpuRoot}/cpuacct.usage`)) {
      cpuPath = `${cpuRoot}/${name}`;
      makeKernelDirectory(cpuPath);
    }
    return await Promise.resolve(new CgroupTree(version, path, cpuPath));
  }

  /** Removes the worker's (empty) groups. */
  async remove(): Promise<void> {
    for (const path of [this.path, this.cpuPath]) {
      if (path !== undefined) await removeWhenEmpty(path);
    }
  }

  #child(grainName: string): GrainCgroup {
    if (!/^[A-Za-z0-9_.-]+$/.test(grainName)) {
      throw new RangeError(`bad grain cgroup ${JSON.stringify(grainName)}`);
    }
    return new GrainCgroup(
      this.version,
      `${this.path}/${grainName}`,
      this.cpuPath === undefined ? undefined : `${this.cpuPath}/${grainName}`,
    );
  }

  /** A handle on a child group that may already exist (for clean-up). */
  adopt(grainName: string): GrainCgroup {
    return this.#child(grainName);
  }

  /** Makes the group for one grain with a hard memory limit. */
  async create(grainName: string, limitBytes: number): Promise<GrainCgroup> {
    const group = this.#child(grainName);
    await group.remove();
    makeKernelDirectory(group.path);
    if (group.cpuPath !== undefined) makeKernelDirectory(group.cpuPath);
    group.setLimit(limitBytes);
    return group;
  }

  /** Memory used by all grains together. */
  async usageBytes(): Promise<number> {
    return await new GrainCgroup(this.version, this.path).usageBytes();
  }
}
