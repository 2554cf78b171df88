/**
 * What the shell role's process may touch, for launchers (the
 * single-machine start and the machine agent).
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";

/** The shell's permissions: loopback (its port, the gateway's control
 * port, the grain runner, MongoDB), its code, its data folder, and `xz`
 * for reading uploaded packages. */
export function shellPermissions(options: {
  codeDir: string;
  dataDir: string;
  netHosts?: string[];
}): RolePermissions {
  return {
    net: options.netHosts ?? ["127.0.0.1"],
    read: [options.codeDir, options.dataDir],
    write: [options.dataDir],
    run: ["xz"],
    sys: ["hostname"],
  };
}

/** The shell's entry module. */
export const shellEntry = new URL("./main.ts", import.meta.url).pathname;
