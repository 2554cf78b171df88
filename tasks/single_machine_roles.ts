/**
 * The roles `deno task start` runs on one machine, in start order. Each
 * entry says which module to run, with which permissions and which
 * configuration; tasks/start.ts writes the configuration under
 * `.data/<role>/config.json` and starts the role as its own `deno run`.
 *
 * To add a role, append an entry (appending keeps the ports of the roles
 * before it unchanged). Ask for ports with `ports`, read them and other
 * roles' ports from the context, and name in `permissions` exactly what
 * the role touches: it runs with nothing else.
 *
 * @module
 */
import type { RolePermissions } from "../services/runtime/permissions.ts";
import { gatewayRole, shellRole } from "./single_machine_web.ts";
import { workerPermissions } from "../services/worker/role.ts";

/** What the launcher knows when it prepares a role. */
export interface RoleContext {
  /** Absolute path of the checkout. */
  root: string;
  /** Absolute path of this role's state folder, `.data/<role>/`. */
  dataDir: string;
  /** Absolute path of its configuration file inside `dataDir`. */
  configFile: string;
  /** Ports given to each role, by role name, in the order it asked. */
  ports: Readonly<Record<string, readonly number[]>>;
  /** Where every role ships its log lines (see
   * services/runtime/log_shipper.ts). */
  logSink: { hostname: string; port: number };
}

/** One role of the single-machine setup. */
export interface SingleMachineRole {
  /** Also the name of its state folder. */
  name: string;
  /** Entry module, relative to the checkout. */
  entry: string;
  /** How many loopback ports it needs (allocated from the base port). */
  ports?: number;
  permissions(context: RoleContext): RolePermissions;
  /** The role's configuration file contents; validated by the role. */
  config(context: RoleContext): Record<string, unknown>;
  /** One line for the launcher's table: where the role can be reached. */
  describe(context: RoleContext): string;
}

/** The default first port; `--base-port` changes it. */
export const DEFAULT_BASE_PORT = 4510;

/** Every role, in start order (stopped in reverse). */
export const singleMachineRoles: SingleMachineRole[] = [
  {
    name: "logsink",
    entry: "services/logsink/main.ts",
    ports: 1,
    permissions: ({ dataDir, configFile, logSink }) => ({
      net: [`${logSink.hostname}:${logSink.port}`],
      read: [configFile, dataDir],
      write: [dataDir],
    }),
    config: ({ dataDir, logSink }) => ({
      listen: { hostname: logSink.hostname, port: logSink.port },
      outputDir: `${dataDir}/logs`,
    }),
    describe: ({ dataDir, logSink, root }) =>
      `udp ${logSink.hostname}:${logSink.port}, one file per role in ${
        relative(root, dataDir)
      }/logs/`,
  },
  shellRole,
  gatewayRole,
  // After the web roles so that their ports stay where they were before
  // the worker joined; stopped first, so grains sync their volumes while
  // the shell and gateway still run.
  {
    name: "worker",
    entry: "services/worker/main.ts",
    ports: 1,
    permissions: ({ dataDir, configFile, ports }) =>
      workerPermissions({
        stateDir: dataDir,
        readFiles: [configFile],
        netHosts: [`127.0.0.1:${ports.worker[0]}`],
      }),
    config: ({ dataDir, ports }) => ({
      listen: { hostname: "127.0.0.1", port: ports.worker[0] },
      stateDir: dataDir,
      ...workerSlot(dataDir),
    }),
    describe: ({ dataDir, ports, root }) =>
      `rpc 127.0.0.1:${ports.worker[0]}, grains and packages in ${
        relative(root, dataDir)
      }/`,
  },
];

/** Grains per single-machine worker (one host uid each). */
const WORKER_UIDS = 1024;

/**
 * The worker's cgroup and host uid range, derived from its state folder:
 * two single-machine Blackrocks on one host (say, a person's and a test's)
 * must neither clear each other's cgroup at start nor give grains the same
 * uids. FNV-1a of the path picks one of 2048 uid ranges above 200000.
 */
export function workerSlot(
  dataDir: string,
): { cgroupName: string; uidFirst: number; uidCount: number } {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(dataDir)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  return {
    cgroupName: `blackrock-worker-${hash.toString(16).padStart(8, "0")}`,
    uidFirst: 200_000 + (hash % 2048) * WORKER_UIDS,
    uidCount: WORKER_UIDS,
  };
}

/** `path` relative to `root` when inside it, for shorter table lines. */
export function relative(root: string, path: string): string {
  return path.startsWith(`${root}/`) ? path.slice(root.length + 1) : path;
}
