/**
 * What the worker role's process may touch, for launchers (the
 * single-machine start, tests). As services/worker/main.ts documents, it
 * runs as root, maps grains to host uids and reaches cgroup files through
 * libc, hence libc as its one FFI library.
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";
import { LIBC_PATH } from "./kernel_files.ts";
import { slotName } from "../blockd/control.ts";
import { ATTACH_PROGRAMS } from "./volumes.ts";

/** The worker's permissions: its RPC port on loopback and its grains' fd-3
 * socket, its state folder (packages, volumes), its configuration file,
 * the programs it runs (bubblewrap through bash, chown, sync, xz), libc,
 * and the machine's memory and load (reported per machine). */
export function workerPermissions(options: {
  stateDir: string;
  readFiles?: string[];
  netHosts?: string[];
  /** With grain volumes on storage (the `blockd` configuration): the
   * worker starts the block daemon with `deno` and attaches volumes. */
  blockVolumes?: { deno: string; slots: number };
}): RolePermissions {
  const blockd = options.blockVolumes;
  const sockets = `${options.stateDir}/blockd`;
  return {
    net: [
      ...(options.netHosts ?? ["127.0.0.1"]),
      `unix:${options.stateDir}/api.sock`,
      ...(blockd
        ? [
          `unix:${sockets}/control.sock`,
          ...Array.from(
            { length: blockd.slots },
            (_, i) => `unix:${sockets}/sockets/${slotName(i)}.sock`,
          ),
        ]
        : []),
    ],
    read: [options.stateDir, ...(options.readFiles ?? [])],
    write: [options.stateDir],
    run: [
      "bash",
      "chown",
      "sync",
      "xz",
      ...(blockd ? [blockd.deno, ...ATTACH_PROGRAMS] : []),
    ],
    ffi: [LIBC_PATH],
    sys: ["systemMemoryInfo", "loadavg"],
  };
}

/** The worker's entry module. */
export const workerEntry = new URL("./main.ts", import.meta.url).pathname;
