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
];

/** `path` relative to `root` when inside it, for shorter table lines. */
export function relative(root: string, path: string): string {
  return path.startsWith(`${root}/`) ? path.slice(root.length + 1) : path;
}
