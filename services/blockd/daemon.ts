/**
 * The block daemon: one NBD export per grain, each on its own unix socket,
 * each backed by a {@link GrainCache} over the grain's volume in a
 * {@link BlockStore}. Starting a grain takes the volume's writer lease
 * (renewed in the background), opens the cache, starts prefetching the
 * blocks of the saved access log, and records a new access log during the
 * grain's first seconds.
 *
 * @module
 */
import type { Logger } from "../runtime/log.ts";
import {
  AccessLogError,
  AccessRecorder,
  type BlockRun,
  decodeAccessLog,
} from "./access_log.ts";
import type { BlockStore, Lease } from "./block_store.ts";
import {
  type CacheStats,
  GrainCache,
  type GrainCacheOptions,
} from "./grain_cache.ts";
import { NbdServer } from "./nbd_server.ts";

/** Opens the volume of a grain; the daemon closes it when the grain stops. */
export type StoreOpener = (grain: string) => Promise<BlockStore>;

/** Options of {@link BlockDaemon}. */
export interface BlockDaemonOptions {
  socketDirectory: string;
  cacheDirectory: string;
  /** Who takes the leases: a name unique to this worker. */
  holder: string;
  openStore: StoreOpener;
  /** How long to wait for another holder's lease to expire. */
  leaseWaitMs: number;
  /** How often the lease is renewed. */
  leaseRenewMs: number;
  /** How long after start reads are recorded into the access log. */
  accessLogRecordMs: number;
  /** Most distinct blocks an access log holds. */
  accessLogMaxBlocks: number;
  /** Runs of the access log fetched at once while prefetching. */
  prefetchConcurrency: number;
  cache?: Partial<GrainCacheOptions>;
  log: Logger;
}

/** A grain being served. */
export interface GrainExport {
  grain: string;
  socketPath: string;
  cache: GrainCache;
  /** Resolves when the saved access log has been prefetched (at once if
   * there was none). */
  prefetched: Promise<void>;
  /** Blocks the saved access log named. */
  prefetchBlocks: number;
  stats(): CacheStats;
}

interface RunningGrain extends GrainExport {
  store: BlockStore;
  lease: Lease;
  server: NbdServer;
  listener: Deno.Listener;
  serving: Promise<void>;
  renewTimer: ReturnType<typeof setInterval>;
  recordTimer: ReturnType<typeof setTimeout> | undefined;
  recorder: AccessRecorder | null;
  stopping: boolean;
}

/** See the module documentation. */
export class BlockDaemon {
  readonly #options: BlockDaemonOptions;
  readonly #grains = new Map<string, RunningGrain>();

  constructor(options: BlockDaemonOptions) {
    this.#options = options;
  }

  /** The socket path of a grain's export. */
  socketPath(grain: string): string {
    return `${this.#options.socketDirectory}/${grain}.sock`;
  }

  grain(grain: string): GrainExport | undefined {
    return this.#grains.get(grain);
  }

  /** Starts serving `grain`; resolves once its socket accepts clients. */
  async startGrain(grain: string): Promise<GrainExport> {
    if (this.#grains.has(grain)) {
      throw new Error(`grain ${grain} is already being served`);
    }
    const options = this.#options;
    const log = options.log.with({ grain });
    const store = await options.openStore(grain);
    let lease: Lease | undefined;
    let cache: GrainCache | undefined;
    try {
      lease = await store.acquireLease(options.holder, options.leaseWaitMs);
      cache = await GrainCache.open({
        grain,
        cacheDirectory: options.cacheDirectory,
        store,
        epoch: lease.epoch,
        log: options.log,
        tuning: options.cache,
      });
      // Only this user may reach the exports: whoever connects can write.
      await Deno.mkdir(options.socketDirectory, {
        recursive: true,
        mode: 0o700,
      });
      const socketPath = this.socketPath(grain);
      await Deno.remove(socketPath).catch(() => {});
      const listener = Deno.listen({ transport: "unix", path: socketPath });
      const server = new NbdServer([{ name: grain, device: cache }], log);

      const saved = await this.#loadAccessLog(store, log);
      const recorder = new AccessRecorder(
        store.sizeBlocks,
        options.accessLogMaxBlocks,
      );
      cache.observeReads((first, count) => recorder.record(first, count));
      const running: RunningGrain = {
        grain,
        socketPath,
        cache,
        store,
        lease,
        server,
        listener,
        serving: server.serve(listener),
        prefetched: Promise.resolve(),
        prefetchBlocks: saved.reduce((sum, run) => sum + run.count, 0),
        stats: () => cache!.stats(),
        renewTimer: setInterval(() => {
          lease!.renew().catch((error) =>
            log.error("lease-renew-failed", { error })
          );
        }, options.leaseRenewMs),
        recordTimer: undefined,
        recorder,
        stopping: false,
      };
      running.recordTimer = setTimeout(() => {
        this.#saveAccessLog(running, log).catch((error) =>
          log.warn("access-log-save-failed", { error })
        );
      }, options.accessLogRecordMs);
      running.prefetched = this.#prefetch(running, saved, log);
      this.#grains.set(grain, running);
      log.info("grain-serving", {
        socketPath,
        sizeBlocks: store.sizeBlocks,
        epoch: lease.epoch,
        prefetchBlocks: running.prefetchBlocks,
      });
      return running;
    } catch (error) {
      if (cache !== undefined) await cache.close().catch(() => {});
      if (lease !== undefined) await lease.release().catch(() => {});
      await store.close();
      throw error;
    }
  }

  /** Stops serving `grain`: closes its socket and connections, writes
   * everything back, saves the access log and the cache state, and gives
   * the lease up. */
  async stopGrain(grain: string): Promise<void> {
    const running = this.#grains.get(grain);
    if (running === undefined) return;
    running.stopping = true;
    this.#grains.delete(grain);
    clearTimeout(running.recordTimer);
    clearInterval(running.renewTimer);
    await running.server.close();
    await running.serving.catch(() => {});
    await running.prefetched.catch(() => {});
    await Deno.remove(running.socketPath).catch(() => {});
    const log = this.#options.log.with({ grain });
    try {
      await this.#saveAccessLog(running, log);
      await running.cache.close();
      await running.lease.release();
    } finally {
      await running.store.close();
    }
    log.info("grain-stopped", { ...running.cache.stats() });
  }

  /** Stops every grain. */
  async stop(): Promise<void> {
    const results = await Promise.allSettled(
      [...this.#grains.keys()].map((grain) => this.stopGrain(grain)),
    );
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  async #loadAccessLog(store: BlockStore, log: Logger): Promise<BlockRun[]> {
    const bytes = await store.readAccessLog();
    if (bytes === null) return [];
    try {
      return decodeAccessLog(bytes, store.sizeBlocks);
    } catch (error) {
      if (!(error instanceof AccessLogError)) throw error;
      log.warn("access-log-invalid", { error });
      return [];
    }
  }

  /** Saves what was recorded once, at the end of the window or at stop. */
  async #saveAccessLog(running: RunningGrain, log: Logger): Promise<void> {
    const recorder = running.recorder;
    if (recorder === null) return;
    running.recorder = null;
    running.cache.observeReads(undefined);
    if (recorder.blocks === 0) return;
    await running.store.writeAccessLog(recorder.encode());
    log.info("access-log-saved", { blocks: recorder.blocks });
  }

  /** Fetches the saved runs, a few at a time, in their recorded order.
   * Client reads are not held back: they fetch what they need themselves,
   * and the prefetch skips what is already there. */
  async #prefetch(
    running: RunningGrain,
    runs: BlockRun[],
    log: Logger,
  ): Promise<void> {
    if (runs.length === 0) return;
    const started = Date.now();
    let next = 0;
    const worker = async () => {
      while (next < runs.length && !running.stopping) {
        const run = runs[next++];
        await running.cache.ensurePresent(run.first, run.first + run.count);
      }
    };
    try {
      await Promise.all(
        Array.from({ length: this.#options.prefetchConcurrency }, worker),
      );
      log.info("prefetch-done", {
        blocks: running.prefetchBlocks,
        elapsedMs: Date.now() - started,
      });
    } catch (error) {
      log.warn("prefetch-failed", { error });
    }
  }
}
