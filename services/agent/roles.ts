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

/** The gateway's control port, where shells register over RPC. */
export const GATEWAY_CONTROL_PORT = 7106;

/** "host:port" (IPv6 in brackets) as hostname and port. */
function hostPortOf(address: string): { hostname: string; port: number } {
  const at = address.lastIndexOf(":");
  return {
    hostname: address.slice(0, at).replace(/^\[|\]$/g, ""),
    port: Number(address.slice(at + 1)),
  };
}

/** The first vat of `role` in the directory, as hostname and port. */
function firstVat(
  context: RoleContext,
  role: RoleName,
): { hostname: string; port: number } | undefined {
  const vat = (context.directory?.vats ?? []).find((v) => v.role === role);
  return vat === undefined ? undefined : hostPortOf(vat.address);
}

/** Vat IDs (hex) of the directory's vats of the given roles. */
function vatIds(context: RoleContext, roles: RoleName[]): string {
  return JSON.stringify(
    (context.directory?.vats ?? []).filter((v) => roles.includes(v.role))
      .map((v) => v.vatId),
  );
}

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
  /** The worker's cgroup; `blackrock-worker-<machine>` if not given. */
  workerCgroupName?: string;
  /** First host uid of the worker's grains, and how many it may use. */
  workerUidFirst: number;
  workerUidCount?: number;
  /** The shells' shared folder for their database and packages, if any
   * (see services/agent/main.ts). */
  shellDataDir?: string;
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
    // A local disk in the role's folder; the disk and zone secrets come
    // from the master's settings. Its zone is the directory's storage
    // nodes, and those who may present or open its refs, when it starts.
    storage: {
      entry: entry("storage"),
      port: ROLE_PORTS.storage,
      // Its zone is read from the directory once, when it starts: it waits
      // until the directory names the roles that use it.
      waitFor: ["coordinator", "worker", "shell"],
      // The AWS SDK (loaded even for a local disk) reads these variables
      // and the OS release when it loads, as services/storage/main.ts says.
      // Its UDP receive loop is a Web Worker, whose modules are loaded
      // with read permission: the code folders, not the whole checkout
      // (which may hold other machines' state).
      permissions: (c) => ({
        ...base(options, c, ROLE_PORTS.storage),
        read: [
          ...base(options, c, ROLE_PORTS.storage).read!,
          ...["services", "ffi", "proto", "node_modules", "deno.json"].map(
            (path) => `${options.codeRoot}/${path}`,
          ),
        ],
        ffi: [ffi],
        env: [
          "AWS_*",
          "_X_AMZN_TRACE_ID",
          "HOME",
          "USERPROFILE",
          "HOMEPATH",
          "HOMEDRIVE",
        ],
        sys: ["osRelease"],
      }),
      overrides: (c) => [
        `listen.hostname=${c.address}`,
        `listen.port=${ROLE_PORTS.storage}`,
        `vatKeyFile=${c.vatKeyFile}`,
        "disk.kind=local",
        `disk.path=${c.roleDir}/disk`,
        `zone.storageNodes=${vatIds(c, ["storage"])}`,
        `zone.presenters=${vatIds(c, ["worker", "coordinator", "shell"])}`,
        `zone.rootOpeners=${vatIds(c, ["coordinator", "shell"])}`,
      ],
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
        // Simulated machines, and whole clusters, may share one host: each
        // worker needs its own cgroup and uid range there.
        `cgroupName=${
          options.workerCgroupName ?? `blackrock-worker-${c.machine}`
        }`,
        `uidFirst=${options.workerUidFirst}`,
        `uidCount=${options.workerUidCount ?? 4096}`,
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
    // Plain HTTP on the role's port (no nginx: TLS would end in front of
    // the cluster); shells register on the control port. Host names and
    // the token come from the master's settings.
    gateway: {
      entry: entry("gateway"),
      port: ROLE_PORTS.gateway,
      permissions: (c) => {
        const p = base(options, c, ROLE_PORTS.gateway);
        const own = c.address.includes(":") ? `[${c.address}]` : c.address;
        return {
          ...p,
          net: [...p.net!, `${own}:${GATEWAY_CONTROL_PORT}`],
          run: ["nginx", "openssl"],
          sys: ["uid", "hostname"],
        };
      },
      overrides: (c) => [
        `listen.hostname=${c.address}`,
        `listen.port=${ROLE_PORTS.gateway}`,
        `control.hostname=${c.address}`,
        `control.port=${GATEWAY_CONTROL_PORT}`,
        "nginx.enabled=false",
        `nginx.dir=${c.roleDir}/nginx`,
      ],
    },
    // SQLite in the shells' shared folder (or the role's own); the
    // directory's coordinators place its grains, and it registers with the
    // directory's first gateway, restarting when those move. The token and
    // public URL come from the master's settings.
    shell: {
      entry: entry("shell"),
      port: ROLE_PORTS.shell,
      waitFor: ["gateway", "worker", "coordinator"],
      followsDirectory: true,
      permissions: (c) => ({
        ...base(options, c, ROLE_PORTS.shell),
        ...(options.shellDataDir === undefined ? {} : {
          read: [...base(options, c, 0).read!, options.shellDataDir],
          write: [...base(options, c, 0).write!, options.shellDataDir],
        }),
        run: ["xz"],
        // The MongoDB driver's own settings and the variables its handshake
        // reads (as services/shell/role.ts lists); no credentials.
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
      }),
      overrides: (c) => {
        const gateway = firstVat(c, "gateway");
        return [
          `listen.hostname=${c.address}`,
          `listen.port=${ROLE_PORTS.shell}`,
          "database.kind=sqlite",
          `database.path=${options.shellDataDir ?? c.roleDir}/shell.sqlite`,
          `packageDir=${options.shellDataDir ?? c.roleDir}/packages`,
          "runner.kind=cluster",
          `runner.coordinators=${
            JSON.stringify(
              (c.directory?.vats ?? []).filter((v) => v.role === "coordinator")
                .map((v) => hostPortOf(v.address)),
            )
          }`,
          `runner.directoryFile=${c.directoryFile}`,
          `gateway.control.hostname=${gateway?.hostname}`,
          `gateway.control.port=${GATEWAY_CONTROL_PORT}`,
        ];
      },
    },
  };
}
