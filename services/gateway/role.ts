/**
 * What the gateway role's process may touch, for launchers.
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";

/** The gateway's permissions: loopback (its proxy and control ports, the
 * shells, the grains' backends on any local port), its data folder
 * (nginx's configuration, certificate and logs), its configuration file,
 * the `nginx` and `openssl` programs, and the uid (to tell nginx which
 * user to run as) and hostname (for the admin page). */
export function gatewayPermissions(options: {
  dataDir: string;
  readFiles?: string[];
  netHosts?: string[];
}): RolePermissions {
  return {
    net: options.netHosts ?? ["127.0.0.1"],
    read: [options.dataDir, ...(options.readFiles ?? [])],
    write: [options.dataDir],
    run: ["nginx", "openssl"],
    sys: ["uid", "hostname"],
  };
}

/** The gateway's entry module. */
export const gatewayEntry = new URL("./main.ts", import.meta.url).pathname;
