/**
 * What the gateway role's process may touch, for launchers.
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";

/** The gateway's permissions: loopback (its proxy and control ports, the
 * shells, the grains' backends), its code, its data folder (nginx's
 * configuration, certificate and logs), and the `nginx` and `openssl`
 * programs. */
export function gatewayPermissions(options: {
  codeDir: string;
  dataDir: string;
  netHosts?: string[];
}): RolePermissions {
  return {
    net: options.netHosts ?? ["127.0.0.1"],
    read: [options.codeDir, options.dataDir],
    write: [options.dataDir],
    run: ["nginx", "openssl"],
    sys: ["uid"],
  };
}

/** The gateway's entry module. */
export const gatewayEntry = new URL("./main.ts", import.meta.url).pathname;
