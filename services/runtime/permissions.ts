/**
 * Deno permission flags per role. A role gets exactly the hosts, paths,
 * commands and FFI library it names; there is no way to ask for
 * `--allow-all`, so no role runs with it.
 *
 * @module
 */

/** What one role's process may touch. Every list is exact. */
export interface RolePermissions {
  /** "host:port", "host", or "unix:/path" entries for --allow-net. */
  net?: string[];
  read?: string[];
  write?: string[];
  /** Programs the role may start (for example bwrap, nginx). */
  run?: string[];
  /** Environment variables the role may read. */
  env?: string[];
  /** Shared libraries the role may open; usually ffi/native.ts's one. */
  ffi?: string[];
  /** Whether the role may read system information (memory, load). */
  sys?: string[];
}

function flag(name: string, values: string[] | undefined): string[] {
  if (values === undefined || values.length === 0) return [];
  for (const value of values) {
    if (value === "" || value.includes(",")) {
      throw new RangeError(
        `--allow-${name} entry ${
          JSON.stringify(value)
        } must be non-empty and have no comma`,
      );
    }
  }
  return [`--allow-${name}=${values.join(",")}`];
}

/**
 * Turns a role's permissions into `deno run` flags.
 *
 * @example
 * ```ts
 * import { permissionFlags } from "./permissions.ts";
 * const flags = permissionFlags({ net: ["127.0.0.1:4000"], read: ["/srv"] });
 * if (flags.join(" ") !== "--allow-net=127.0.0.1:4000 --allow-read=/srv") {
 *   throw new Error(flags.join(" "));
 * }
 * ```
 */
export function permissionFlags(permissions: RolePermissions): string[] {
  return [
    ...flag("net", permissions.net),
    ...flag("read", permissions.read),
    ...flag("write", permissions.write),
    ...flag("run", permissions.run),
    ...flag("env", permissions.env),
    ...flag("ffi", permissions.ffi),
    ...flag("sys", permissions.sys),
  ];
}

/** The full command line that starts a role's entry module under its
 * permissions, with `--config` pointing at its configuration file. */
export function roleCommand(options: {
  deno: string;
  entry: string;
  permissions: RolePermissions;
  configFile?: string;
  overrides?: string[];
  /** Where the role ships its log lines; it is given the flag and the
   * network permission for it (see services/runtime/log_shipper.ts). */
  logSink?: { hostname: string; port: number };
}): string[] {
  // Every role may read its log level and reach its log sink; nothing else
  // is added.
  const env = [...(options.permissions.env ?? []), "BLACKROCK_LOG_LEVEL"];
  const net = [...(options.permissions.net ?? [])];
  const sink = options.logSink;
  const sinkHost = sink?.hostname.includes(":")
    ? `[${sink.hostname}]`
    : sink?.hostname;
  if (sink !== undefined) {
    for (const entry of [`${sinkHost}:0`, `${sinkHost}:${sink.port}`]) {
      if (!net.includes(entry)) net.push(entry);
    }
  }
  const args = [
    "run",
    "--no-prompt",
    ...permissionFlags({ ...options.permissions, env, net }),
  ];
  args.push(options.entry);
  if (options.configFile !== undefined) {
    args.push("--config", options.configFile);
  }
  for (const override of options.overrides ?? []) args.push("--set", override);
  if (sink !== undefined) args.push("--log-sink", `${sinkHost}:${sink.port}`);
  return [options.deno, ...args];
}
