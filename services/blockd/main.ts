/**
 * Entry point of the block daemon role on a worker machine.
 *
 * Serves the grains named in its configuration, each on
 * `<socketDirectory>/<grain>.sock`, over volumes in one of two stores:
 *
 * - `store.kind = "directory"`: a local directory store,
 *   `<store.root>/<grain>/`, created with `sizeBytes` when missing (tests,
 *   single machine);
 * - `store.kind = "storage"`: the storage role's Volumes over RPC on the
 *   sealed UDP network. Each grain names its Volume by a SturdyRef
 *   (`volumeRef`, base64), saved by whoever created the volume; the
 *   daemon's vat (`store.vatKeyFile`) must be a presenter of the storage
 *   zone. The configuration file holds those refs: keep it root-only.
 *
 * Run with: `deno run --allow-read=DIRS --allow-write=DIRS
 * --allow-net=unix:SOCKETS[,STORAGE_HOSTS] --allow-ffi=ffi/build/libblackrock.so
 * services/blockd/main.ts --config FILE` (for the storage store, the read
 * list also needs sealedUdpPermissions().read and the key file).
 *
 * @module
 */
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import { BLOCK_BYTES } from "./block_store.ts";
import { ControlServer } from "./control.ts";
import { BlockDaemon, type StoreOpener } from "./daemon.ts";
import { DirectoryBlockStore } from "./directory_store.ts";
import {
  decodeVolumeRef,
  StorageNodes,
  VolumeRefError,
} from "./storage_nodes.ts";

const hex32 = z.string().regex(/^[0-9a-f]{64}$/, "64 lowercase hex digits");

/** The daemon's configuration. */
export const BlockdConfig = z.strictObject({
  socketDirectory: z.string().min(1),
  cacheDirectory: z.string().min(1),
  /** This worker's name in volume leases. */
  holder: z.string().min(1),
  store: z.discriminatedUnion("kind", [
    z.strictObject({
      kind: z.literal("directory"),
      root: z.string().min(1),
      leaseTtlMs: z.number().int().positive().default(10_000),
    }),
    z.strictObject({
      kind: z.literal("storage"),
      /** The daemon vat's ed25519 seed (hex), a storage zone presenter. */
      vatKeyFile: z.string().min(1),
      nodes: z.array(z.strictObject({
        vatId: hex32,
        /** UDP `host:port`. */
        address: z.string().min(1),
      })).min(1),
      /** Local UDP address of the daemon's vat. */
      bind: z.string().default("127.0.0.1:0"),
      /** How long a silent storage node is waited for. */
      graceMs: z.number().int().positive().default(5_000),
      /** How often the lease is checked (the Volume's lease has no TTL). */
      leaseCheckMs: z.number().int().positive().default(3_000),
    }),
  ]),
  grains: z.array(z.strictObject({
    name: z.string().regex(/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$/),
    /** Size of the export (and of the volume if it has to be created). */
    sizeBytes: z.number().int().positive().multipleOf(BLOCK_BYTES),
    /** With the storage store: the Volume's SturdyRef, base64. */
    volumeRef: z.string().min(1).optional(),
  })),
  /** A control socket through which the worker attaches and detaches
   * volumes at run time (control.ts); exports then live on
   * `<socketDirectory>/slot-N.sock`, N < slots. */
  control: z.strictObject({
    socketPath: z.string().min(1),
    slots: z.number().int().positive().max(4096),
  }).optional(),
  leaseWaitMs: z.number().int().nonnegative().default(30_000),
  cache: z.strictObject({
    maxUnflushedMs: z.number().int().positive().default(1_000),
    maxDirtyBlocks: z.number().int().positive().default(16_384),
    readAheadBlocks: z.number().int().nonnegative().default(32),
    maxRunBlocks: z.number().int().positive().max(4096).default(256),
    writebackConcurrency: z.number().int().positive().max(64).default(4),
  }).default({
    maxUnflushedMs: 1_000,
    maxDirtyBlocks: 16_384,
    readAheadBlocks: 32,
    maxRunBlocks: 256,
    writebackConcurrency: 4,
  }),
  accessLog: z.strictObject({
    recordMs: z.number().int().positive().default(10_000),
    maxBlocks: z.number().int().positive().default(65_536),
    prefetchConcurrency: z.number().int().positive().default(4),
  }).default({ recordMs: 10_000, maxBlocks: 65_536, prefetchConcurrency: 4 }),
});

/** Parsed configuration of the daemon. */
export type BlockdConfig = z.infer<typeof BlockdConfig>;

if (import.meta.main) {
  await runService({
    role: "blockd",
    config: BlockdConfig,
    stopTimeoutMs: 60_000,
    async start(config, log) {
      const sizes = new Map(config.grains.map((g) => [g.name, g.sizeBytes]));
      const refs = new Map<string, Uint8Array>();
      const store = config.store;
      let openStore: StoreOpener;
      let leaseRenewMs: number;
      let nodes: StorageNodes | undefined;
      if (store.kind === "directory") {
        leaseRenewMs = Math.max(100, Math.floor(store.leaseTtlMs / 3));
        openStore = async (grain) => {
          const root = `${store.root}/${grain}`;
          if (!(await DirectoryBlockStore.exists(root))) {
            await DirectoryBlockStore.create(
              root,
              sizes.get(grain)! / BLOCK_BYTES,
            );
            log.info("volume-created", {
              grain,
              sizeBytes: sizes.get(grain),
            });
          }
          return DirectoryBlockStore.open(root, {
            leaseTtlMs: store.leaseTtlMs,
          });
        };
      } else {
        // Every ref is checked before anything starts: a typo fails the
        // start with the grain's name, not a half-started daemon.
        for (const grain of config.grains) {
          if (grain.volumeRef === undefined) {
            throw new VolumeRefError(
              `grain ${grain.name} has no volumeRef (the storage store needs one)`,
            );
          }
          refs.set(grain.name, decodeVolumeRef(grain.volumeRef));
        }
        leaseRenewMs = store.leaseCheckMs;
        const opened = await StorageNodes.open(store);
        nodes = opened;
        openStore = (grain) =>
          opened.openVolume(grain, refs.get(grain)!, sizes.get(grain)!);
        log.info("storage-nodes", { nodes: store.nodes.length });
      }
      const daemon = new BlockDaemon({
        socketDirectory: config.socketDirectory,
        cacheDirectory: config.cacheDirectory,
        holder: config.holder,
        leaseWaitMs: config.leaseWaitMs,
        leaseRenewMs,
        accessLogRecordMs: config.accessLog.recordMs,
        accessLogMaxBlocks: config.accessLog.maxBlocks,
        prefetchConcurrency: config.accessLog.prefetchConcurrency,
        cache: config.cache,
        log,
        openStore,
      });
      let control: Deno.Listener | undefined;
      try {
        for (const grain of config.grains) await daemon.startGrain(grain.name);
        if (config.control) {
          await Deno.remove(config.control.socketPath).catch(() => {});
          control = Deno.listen({
            transport: "unix",
            path: config.control.socketPath,
          });
          await Deno.chmod(config.control.socketPath, 0o600);
          new ControlServer({
            daemon,
            slots: config.control.slots,
            register: (name, sizeBytes, volumeRef) => {
              const ref = decodeVolumeRef(volumeRef);
              sizes.set(name, sizeBytes);
              refs.set(name, ref);
            },
            unregister: (name) => {
              sizes.delete(name);
              refs.delete(name);
            },
            log,
          }).serve(control).catch((error) =>
            log.error("control-failed", { error })
          );
        }
      } catch (error) {
        control?.close();
        await daemon.stop().catch(() => {});
        await nodes?.close();
        throw error;
      }
      return {
        async stop() {
          try {
            control?.close();
            await daemon.stop();
          } finally {
            await nodes?.close();
          }
        },
      };
    },
  });
}
