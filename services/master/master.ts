/**
 * The master: gives every machine its roles and every vat its peers.
 *
 * The master keeps no state of its own. Each round it asks every machine's
 * agent for its report (specs, the roles it runs and their vat IDs, the
 * versions it holds), decides roles with {@link assignRoles} keeping what
 * already runs, sends each machine whose roles change a newer assignment,
 * and sends every machine a newer vat directory when the set of vats
 * changed. A master that restarts reads the same reports and carries on
 * with higher version numbers; while it is down, nothing changes and
 * everything keeps running. It is on no request's path.
 *
 * @module
 */
import type { Logger } from "../runtime/log.ts";
import {
  assignRoles,
  type ClusterNeeds,
  DEFAULT_NEEDS,
  type MachineInfo,
  type RoleMap,
  type RoleName,
} from "./assign.ts";

/** A machine of the cluster description. */
export interface MachineEntry {
  name: string;
  /** "host:port" of the machine agent. */
  agentAddress: string;
}

/** A role process as the agent reports it. */
export interface ReportedRole {
  role: RoleName;
  vatId: string;
  address: string;
  running: boolean;
  restarts: number;
  /** It exited on invalid configuration and waits for new settings. */
  failed?: boolean;
}

/** What an agent reports. */
export interface MachineReport {
  machine: string;
  vatId: string;
  address: string;
  specs: { cores: number; memoryBytes: number; diskBytes: number };
  assignmentVersion: number;
  directoryVersion: number;
  roles: ReportedRole[];
}

/** What the master sends an agent. */
export interface AssignmentMessage {
  version: number;
  roles: { role: RoleName; settings: Record<string, string> }[];
}

/** One vat of the directory. */
export interface DirectoryVat {
  role: RoleName;
  machine: string;
  vatId: string;
  address: string;
  zones: ("vat" | "storage" | "coordinators" | "gateways" | "shells")[];
}

/** The vat directory the master sends every machine. */
export interface DirectoryMessage {
  version: number;
  vats: DirectoryVat[];
}

/** How the master reaches agents (an Agent capability over RPC). */
export interface AgentLink {
  report(machine: MachineEntry): Promise<MachineReport>;
  assign(machine: MachineEntry, assignment: AssignmentMessage): Promise<void>;
  setDirectory(
    machine: MachineEntry,
    directory: DirectoryMessage,
  ): Promise<boolean>;
}

/** How the master asks a coordinator to move grains off a worker. */
export interface DrainLink {
  drainWorker(workerVatId: string): Promise<number>;
}

/** A machine as {@link Master.status} shows it. */
export interface MachineState {
  name: string;
  agentAddress: string;
  alive: boolean;
  draining: boolean;
  report: MachineReport | undefined;
  lastSeenMs: number | undefined;
}

/** Options of {@link Master}. */
export interface MasterOptions {
  link: AgentLink;
  log: Logger;
  /** Used by {@link Master.removeMachine}; without it grains are not moved
   * first and restart through failover instead. */
  drain?: DrainLink;
  needs?: ClusterNeeds;
  /** Configuration sent with each role (`--set path=value` pairs). A
   * change reaches machines when their roles next change. */
  roleSettings?: Partial<Record<RoleName, Record<string, string>>>;
  /** A machine that has not answered for this long is dead. */
  deadAfterMs?: number;
  /** How long one agent call may take. */
  callTimeoutMs?: number;
  now?: () => number;
}

const ZONES: Record<RoleName, DirectoryVat["zones"]> = {
  coordinator: ["coordinators"],
  storage: ["storage"],
  worker: ["vat"],
  gateway: ["gateways"],
  shell: ["shells"],
};

function withTimeout<T>(promise: Promise<T>, ms: number, what: string) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: no answer in ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function sameRoles(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join() === [...b].sort().join();
}

/** The master role's logic, driven by {@link Master.tick}. */
export class Master {
  readonly #options: MasterOptions;
  readonly #machines = new Map<string, MachineState>();
  readonly #now: () => number;
  #directoryKey = "";
  #lastRound: Promise<unknown> = Promise.resolve();
  #directoryVersion = 0;

  constructor(options: MasterOptions) {
    this.#options = options;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Adds a machine to the cluster; it gets roles at the next tick. */
  addMachine(entry: MachineEntry): void {
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(entry.name)) {
      throw new RangeError(
        `machine name ${
          JSON.stringify(entry.name)
        }: expected 1 to 64 letters, digits, '.', '-' or '_'`,
      );
    }
    if (this.#machines.has(entry.name)) {
      throw new RangeError(`machine ${entry.name} is already in the cluster`);
    }
    this.#machines.set(entry.name, {
      ...entry,
      alive: false,
      draining: false,
      report: undefined,
      lastSeenMs: undefined,
    });
    this.#options.log.info("machine-added", { ...entry });
  }

  /**
   * Takes a machine out cleanly: coordinators move the grains of its
   * worker to other workers first, then its roles are stopped, and the
   * other vats stop being told about it.
   */
  async removeMachine(name: string): Promise<void> {
    const machine = this.#machines.get(name);
    if (machine === undefined) {
      throw new RangeError(
        `machine ${JSON.stringify(name)} is not in the cluster`,
      );
    }
    machine.draining = true;
    const worker = machine.report?.roles.find((r) => r.role === "worker");
    if (worker !== undefined && this.#options.drain !== undefined) {
      let moved: number;
      try {
        moved = await this.#options.drain.drainWorker(worker.vatId);
      } catch (error) {
        // Its grains could not move: the machine stays, and serves on.
        machine.draining = false;
        throw error;
      }
      this.#options.log.info("machine-drained", {
        machine: name,
        grains: moved,
      });
    }
    // Other machines take over its control roles and stop naming its vats
    // before its own roles stop.
    await this.tick();
    try {
      const version = (machine.report?.assignmentVersion ?? 0) + 1;
      await withTimeout(
        this.#options.link.assign(machine, { version, roles: [] }),
        this.#options.callTimeoutMs ?? 5000,
        `assign ${name}`,
      );
    } catch (error) {
      this.#options.log.warn("machine-stop-failed", { machine: name, error });
    }
    this.#machines.delete(name);
    this.#options.log.info("machine-removed", { machine: name });
  }

  /** Every machine and what the master knows of it. */
  status(): { machines: MachineState[]; directoryVersion: number } {
    return {
      machines: [...this.#machines.values()].map((m) => ({ ...m })),
      directoryVersion: this.#directoryVersion,
    };
  }

  /**
   * One round: read every report, fix roles, spread the directory.
   * Returns the machines whose assignment changed.
   */
  tick(): Promise<string[]> {
    // Rounds never overlap: one started by removeMachine waits for the
    // periodic one, so two rounds cannot send different assignments.
    const round = this.#lastRound.then(() => this.#round());
    this.#lastRound = round.catch(() => {});
    return round;
  }

  async #round(): Promise<string[]> {
    await this.#readReports();
    const live = [...this.#machines.values()].filter((m) =>
      m.alive && !m.draining && m.report !== undefined
    );
    const previous: RoleMap = new Map(
      live.map((m) => [m.name, m.report!.roles.map((r) => r.role)]),
    );
    const infos: MachineInfo[] = live.map((m) => ({
      name: m.name,
      ...m.report!.specs,
    }));
    const roles = assignRoles(
      infos,
      previous,
      this.#options.needs ?? DEFAULT_NEEDS,
    );
    const changed: string[] = [];
    await Promise.all(live.map(async (machine) => {
      const wanted = roles.get(machine.name) ?? [];
      const running = machine.report!.roles.map((r) => r.role);
      if (sameRoles(wanted, running)) return;
      const assignment: AssignmentMessage = {
        version: machine.report!.assignmentVersion + 1,
        roles: wanted.map((role) => ({
          role,
          settings: this.#options.roleSettings?.[role] ?? {},
        })),
      };
      try {
        await withTimeout(
          this.#options.link.assign(machine, assignment),
          this.#options.callTimeoutMs ?? 5000,
          `assign ${machine.name}`,
        );
        changed.push(machine.name);
        this.#options.log.info("machine-assigned", {
          machine: machine.name,
          version: assignment.version,
          roles: wanted,
        });
      } catch (error) {
        this.#options.log.warn("assign-failed", {
          machine: machine.name,
          error,
        });
      }
    }));
    if (changed.length > 0) await this.#readReports();
    await this.#spreadDirectory();
    return changed;
  }

  async #readReports(): Promise<void> {
    const deadAfterMs = this.#options.deadAfterMs ?? 5000;
    await Promise.all([...this.#machines.values()].map(async (machine) => {
      try {
        const report = await withTimeout(
          this.#options.link.report(machine),
          this.#options.callTimeoutMs ?? 5000,
          `report ${machine.name}`,
        );
        if (!machine.alive) {
          this.#options.log.info("machine-alive", {
            machine: machine.name,
            specs: report.specs,
          });
        }
        machine.report = report;
        machine.alive = true;
        machine.lastSeenMs = this.#now();
      } catch (error) {
        const silentMs = machine.lastSeenMs === undefined
          ? Infinity
          : this.#now() - machine.lastSeenMs;
        this.#options.log.debug("report-failed", {
          machine: machine.name,
          error,
        });
        if (machine.alive && silentMs > deadAfterMs) {
          machine.alive = false;
          this.#options.log.warn("machine-dead", {
            machine: machine.name,
            error,
          });
        }
      }
    }));
  }

  async #spreadDirectory(): Promise<void> {
    const live = [...this.#machines.values()].filter((m) =>
      m.alive && m.report !== undefined
    );
    const vats: DirectoryVat[] = [];
    for (const machine of live) {
      if (machine.draining) continue;
      for (const role of machine.report!.roles) {
        if (role.vatId === "") continue;
        vats.push({
          role: role.role,
          machine: machine.name,
          vatId: role.vatId,
          address: role.address,
          zones: ZONES[role.role],
        });
      }
    }
    vats.sort((a, b) => a.vatId.localeCompare(b.vatId));
    const key = JSON.stringify(vats);
    const highest = Math.max(0, ...live.map((m) => m.report!.directoryVersion));
    if (key !== this.#directoryKey || highest > this.#directoryVersion) {
      // A restarted master starts above whatever the machines hold.
      this.#directoryVersion = Math.max(this.#directoryVersion, highest) + 1;
      this.#directoryKey = key;
    }
    const directory = { version: this.#directoryVersion, vats };
    await Promise.all(live.map(async (machine) => {
      if (machine.report!.directoryVersion >= directory.version) return;
      try {
        await withTimeout(
          this.#options.link.setDirectory(machine, directory),
          this.#options.callTimeoutMs ?? 5000,
          `directory ${machine.name}`,
        );
        machine.report!.directoryVersion = directory.version;
      } catch (error) {
        this.#options.log.warn("directory-failed", {
          machine: machine.name,
          error,
        });
      }
    }));
  }
}
