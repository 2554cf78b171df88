/**
 * What the shell role's process may touch, for launchers (the
 * single-machine start, the machine agent, tests).
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";

/** The shell's permissions: loopback (its port, the gateway's control
 * port, the grain runner, MongoDB), its data folder, its configuration
 * file, and `xz` for reading uploaded packages. Its code needs no read
 * permission: Deno loads modules without it. */
export function shellPermissions(options: {
  dataDir: string;
  readFiles?: string[];
  netHosts?: string[];
}): RolePermissions {
  return {
    net: options.netHosts ?? ["127.0.0.1"],
    read: [options.dataDir, ...(options.readFiles ?? [])],
    write: [options.dataDir],
    run: ["xz"],
    sys: ["hostname"],
  };
}

/** The shell's entry module. */
export const shellEntry = new URL("./main.ts", import.meta.url).pathname;
