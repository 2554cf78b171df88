/**
 * The machine agent: the one long-lived process on every machine.
 *
 * At boot it loads its vat key from the machine's state folder, making one
 * if there is none; wiping the machine wipes that folder, so a wiped
 * machine comes back as a new vat. It reports the machine's specs, runs the
 * roles the master assigns as separate Deno processes with the permissions
 * its role catalogue grants, and restarts them when they crash.
 *
 * The last assignment and the last vat directory are written to the state
 * folder before they are acted on, so a machine that reboots while the
 * master is away comes back running what it ran before.
 *
 * @module
 */
import { z } from "zod";
import type { Logger } from "../runtime/log.ts";
import { roleCommand, type RolePermissions } from "../runtime/permissions.ts";
import { loadOrCreateVatKey } from "./vat_key.ts";
import { type MachineSpecs, measureSpecs } from "./specs.ts";
import {
  type BackoffOptions,
  killLeftover,
  type ProcessSpec,
  type ProcessStatus,
  Supervisor,
} from "./supervisor.ts";

/** Names of the roles a master may assign. */
export const ROLE_NAMES = [
  "coordinator",
  "storage",
  "worker",
  "gateway",
  "shell",
] as const;
/** A role a machine can run. */
export type RoleName = (typeof ROLE_NAMES)[number];

const settingPath = z.string().regex(
  /^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$/,
  "a dotted configuration path",
);

/** What the master tells a machine to run. Newer versions win. */
export const Assignment = z.strictObject({
  version: z.number().int().min(0),
  roles: z.array(z.strictObject({
    role: z.enum(ROLE_NAMES),
    /** Extra `--set path=value` configuration for the role. */
    settings: z.record(settingPath, z.string()).default({}),
  })).refine(
    (roles) => new Set(roles.map((r) => r.role)).size === roles.length,
    "each role at most once per machine",
  ),
});
/** See {@link Assignment}. */
export type Assignment = z.infer<typeof Assignment>;

/** Which vats exist, where, and in which trust zones. Newer versions win. */
export const Directory = z.strictObject({
  version: z.number().int().min(0),
  vats: z.array(z.strictObject({
    role: z.enum(ROLE_NAMES),
    machine: z.string().min(1),
    vatId: z.string().regex(/^[0-9a-f]{64}$/, "64 lower-case hex digits"),
    address: z.string().min(1),
    zones: z.array(
      z.enum(["vat", "storage", "coordinators", "gateways", "shells"]),
    ),
  })),
});
/** See {@link Directory}. */
export type Directory = z.infer<typeof Directory>;

/** What a role's process is given by the agent. */
export interface RoleContext {
  machine: string;
  /** The role's own folder: its vat key, its state. */
  roleDir: string;
  /** The role's vat key file, made by the agent (mode 0600). */
  vatKeyFile: string;
  /** The vat directory the agent keeps current (JSON of Directory). */
  directoryFile: string;
  /** The address the machine's roles listen on. */
  address: string;
  settings: Record<string, string>;
  /** The role's own vat ID, hex. */
  vatId: string;
  /** The vat directory as the agent holds it when the role starts. */
  directory: Directory | undefined;
}

/** How to run one role: its entry module, permissions and configuration. */
export interface RoleDefinition {
  entry: string;
  permissions(context: RoleContext): RolePermissions;
  /** `path=value` overrides that tell the role where its things are. */
  overrides(context: RoleContext): string[];
  env?: Record<string, string>;
  /** The UDP port the role's vat listens on, reported to the master. */
  port?: number;
  /** A role that needs peers to start (a worker needs a coordinator)
   * waits until the directory names one of each. */
  waitFor?: RoleName | RoleName[];
  /** The role restarts when the peers its overrides name move (a shell
   * registered with a gateway that died); others keep running. */
  followsDirectory?: boolean;
}

/** Every role this agent can run, by name. */
export type RoleCatalogue = Partial<Record<RoleName, RoleDefinition>>;

/** A role as the agent reports it. */
export interface RoleReport {
  role: RoleName;
  vatId: string;
  /** "host:port" of the role's vat, or "" if the role has no port. */
  address: string;
  process: ProcessStatus | undefined;
}

/** What the agent tells the master about its machine. */
export interface AgentReport {
  machine: string;
  vatId: string;
  address: string;
  specs: MachineSpecs;
  assignmentVersion: number;
  directoryVersion: number;
  roles: RoleReport[];
}

/** Options of {@link Agent.start}. */
export interface AgentOptions {
  machine: string;
  stateDir: string;
  address: string;
  catalogue: RoleCatalogue;
  log: Logger;
  /** The Deno binary that runs roles. */
  deno?: string;
  /** Specs a simulated machine claims instead of measuring. */
  claimedSpecs?: Partial<MachineSpecs>;
  backoff?: Partial<BackoffOptions>;
  stopGraceMs?: number;
  roleOutput?: "inherit" | "null";
}

/** Raised for an assignment or directory the agent refuses. */
export class AgentRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AgentRequestError";
  }
}

/**
 * Turns `path=value` settings into the nested object of a role's
 * configuration file, reading values as `--set` does (JSON when they
 * parse, strings otherwise). Paths were validated by {@link Assignment}.
 */
export function settingsObject(
  settings: Record<string, string>,
): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  for (const [path, text] of Object.entries(settings)) {
    const parts = path.split(".");
    let node = root;
    for (const part of parts.slice(0, -1)) {
      const next = node[part];
      if (typeof next !== "object" || next === null || Array.isArray(next)) {
        node[part] = {};
      }
      node = node[part] as Record<string, unknown>;
    }
    let value: unknown = text;
    try {
      value = JSON.parse(text);
    } catch {
      // A plain string.
    }
    // A long run of digits (a hex secret, by chance) stays text rather than
    // becoming a number that loses digits.
    if (typeof value === "number" && String(value) !== text) value = text;
    node[parts[parts.length - 1]] = value;
  }
  return root;
}

/** Writes a file so that a crash leaves either the old or the new one. */
async function writeDurably(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp`;
  const file = await Deno.open(temporary, {
    write: true,
    create: true,
    truncate: true,
    mode: 0o600,
  });
  try {
    const bytes = new TextEncoder().encode(text);
    let written = 0;
    while (written < bytes.length) {
      written += await file.write(bytes.subarray(written));
    }
    await file.sync();
  } finally {
    file.close();
  }
  await Deno.rename(temporary, path);
}

async function readJson<T>(
  path: string,
  schema: z.ZodType<T>,
  log: Logger,
): Promise<T | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
  try {
    return schema.parse(JSON.parse(text));
  } catch (error) {
    // A damaged file must not keep the machine from booting; the master
    // sends a fresh copy when it next reaches the agent.
    log.error("state-file-unreadable", { path, error });
    return undefined;
  }
}

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) {
    const problems = result.error.issues.map((issue) =>
      `${issue.path.join(".") || "(root)"}: ${issue.message}`
    ).join("; ");
    throw new AgentRequestError(`invalid ${what}: ${problems}`);
  }
  return result.data;
}

/** The machine agent. */
export class Agent {
  /** The machine's vat ID, hex. */
  readonly vatId: string;
  readonly specs: MachineSpecs;
  readonly #options: AgentOptions;
  readonly #supervisor: Supervisor;
  readonly #roleVatIds = new Map<RoleName, string>();
  #assignment: Assignment = { version: 0, roles: [] };
  #directory: Directory | undefined;
  #directoryVersion = 0;
  /** The process spec of each started role and the settings it came from. */
  #specs = new Map<RoleName, { key: string; spec: ProcessSpec }>();
  /** Serializes assignment changes so two never interleave. */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    options: AgentOptions,
    vatId: string,
    specs: MachineSpecs,
  ) {
    this.#options = options;
    this.vatId = vatId;
    this.specs = specs;
    this.#supervisor = new Supervisor(options.log, {
      backoff: options.backoff,
      stopGraceMs: options.stopGraceMs,
      output: options.roleOutput,
    });
  }

  /** Boots the agent: key, specs, and the last assignment if there is one. */
  static async start(options: AgentOptions): Promise<Agent> {
    // Folders are 0711: nobody else may list them, but the worker's grains
    // (their own uids) must pass through to the packages they run. Keys
    // and state files are 0600.
    await Deno.mkdir(`${options.stateDir}/roles`, {
      recursive: true,
      mode: 0o711,
    });
    await Deno.chmod(options.stateDir, 0o711);
    await Deno.chmod(`${options.stateDir}/roles`, 0o711);
    const vatId = await loadOrCreateVatKey(`${options.stateDir}/vat.key`);
    const specs = await measureSpecs(options.stateDir, options.claimedSpecs);
    const agent = new Agent(options, vatId, specs);
    options.log.vat = vatId;
    options.log.info("agent-booted", { machine: options.machine, specs });

    // Roles a crashed agent left running would hold their ports and run
    // twice: they are killed before anything starts.
    for (const role of ROLE_NAMES) {
      const definition = options.catalogue[role];
      if (definition === undefined) continue;
      const killed = killLeftover(
        `${options.stateDir}/roles/${role}/pid`,
        definition.entry,
      );
      if (killed !== undefined) {
        options.log.warn("leftover-role-killed", { role, pid: killed });
      }
    }
    const directory = await readJson(
      agent.directoryFile,
      Directory,
      options.log,
    );
    agent.#directory = directory;
    agent.#directoryVersion = directory?.version ?? 0;
    const assignment = await readJson(
      `${options.stateDir}/assignment.json`,
      Assignment,
      options.log,
    );
    if (assignment !== undefined) {
      options.log.info("assignment-resumed", {
        version: assignment.version,
        roles: assignment.roles.map((r) => r.role),
      });
      await agent.#apply(assignment);
    }
    return agent;
  }

  /** Where roles read the vat directory. */
  get directoryFile(): string {
    return `${this.#options.stateDir}/directory.json`;
  }

  /**
   * Runs what the master assigns. An assignment older than the current one
   * (from a master that was partitioned away) is refused.
   */
  async assign(value: unknown): Promise<void> {
    const assignment = parse(Assignment, value, "assignment");
    const next = this.#queue.then(async () => {
      if (assignment.version < this.#assignment.version) {
        throw new AgentRequestError(
          `assignment version ${assignment.version} is older than ` +
            `${this.#assignment.version}`,
        );
      }
      await writeDurably(
        `${this.#options.stateDir}/assignment.json`,
        JSON.stringify(assignment),
      );
      // A role that failed on invalid configuration gets another try
      // under the new assignment: its settings may be fixed.
      await this.#apply(assignment, { retryFailed: true });
    });
    this.#queue = next.catch(() => {});
    await next;
  }

  /** Keeps the vat directory that the roles read. Stale versions are
   * ignored, so that a slow message cannot undo a newer one. */
  async setDirectory(value: unknown): Promise<boolean> {
    const directory = parse(Directory, value, "directory");
    if (directory.version <= this.#directoryVersion) return false;
    this.#directoryVersion = directory.version;
    this.#directory = directory;
    await writeDurably(this.directoryFile, JSON.stringify(directory));
    this.#options.log.info("directory-updated", {
      version: directory.version,
      vats: directory.vats.length,
    });
    const follows = this.#assignment.roles.some(({ role }) =>
      this.#options.catalogue[role]?.followsDirectory
    );
    if (this.#waiting() || follows) {
      const next = this.#queue.then(() => this.#apply(this.#assignment));
      this.#queue = next.catch(() => {});
      await next;
    }
    return true;
  }

  /** The machine, its specs, and its roles' vat IDs and processes. */
  report(): AgentReport {
    const processes = new Map(
      this.#supervisor.status().map((s) => [s.name, s]),
    );
    return {
      machine: this.#options.machine,
      vatId: this.vatId,
      address: this.#options.address,
      specs: this.specs,
      assignmentVersion: this.#assignment.version,
      directoryVersion: this.#directoryVersion,
      roles: this.#assignment.roles.map(({ role }) => ({
        role,
        vatId: this.#roleVatIds.get(role) ?? "",
        address: this.#roleAddress(role),
        process: processes.get(role),
      })),
    };
  }

  /** Stops every role; the assignment stays on disk for the next boot. */
  async stop(): Promise<void> {
    await this.#queue;
    await this.#supervisor.stopAll();
  }

  /** Forgets everything the machine knew, its vat key first. */
  static async wipe(stateDir: string): Promise<void> {
    await Deno.remove(stateDir, { recursive: true }).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }

  #roleAddress(role: RoleName): string {
    const port = this.#options.catalogue[role]?.port;
    if (port === undefined) return "";
    const host = this.#options.address;
    return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  }

  async #apply(
    assignment: Assignment,
    options: { retryFailed?: boolean } = {},
  ): Promise<void> {
    const specs: ProcessSpec[] = [];
    const kept = new Map<RoleName, { key: string; spec: ProcessSpec }>();
    for (const { role, settings } of assignment.roles) {
      const definition = this.#options.catalogue[role];
      if (definition === undefined) {
        // Running the rest is better than running nothing; the master sees
        // the missing role in the report.
        this.#options.log.error("role-unknown", { role });
        continue;
      }
      // A running role keeps the command it started with while its
      // assignment is unchanged, even when the directory changes: a worker
      // must not restart (and drop its grains) because a peer moved.
      const key = JSON.stringify(settings);
      const cached = this.#specs.get(role);
      if (
        cached !== undefined && cached.key === key &&
        !definition.followsDirectory
      ) {
        kept.set(role, cached);
        specs.push(cached.spec);
        continue;
      }
      const missing = [definition.waitFor ?? []].flat().filter((peer) =>
        !(this.#directory?.vats ?? []).some((v) => v.role === peer)
      );
      if (missing.length > 0) {
        this.#options.log.info("role-waiting", { role, for: missing });
        continue;
      }
      const spec = await this.#processSpec(role, definition, settings);
      kept.set(role, { key, spec });
      specs.push(spec);
    }
    this.#specs = kept;
    this.#assignment = assignment;
    await this.#supervisor.apply(specs, options);
  }

  /** Whether an assigned role waits for the directory to name a peer. */
  #waiting(): boolean {
    return this.#assignment.roles.some(({ role }) =>
      this.#options.catalogue[role] !== undefined && !this.#specs.has(role)
    );
  }

  async #processSpec(
    role: RoleName,
    definition: RoleDefinition,
    settings: Record<string, string>,
  ): Promise<ProcessSpec> {
    const roleDir = `${this.#options.stateDir}/roles/${role}`;
    await Deno.mkdir(roleDir, { recursive: true, mode: 0o711 });
    await Deno.chmod(roleDir, 0o711);
    const vatKeyFile = `${roleDir}/vat.key`;
    const vatId = await loadOrCreateVatKey(vatKeyFile);
    this.#roleVatIds.set(role, vatId);
    const context: RoleContext = {
      vatId,
      directory: this.#directory,
      machine: this.#options.machine,
      roleDir,
      vatKeyFile,
      directoryFile: this.directoryFile,
      address: this.#options.address,
      settings,
    };
    // The master's settings may hold the cluster's secrets (tokens, disk
    // secrets): they go to a file only root reads, never on the command
    // line, where every user of the machine could read them.
    const configFile = `${roleDir}/settings.json`;
    await writeDurably(configFile, JSON.stringify(settingsObject(settings)));
    return {
      name: role,
      pidFile: `${roleDir}/pid`,
      // Printed messages (the shell's first admin password) stay in the
      // role's folder, for root alone: `deno task cluster:status
      // --admin-password` reads them there.
      stdoutFile: `${roleDir}/output`,
      command: roleCommand({
        deno: this.#options.deno ?? Deno.execPath(),
        entry: definition.entry,
        permissions: definition.permissions(context),
        configFile,
        overrides: definition.overrides(context),
      }),
      env: definition.env,
    };
  }
}
