/**
 * Entry point of the block daemon role on a worker machine.
 *
 * Serves the grains named in its configuration, each on
 * `<socketDirectory>/<grain>.sock`, over volumes in a local directory
 * store (`store.kind = "directory"`: `<store.root>/<grain>/`, created with
 * `sizeBytes` when missing).
 *
 * Run with: `deno run --allow-read=DIRS --allow-write=DIRS
 * --allow-net=unix:SOCKETS --allow-ffi=ffi/build/libblackrock.so
 * services/blockd/main.ts --config FILE`.
 *
 * @module
 */
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import { BLOCK_BYTES } from "./block_store.ts";
import { BlockDaemon } from "./daemon.ts";
import { DirectoryBlockStore } from "./directory_store.ts";

/** The daemon's configuration. */
export const BlockdConfig = z.strictObject({
  socketDirectory: z.string().min(1),
  cacheDirectory: z.string().min(1),
  /** This worker's name in volume leases. */
  holder: z.string().min(1),
  store: z.strictObject({
    kind: z.literal("directory"),
    root: z.string().min(1),
    leaseTtlMs: z.number().int().positive().default(10_000),
  }),
  grains: z.array(z.strictObject({
    name: z.string().regex(/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$/),
    /** Size of the volume if it has to be created. */
    sizeBytes: z.number().int().positive().multipleOf(BLOCK_BYTES),
  })),
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
      const daemon = new BlockDaemon({
        socketDirectory: config.socketDirectory,
        cacheDirectory: config.cacheDirectory,
        holder: config.holder,
        leaseWaitMs: config.leaseWaitMs,
        leaseRenewMs: Math.max(100, Math.floor(config.store.leaseTtlMs / 3)),
        accessLogRecordMs: config.accessLog.recordMs,
        accessLogMaxBlocks: config.accessLog.maxBlocks,
        prefetchConcurrency: config.accessLog.prefetchConcurrency,
        cache: config.cache,
        log,
        openStore: async (grain) => {
          const root = `${config.store.root}/${grain}`;
          if (!(await DirectoryBlockStore.exists(root))) {
            await DirectoryBlockStore.create(
              root,
              sizes.get(grain)! / BLOCK_BYTES,
            );
            log.info("volume-created", { grain, sizeBytes: sizes.get(grain) });
          }
          return DirectoryBlockStore.open(root, {
            leaseTtlMs: config.store.leaseTtlMs,
          });
        },
      });
      try {
        for (const grain of config.grains) await daemon.startGrain(grain.name);
      } catch (error) {
        await daemon.stop().catch(() => {});
        throw error;
      }
      return { stop: () => daemon.stop() };
    },
  });
}
