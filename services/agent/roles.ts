/**
 * The roles a machine agent can start, with the permissions each gets.
 *
 * Each role is its own Deno process started by roleCommand, so it may
 * touch only what is listed here: its port on the machine's address, the
 * cluster's hosts (for its peers), its own folder (vat key and state), the
 * vat directory the agent keeps, and the programs or library it needs.
 * Every role's configuration takes the agent's overrides listed here; the
 * rest of a role's configuration comes from the settings of the master's
 * assignment (the cluster description's `roleSettings`).
 *
 * @module
 */
import type { RolePermissions } from "../runtime/permissions.ts";
import type { RoleCatalogue, RoleContext, RoleName } from "./agent.ts";

/** Ports each role's vat listens on, the same on every machine. */
export const ROLE_PORTS: Record<RoleName, number> = {
  coordinator: 7101,
  storage: 7102,
  worker: 7103,
  gateway: 7104,
  shell: 7105,
};

/** Where the code and the cluster's shared things are. */
export interface CatalogueOptions {
  /** The checkout or image folder holding services/ and ffi/. */
  codeRoot: string;
  /** Hosts of the other machines, which roles may reach. */
  clusterHosts: string[];
  /** The coordinators' shared state file (see coordinator/shared_state.ts). */
  coordinatorStateFile: string;
  /** The C library the worker opens to write cgroup files. */
  libc: string;
  /** First host uid of the worker's grains. */
  workerUidFirst: number;
}

function base(
  options: CatalogueOptions,
  context: RoleContext,
  port: number,
): RolePermissions {
  const own = context.address.includes(":")
    ? `[${context.address}]:${port}`
    : `${context.address}:${port}`;
  return {
    net: [own, ...options.clusterHosts],
    read: [context.roleDir, context.directoryFile],
    write: [context.roleDir],
  };
}

/** The catalogue of the real roles. */
export function defaultCatalogue(options: CatalogueOptions): RoleCatalogue {
  const entry = (role: string) =>
    `${options.codeRoot}/services/${role}/main.ts`;
  const ffi = `${options.codeRoot}/ffi/build/libblackrock.so`;
  const stateDir = options.coordinatorStateFile.replace(/\/[^/]*$/, "");
  return {
    coordinator: {
      entry: entry("coordinator"),
      port: ROLE_PORTS.coordinator,
      permissions: (c) => {
        const p = base(options, c, ROLE_PORTS.coordinator);
        return {
          ...p,
          read: [...p.read!, stateDir],
          write: [...p.write!, stateDir],
        };
      },
      overrides: (c) => [
        `listen.hostname=${c.address}`,
        `listen.port=${ROLE_PORTS.coordinator}`,
        `stateFile=${options.coordinatorStateFile}`,
        `vatKeyFile=${c.vatKeyFile}`,
        `directoryFile=${c.directoryFile}`,
      ],
    },
    storage: {
      entry: entry("storage"),
      port: ROLE_PORTS.storage,
      permissions: (c) => ({
        ...base(options, c, ROLE_PORTS.storage),
        ffi: [ffi],
      }),
      overrides: () => [],
    },
    worker: {
      entry: entry("worker"),
      port: ROLE_PORTS.worker,
      waitFor: "coordinator",
      // As services/worker/main.ts documents: it runs as root, maps grains
      // to host uids and reaches cgroup files through libc.
      permissions: (c) => {
        const p = base(options, c, ROLE_PORTS.worker);
        return {
          ...p,
          net: [...p.net!, `unix:${c.roleDir}/worker/api.sock`],
          run: ["bash", "chown", "sync", "xz"],
          ffi: [options.libc],
          sys: ["systemMemoryInfo", "loadavg"],
        };
      },
      // The coordinators are those of the directory when the worker
      // starts; its vat ID is its worker ID in their records.
      overrides: (c) => [
        `listen.hostname=${c.address}`,
        `listen.port=${ROLE_PORTS.worker}`,
        `stateDir=${c.roleDir}/worker`,
        `workerId=${c.vatId}`,
        // Simulated machines share one host: each worker needs its own
        // cgroup and uid range there.
        `cgroupName=blackrock-worker-${c.machine}`,
        `uidFirst=${options.workerUidFirst}`,
        `coordinators=${
          JSON.stringify(
            (c.directory?.vats ?? []).filter((v) => v.role === "coordinator")
              .map((v) => {
                const at = v.address.lastIndexOf(":");
                return {
                  hostname: v.address.slice(0, at).replace(/^\[|\]$/g, ""),
                  port: Number(v.address.slice(at + 1)),
                };
              }),
          )
        }`,
        `vatKeyFile=${c.vatKeyFile}`,
        `directoryFile=${c.directoryFile}`,
      ],
    },
    gateway: {
      entry: entry("gateway"),
      port: ROLE_PORTS.gateway,
      permissions: (c) => ({
        ...base(options, c, ROLE_PORTS.gateway),
        run: ["nginx", "openssl"],
      }),
      overrides: () => [],
    },
    shell: {
      entry: entry("shell"),
      port: ROLE_PORTS.shell,
      permissions: (c) => base(options, c, ROLE_PORTS.shell),
      overrides: () => [],
    },
  };
}
