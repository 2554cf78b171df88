/**
 * What the shell role's process may touch, for launchers (the
 * single-machine start, the machine agent, tests).
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";

/** The shell's permissions: loopback (its port, the gateway's control
 * port, the grain runner, MongoDB), its data folder, its configuration
 * file, `xz` for reading uploaded packages, and the MongoDB driver's
 * environment variables. Its code needs no read
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
    // The MongoDB driver reads its logging settings (MONGODB_*) and, for
    // its handshake, the variables that tell which cloud function it runs
    // in. Only these names; no credentials.
    env: [
      "MONGODB_*",
      "OIDC_TOKEN_FILE",
      "AWS_EXECUTION_ENV",
      "AWS_LAMBDA_RUNTIME_API",
      "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
      "AWS_REGION",
      "FUNCTIONS_WORKER_RUNTIME",
      "K_SERVICE",
      "FUNCTION_NAME",
      "FUNCTION_MEMORY_MB",
      "FUNCTION_REGION",
      "FUNCTION_TIMEOUT_SEC",
      "VERCEL",
      "VERCEL_REGION",
    ],
    sys: ["hostname"],
  };
}

/** The shell's entry module. */
export const shellEntry = new URL("./main.ts", import.meta.url).pathname;
