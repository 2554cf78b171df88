/**
 * Which roles each machine runs, decided from the machines' specs and the
 * cluster's needs.
 *
 * The decision is incremental: roles already running on a live machine
 * stay where they are, and only what is missing is placed, so a machine
 * joining or dying moves as little as possible. Rules, in order:
 *
 * - storage goes to the machines with the most disk for their memory, up
 *   to the wanted count, preferring machines that run no worker;
 * - at least two coordinators (when there are two machines), each on its
 *   own machine, packed with other control roles and kept off workers;
 * - one gateway and one shell, on control machines, off storage if they can;
 * - every machine left without a role becomes a worker, and there is always
 *   at least one worker (the machine with the most memory outside storage).
 *
 * Workers run apps, so they are suspect: on clusters of three or more
 * machines no worker shares a machine with storage or the shell.
 *
 * @module
 */

/** A role a machine can run (same names as the agent's). */
export type RoleName =
  | "coordinator"
  | "storage"
  | "worker"
  | "gateway"
  | "shell";

/** A machine as the master sees it when assigning. */
export interface MachineInfo {
  name: string;
  cores: number;
  memoryBytes: number;
  diskBytes: number;
}

/** How many of each control role the cluster wants. */
export interface ClusterNeeds {
  coordinators: number;
  storage: number;
  gateways: number;
  shells: number;
}

/** Defaults: two coordinators so that one may die. */
export const DEFAULT_NEEDS: ClusterNeeds = {
  coordinators: 2,
  storage: 1,
  gateways: 1,
  shells: 1,
};

/** Roles per machine name. Each list is sorted, each role at most once. */
export type RoleMap = Map<string, RoleName[]>;

const ORDER: RoleName[] = [
  "storage",
  "coordinator",
  "gateway",
  "shell",
  "worker",
];

function sorted(roles: Iterable<RoleName>): RoleName[] {
  return [...new Set(roles)].sort((a, b) =>
    ORDER.indexOf(a) - ORDER.indexOf(b)
  );
}

/**
 * Assigns roles to the live `machines`, keeping what `previous` gave them.
 * Machines not in `machines` (dead or removed) get nothing.
 *
 * @example
 * ```ts
 * import { assignRoles } from "./assign.ts";
 * const GiB = 2 ** 30;
 * const machine = (name: string, memory: number, disk: number) => ({
 *   name, cores: 4, memoryBytes: memory * GiB, diskBytes: disk * GiB,
 * });
 * const roles = assignRoles([
 *   machine("big-disk", 8, 4000), machine("a", 64, 100),
 *   machine("b", 64, 100), machine("c", 64, 100), machine("d", 16, 100),
 * ]);
 * if (!roles.get("big-disk")!.includes("storage")) throw new Error("disk");
 * if (!roles.get("a")!.includes("worker")) throw new Error("memory");
 * ```
 */
export function assignRoles(
  machines: MachineInfo[],
  previous: RoleMap = new Map(),
  needs: ClusterNeeds = DEFAULT_NEEDS,
): RoleMap {
  for (const m of machines) {
    for (const field of ["cores", "memoryBytes", "diskBytes"] as const) {
      if (!(m[field] > 0)) {
        throw new RangeError(
          `machine ${m.name}: ${field} is ${m[field]}, expected > 0`,
        );
      }
    }
  }
  if (new Set(machines.map((m) => m.name)).size !== machines.length) {
    throw new RangeError("machine names must be unique");
  }
  const roles = new Map<string, Set<RoleName>>();
  for (const m of machines) {
    roles.set(m.name, new Set(previous.get(m.name) ?? []));
  }
  if (machines.length === 0) return new Map();
  const byName = new Map(machines.map((m) => [m.name, m]));
  const secure = machines.length >= 3;
  const count = (role: RoleName) =>
    [...roles.values()].filter((r) => r.has(role)).length;
  const has = (name: string, role: RoleName) => roles.get(name)!.has(role);

  // Too many of a control role (a machine came back after its role was
  // placed elsewhere): drop the extras from the machines added last.
  const trim = (role: RoleName, wanted: number) => {
    const holders = machines.filter((m) => has(m.name, role));
    for (const extra of holders.slice(wanted)) {
      roles.get(extra.name)!.delete(role);
    }
  };
  trim("storage", Math.max(needs.storage, 1));
  trim("coordinator", Math.max(needs.coordinators, 1));
  trim("gateway", Math.max(needs.gateways, 1));
  trim("shell", Math.max(needs.shells, 1));

  const medianRatio = median(machines.map((m) => m.diskBytes / m.memoryBytes));
  const fill = (
    role: RoleName,
    wanted: number,
    score: (m: MachineInfo) => number,
  ) => {
    const target = Math.min(wanted, machines.length);
    while (count(role) < target) {
      const candidates = machines.filter((m) => !has(m.name, role));
      if (candidates.length === 0) return;
      candidates.sort((a, b) =>
        score(b) - score(a) || a.name.localeCompare(b.name)
      );
      roles.get(candidates[0].name)!.add(role);
    }
  };
  const controlRoles = (name: string) =>
    [...roles.get(name)!].filter((r) => r !== "worker").length;

  fill("storage", needs.storage, (m) =>
    // Disk for its memory, relative to the cluster; a worker is a poor
    // choice and an empty machine a good one.
    Math.log2((m.diskBytes / m.memoryBytes) / medianRatio) -
    (has(m.name, "worker") ? 4 : 0) -
    (secure && has(m.name, "shell") ? 2 : 0));
  fill(
    "coordinator",
    needs.coordinators,
    (m) =>
      (has(m.name, "worker") ? -8 : 0) +
      (controlRoles(m.name) > 0 ? 2 : 0) -
      controlRoles(m.name) * 0.1 -
      m.memoryBytes / 2 ** 50,
  );
  const frontScore = (m: MachineInfo) =>
    (has(m.name, "worker") ? -8 : 0) +
    (has(m.name, "storage") ? (secure ? -2 : -0.5) : 0) +
    (has(m.name, "coordinator") ? 1 : 0) -
    controlRoles(m.name) * 0.1 -
    m.memoryBytes / 2 ** 50;
  fill("gateway", needs.gateways, frontScore);
  fill("shell", needs.shells, frontScore);

  // Machines without a role run grains.
  for (const m of machines) {
    if (roles.get(m.name)!.size === 0) roles.get(m.name)!.add("worker");
  }
  if (count("worker") === 0) {
    const candidates = machines.filter((m) => !has(m.name, "storage"));
    const pool = candidates.length > 0 ? candidates : machines;
    pool.sort((a, b) =>
      b.memoryBytes - a.memoryBytes || a.name.localeCompare(b.name)
    );
    roles.get(pool[0].name)!.add("worker");
  }
  if (secure) {
    // Keep workers off machines with storage or the shell: make sure one
    // clean machine runs grains, then take workers off the others.
    const clean = (m: MachineInfo) =>
      !has(m.name, "storage") && !has(m.name, "shell");
    const cleanMachines = machines.filter(clean);
    if (
      cleanMachines.length > 0 &&
      !cleanMachines.some((m) => has(m.name, "worker"))
    ) {
      cleanMachines.sort((a, b) =>
        b.memoryBytes - a.memoryBytes || a.name.localeCompare(b.name)
      );
      roles.get(cleanMachines[0].name)!.add("worker");
    }
    if (cleanMachines.some((m) => has(m.name, "worker"))) {
      for (const m of machines) {
        if (!clean(m)) roles.get(m.name)!.delete("worker");
      }
    }
  }
  const out: RoleMap = new Map();
  for (const m of machines) {
    if (byName.has(m.name)) out.set(m.name, sorted(roles.get(m.name)!));
  }
  return out;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
