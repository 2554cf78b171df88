/**
 * The worker role: runs grains in sandboxes and serves `Worker` and the
 * coordinators' `GrainHost` (proto/worker.capnp, proto/coordinator.capnp)
 * on its TCP port. With coordinators configured it sends each of them a
 * heartbeat with its load and its GrainHost about once a second.
 *
 * It runs as root (it maps grains to their own host uids and writes
 * cgroups) but with Deno permissions scoped to what it touches. Deno
 * refuses /sys to any scoped process, so cgroup files go through libc
 * (kernel_files.ts), hence --allow-ffi for libc only:
 *
 * ```sh
 * deno run --allow-net=127.0.0.1:7301,unix:/srv/worker/api.sock \
 *   --allow-read=/srv/worker --allow-write=/srv/worker \
 *   --allow-run=bash,chown,sync,xz --allow-ffi=/lib/x86_64-linux-gnu/libc.so.6 \
 *   --allow-sys=systemMemoryInfo,loadavg \
 *   services/worker/main.ts --set stateDir=/srv/worker
 * ```
 *
 * @module
 */
import { z } from "zod";
import * as rpc from "../rpc/mod.ts";
import { runService } from "../runtime/service.ts";
import type { Logger } from "../runtime/log.ts";
import { Coordinator, GrainHost } from "../../proto/gen/coordinator.ts";
import { GrainManager } from "./grains.ts";
import { listenWorker, workerCapability } from "./service.ts";
import { BlockVolumes } from "./volumes.ts";

const address = z.strictObject({
  hostname: z.string(),
  port: z.number().int().min(0).max(65535),
});

/** The worker's configuration. */
export const workerConfig = z.strictObject({
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(7301),
  }).default({ hostname: "127.0.0.1", port: 7301 }),
  /** Packages, grain volumes (when not NBD-mounted), the fd-3 socket. */
  stateDir: z.string().default(".data/worker"),
  /** Host uids reserved for grains: one per running grain. */
  uidFirst: z.number().int().min(1000).default(100_000),
  uidCount: z.number().int().min(1).max(65_536).default(4096),
  /** The worker's memory cgroup, under the memory controller's root. */
  cgroupName: z.string().regex(/^[A-Za-z0-9_.-]+$/).default(
    "blackrock-worker",
  ),
  defaultMemoryBytes: z.number().int().positive().default(256 << 20),
  tmpBytes: z.number().int().positive().default(16 << 20),
  /** Sandboxes kept ready per package (and command) once one of its
   * grains started, so that the next start skips building one. */
  warmPerPackage: z.number().int().min(0).max(16).default(1),
  /** Coordinators to send heartbeats to, and this worker's ID there. */
  coordinators: z.array(address).default([]),
  workerId: z.string().default(""),
  heartbeatIntervalMs: z.number().int().positive().default(1000),
  /** Grain volumes on storage (GrainSpec.volumeRef): the block daemon
   * this worker runs, its vat key (a presenter of the storage zone) and
   * the storage nodes. Without it, grains keep /var in directories. */
  blockd: z.strictObject({
    vatKeyFile: z.string().min(1),
    storageNodes: z.array(z.strictObject({
      vatId: z.string().regex(/^[0-9a-f]{64}$/),
      address: z.string().min(1),
    })).min(1),
    /** Volumes attached at once. */
    slots: z.number().int().positive().max(1024).default(64),
    defaultVolumeBytes: z.number().int().positive().multipleOf(4096)
      .default(1 << 30),
  }).optional(),
  /** Set by the machine agent; accepted so that the agent's standard
   * overrides do not make the configuration invalid. */
  vatKeyFile: z.string().optional(),
  directoryFile: z.string().optional(),
});

/** Sends heartbeats to one coordinator, reconnecting after failures. */
function heartbeatLoop(
  coordinator: { hostname: string; port: number },
  options: {
    workerId: string;
    intervalMs: number;
    manager: GrainManager;
    host: rpc.Cap;
    log: Logger;
  },
): { stop(): void } {
  let stopped = false;
  let connection: rpc.RpcConnection | undefined;
  const run = async () => {
    while (!stopped) {
      try {
        connection ??= new rpc.RpcConnection(await rpc.connectTcp(coordinator));
        const remote = rpc.bootstrap(connection, Coordinator);
        const machine = await options.manager.machineUsage();
        const grains = await options.manager.list();
        await remote.heartbeat((params) => {
          params.workerId = options.workerId;
          const load = params._initLoad();
          load.memoryBytes = BigInt(machine.memoryTotalBytes);
          load.cores = navigator.hardwareConcurrency;
          load.maxGrains = options.manager.options.uidCount;
          load.memoryUsedBytes = BigInt(machine.grainMemoryBytes);
          load.cpuLoad = machine.load1;
          load.grains = grains.filter((g) => g.state === "running").length;
          params.host = new GrainHost.Client(options.host);
        }).promise();
        rpc.release(remote);
      } catch (error) {
        options.log.warn("heartbeat-failed", { coordinator, error });
        connection?.close();
        connection = undefined;
      }
      await new Promise((resolve) => setTimeout(resolve, options.intervalMs));
    }
  };
  run();
  return {
    stop() {
      stopped = true;
      connection?.close();
    },
  };
}

if (import.meta.main) {
  await runService({
    role: "worker",
    config: workerConfig,
    async start(config, log) {
      const volumes = config.blockd
        ? await BlockVolumes.start({
          stateDir: config.stateDir,
          vatKeyFile: config.blockd.vatKeyFile,
          nodes: config.blockd.storageNodes,
          holder: config.workerId || `worker-${Deno.pid}`,
          slots: config.blockd.slots,
          defaultVolumeBytes: config.blockd.defaultVolumeBytes,
          log,
        })
        : undefined;
      const manager = await GrainManager.open({
        stateDir: config.stateDir,
        uidFirst: config.uidFirst,
        uidCount: config.uidCount,
        cgroupName: config.cgroupName,
        defaultMemoryBytes: config.defaultMemoryBytes,
        tmpBytes: config.tmpBytes,
        warmPerPackage: config.warmPerPackage,
        volumes,
      }, log);
      const cap = workerCapability(manager, log);
      const listener = listenWorker(cap, config.listen, log);
      log.info("listening", { ...config.listen, port: listener.port });
      const heartbeats = config.coordinators.map((coordinator) =>
        heartbeatLoop(coordinator, {
          workerId: config.workerId,
          intervalMs: config.heartbeatIntervalMs,
          manager,
          host: cap,
          log,
        })
      );
      return {
        async stop() {
          for (const heartbeat of heartbeats) heartbeat.stop();
          listener.close();
          cap.close();
          await manager.close();
          await volumes?.close();
        },
      };
    },
    stopTimeoutMs: 30_000,
  });
}
