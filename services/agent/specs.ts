/**
 * What a machine offers: cores, memory and disk. The master assigns roles
 * from these numbers, so they are measured, not configured, unless a
 * simulated machine (many on one host) is told to claim other numbers.
 *
 * @module
 */
import { statfs } from "node:fs/promises";

/** A machine's resources as the agent reports them to the master. */
export interface MachineSpecs {
  cores: number;
  memoryBytes: number;
  /** Space on the filesystem that holds the agent's state folder. */
  diskBytes: number;
}

/**
 * Measures this machine; any field in `claimed` replaces the measured one
 * (simulated machines share one host and would otherwise look identical).
 */
export async function measureSpecs(
  diskPath: string,
  claimed: Partial<MachineSpecs> = {},
): Promise<MachineSpecs> {
  const cores = claimed.cores ?? navigator.hardwareConcurrency;
  const memoryBytes = claimed.memoryBytes ?? Deno.systemMemoryInfo().total;
  let diskBytes = claimed.diskBytes;
  if (diskBytes === undefined) {
    const info = await statfs(diskPath);
    diskBytes = Number(info.blocks) * Number(info.bsize);
  }
  const specs = { cores, memoryBytes, diskBytes };
  for (const [name, value] of Object.entries(specs)) {
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(
        `machine spec ${name} is ${value}, expected a positive number`,
      );
    }
  }
  return specs;
}
