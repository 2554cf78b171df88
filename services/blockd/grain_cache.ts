/**
 * The local cache of one grain's volume, and the block device the NBD
 * server exports for it.
 *
 * Data lives in a sparse cache file the size of the volume; three bitmaps
 * say which blocks the cache holds (present), which are newer than the
 * store (dirty), and which dirty blocks are known to be all zeros (zeroed,
 * so that write-back frees them in the store without reading them).
 *
 * Reads of missing blocks fetch them from the store, contiguous missing
 * blocks in one call plus a little read-ahead. Writes land in the cache and
 * are marked dirty. A write-back round copies dirty blocks to the store;
 * FLUSH and FUA run a round and then sync the store, so they complete only
 * when the data is durable there. A timer runs a round whenever dirty data
 * is older than the configured window.
 *
 * The present bitmap is saved in a state file with a "clean" mark when the
 * cache closes, after the cache file is synced. Opening clears the mark, so
 * after a crash the cache is dropped and refilled from the store: the cache
 * file and the bitmaps cannot be trusted to agree then, and everything that
 * was flushed is in the store anyway. The cache is also dropped when
 * somebody else held the volume's lease since it was saved (the lease
 * epoch moved by more than our own acquisition).
 *
 * @module
 */
import { NativeFile, punchBlocks } from "../../ffi/native.ts";
import type { Logger } from "../runtime/log.ts";
import { Bitmap } from "./bitmap.ts";
import { BLOCK_BYTES, type BlockStore } from "./block_store.ts";
import { readFileIfExists, writeFileDurably } from "./file_io.ts";
import type { BlockDevice } from "./nbd_server.ts";

/** Tuning of a {@link GrainCache}. */
export interface GrainCacheOptions {
  /** Dirty data older than this is written back and synced. */
  maxUnflushedMs: number;
  /** A write-back round starts early once this many blocks are dirty. */
  maxDirtyBlocks: number;
  /** Blocks fetched beyond a missed read, if they are missing too. */
  readAheadBlocks: number;
  /** Longest single store read or write, in blocks. */
  maxRunBlocks: number;
  /** Write-back store calls in flight at once. */
  writebackConcurrency: number;
}

/** Defaults: a one-second window, 64 MiB of dirty data at most, 128 KiB
 * read-ahead, 1 MiB store calls, four write-back calls in flight. */
export const DEFAULT_CACHE_OPTIONS: GrainCacheOptions = {
  maxUnflushedMs: 1_000,
  maxDirtyBlocks: 16_384,
  readAheadBlocks: 32,
  maxRunBlocks: 256,
  writebackConcurrency: 4,
};

/** Counters a test or a benchmark can read. */
export interface CacheStats {
  presentBlocks: number;
  dirtyBlocks: number;
  fetchedBlocks: number;
  storeReads: number;
  writtenBackBlocks: number;
  zeroedBackBlocks: number;
  flushes: number;
}

const STATE_MAGIC = 0x42524331; // "BRC1"
/** Copies at least this large go to the thread pool (measured: a cold
 * sequential read spent most of its time in synchronous cache writes). */
const ASYNC_COPY_BYTES = 128 * 1024;
const STATE_HEADER_BYTES = 24;

/** Called with every range of blocks a client reads. */
export type ReadObserver = (firstBlock: number, count: number) => void;

/** See the module documentation. */
export class GrainCache implements BlockDevice {
  readonly sizeBytes: number;
  readonly sizeBlocks: number;
  readonly #store: BlockStore;
  readonly #options: GrainCacheOptions;
  readonly #log: Logger;
  readonly #cachePath: string;
  readonly #statePath: string;
  /** For truncating and syncing. */
  readonly #file: Deno.FsFile;
  /** For data: positional, and off the event loop when large. */
  readonly #data: NativeFile;
  readonly #epoch: number;
  readonly #present: Bitmap;
  readonly #dirty: Bitmap;
  readonly #zeroed: Bitmap;
  /** Fetches in flight, by block. */
  readonly #fetching = new Map<number, Promise<void>>();
  #round: Promise<void> | null = null;
  #timer: ReturnType<typeof setInterval> | undefined;
  #dirtySinceMs: number | null = null;
  #closed = false;
  #observer: ReadObserver | undefined;
  readonly #stats = {
    fetchedBlocks: 0,
    storeReads: 0,
    writtenBackBlocks: 0,
    zeroedBackBlocks: 0,
    flushes: 0,
  };

  private constructor(
    store: BlockStore,
    file: Deno.FsFile,
    paths: { cache: string; state: string },
    epoch: number,
    present: Bitmap,
    options: GrainCacheOptions,
    log: Logger,
  ) {
    this.#store = store;
    this.sizeBlocks = store.sizeBlocks;
    this.sizeBytes = store.sizeBlocks * BLOCK_BYTES;
    this.#file = file;
    this.#data = NativeFile.open(paths.cache, true);
    this.#cachePath = paths.cache;
    this.#statePath = paths.state;
    this.#epoch = epoch;
    this.#present = present;
    this.#dirty = new Bitmap(store.sizeBlocks);
    this.#zeroed = new Bitmap(store.sizeBlocks);
    this.#options = options;
    this.#log = log;
  }

  /**
   * Opens (or creates) the cache of `grain` in `cacheDirectory` for a
   * store whose lease this process holds with `epoch`.
   */
  static async open(options: {
    grain: string;
    cacheDirectory: string;
    store: BlockStore;
    epoch: number;
    log: Logger;
    tuning?: Partial<GrainCacheOptions>;
  }): Promise<GrainCache> {
    const { grain, cacheDirectory, store, epoch, log } = options;
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(grain) || grain.startsWith(".")) {
      throw new RangeError(`grain name ${JSON.stringify(grain)} is not safe`);
    }
    await Deno.mkdir(cacheDirectory, { recursive: true });
    const paths = {
      cache: `${cacheDirectory}/${grain}.cache`,
      state: `${cacheDirectory}/${grain}.state`,
    };
    const sizeBlocks = store.sizeBlocks;
    const saved = await readFileIfExists(paths.state);
    let present = loadState(saved, sizeBlocks, epoch);
    const file = await Deno.open(paths.cache, {
      read: true,
      write: true,
      create: true,
    });
    if (present === null) {
      // Dropping the cache: truncating to zero frees its space at once.
      await file.truncate(0);
      present = new Bitmap(sizeBlocks);
      log.info("cache-dropped", { grain, hadState: saved !== null });
    } else {
      log.info("cache-reused", { grain, presentBlocks: present.count });
    }
    await file.truncate(sizeBlocks * BLOCK_BYTES);
    const cache = new GrainCache(
      store,
      file,
      paths,
      epoch,
      present,
      { ...DEFAULT_CACHE_OPTIONS, ...options.tuning },
      log.with({ grain }),
    );
    await cache.#saveState(false);
    cache.#timer = setInterval(
      () => cache.#tick(),
      Math.max(10, Math.floor(cache.#options.maxUnflushedMs / 2)),
    );
    return cache;
  }

  /** Registers the one function told of every client read. */
  observeReads(observer: ReadObserver | undefined): void {
    this.#observer = observer;
  }

  stats(): CacheStats {
    return {
      presentBlocks: this.#present.count,
      dirtyBlocks: this.#dirty.count,
      ...this.#stats,
    };
  }

  async read(offset: number, target: Uint8Array): Promise<void> {
    const first = Math.floor(offset / BLOCK_BYTES);
    const end = Math.ceil((offset + target.length) / BLOCK_BYTES);
    if (await this.#readMissing(offset, target, first, end)) {
      this.#observer?.(first, end - first);
      return;
    }
    await this.ensurePresent(first, end, this.#options.readAheadBlocks);
    if (target.length >= ASYNC_COPY_BYTES) {
      await this.#data.readAtAsync(target, offset);
    } else {
      this.#data.readAt(target, offset);
    }
    this.#observer?.(first, end - first);
  }

  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    const first = Math.floor(offset / BLOCK_BYTES);
    const end = Math.ceil((offset + data.length) / BLOCK_BYTES);
    await this.#fetchPartialEnds(offset, data.length);
    await this.#awaitFetches(first, end);
    this.#data.writeAt(data, offset);
    this.#markWritten(first, end, false);
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number, fua: boolean): Promise<void> {
    const first = Math.floor(offset / BLOCK_BYTES);
    const end = Math.ceil((offset + length) / BLOCK_BYTES);
    const fullFirst = Math.ceil(offset / BLOCK_BYTES);
    const fullEnd = Math.floor((offset + length) / BLOCK_BYTES);
    await this.#fetchPartialEnds(offset, length);
    await this.#awaitFetches(first, end);
    if (fullFirst >= fullEnd) {
      this.#data.writeAt(new Uint8Array(length), offset);
      this.#markWritten(first, end, false);
    } else {
      const headBytes = fullFirst * BLOCK_BYTES - offset;
      const tailBytes = offset + length - fullEnd * BLOCK_BYTES;
      if (headBytes > 0) this.#data.writeAt(new Uint8Array(headBytes), offset);
      if (tailBytes > 0) {
        this.#data.writeAt(new Uint8Array(tailBytes), fullEnd * BLOCK_BYTES);
      }
      // Whole blocks become holes in the cache file and are freed in the
      // store by write-back without being read.
      punchBlocks(this.#cachePath, fullFirst, fullEnd - fullFirst);
      this.#markWritten(first, fullFirst, false);
      this.#markWritten(fullFirst, fullEnd, true);
      this.#markWritten(fullEnd, end, false);
    }
    if (fua) await this.flush();
  }

  /** Writes every dirty block back and syncs the store. */
  async flush(): Promise<void> {
    this.#stats.flushes++;
    await this.#writeBackAll();
    await this.#store.sync();
    if (this.#dirty.count === 0) this.#dirtySinceMs = null;
  }

  /**
   * Makes blocks `[first, end)` present, fetching missing ones from the
   * store in coalesced runs. A run that starts here may grow by up to
   * `readAhead` blocks past `end` while those are missing too.
   */
  async ensurePresent(
    first: number,
    end: number,
    readAhead = 0,
  ): Promise<void> {
    let index = this.#present.nextClear(first, end);
    if (index >= end) return;
    const waits: Promise<void>[] = [];
    const limit = Math.min(this.sizeBlocks, end + readAhead);
    while (index < end) {
      if (this.#present.get(index)) {
        index = this.#present.nextClear(index, end);
        continue;
      }
      const pending = this.#fetching.get(index);
      if (pending !== undefined) {
        waits.push(pending);
        index++;
        continue;
      }
      let runEnd = index + 1;
      while (
        runEnd < limit && runEnd - index < this.#options.maxRunBlocks &&
        !this.#present.get(runEnd) && !this.#fetching.has(runEnd)
      ) runEnd++;
      const fetch = this.#fetch(index, runEnd - index);
      for (let i = index; i < runEnd; i++) this.#fetching.set(i, fetch);
      waits.push(fetch);
      index = runEnd;
    }
    await Promise.all(waits);
  }

  /** Stops the timer, flushes, syncs the cache file and saves the state
   * with the clean mark. The store is left open for its owner. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await Promise.allSettled([...new Set(this.#fetching.values())]);
    await this.flush();
    await this.#file.syncData();
    await this.#saveState(true);
    this.#data.close();
    this.#file.close();
  }

  /** Drops the cache without writing anything back, as a crash would;
   * only for tests that simulate one inside a process. */
  abandon(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    // A copy on the thread pool may still use the descriptor: close only
    // after the fetches settle, so that a reused number is never written.
    Promise.allSettled([...new Set(this.#fetching.values())]).then(() => {
      this.#data.close();
      this.#file.close();
    });
  }

  /** Fetches blocks into the cache. `received`, when given, hears of the
   * store's data as soon as it arrives, before it is in the cache. */
  async #fetch(
    first: number,
    count: number,
    received?: (data: Uint8Array) => void,
  ): Promise<void> {
    try {
      this.#stats.storeReads++;
      const data = await this.#store.readBlocks(first, count);
      received?.(data);
      if (this.#closed) return;
      // Client writes wait for fetches of their blocks (#awaitFetches),
      // so nothing becomes present meanwhile; the check is a safeguard.
      let index = this.#present.nextClear(first, first + count);
      while (index < first + count) {
        const runEnd = this.#present.nextSet(index, first + count);
        const run = data.subarray(
          (index - first) * BLOCK_BYTES,
          (runEnd - first) * BLOCK_BYTES,
        );
        if (run.length >= ASYNC_COPY_BYTES) {
          await this.#data.writeAtAsync(run, index * BLOCK_BYTES);
        } else {
          this.#data.writeAt(run, index * BLOCK_BYTES);
        }
        if (this.#closed) return;
        this.#present.setRange(index, runEnd);
        this.#stats.fetchedBlocks += runEnd - index;
        index = this.#present.nextClear(runEnd, first + count);
      }
    } finally {
      for (let i = first; i < first + count; i++) this.#fetching.delete(i);
    }
  }

  /**
   * The cold path: when no block of the read is in the cache or on its
   * way, one fetch covers it (and the read-ahead), and the reply is copied
   * from the store's data at once instead of waiting for the cache write
   * and reading the cache back. Returns false when the path does not
   * apply.
   */
  async #readMissing(
    offset: number,
    target: Uint8Array,
    first: number,
    end: number,
  ): Promise<boolean> {
    const maxRun = this.#options.maxRunBlocks;
    if (end - first > maxRun || this.#present.nextSet(first, end) < end) {
      return false;
    }
    for (let i = first; i < end; i++) {
      if (this.#fetching.has(i)) return false;
    }
    let runEnd = end;
    const limit = Math.min(
      this.sizeBlocks,
      end + this.#options.readAheadBlocks,
      first + maxRun,
    );
    while (
      runEnd < limit && !this.#present.get(runEnd) &&
      !this.#fetching.has(runEnd)
    ) runEnd++;
    const arrived = Promise.withResolvers<Uint8Array>();
    const fetch = this.#fetch(first, runEnd - first, arrived.resolve);
    for (let i = first; i < runEnd; i++) this.#fetching.set(i, fetch);
    // A failed fetch rejects `fetch` before `arrived` resolves.
    fetch.catch((error) => arrived.reject(error));
    const data = await arrived.promise;
    const start = offset - first * BLOCK_BYTES;
    target.set(data.subarray(start, start + target.length));
    return true;
  }

  /** Waits for fetches in flight over `[first, end)`: their data is older
   * than the write about to land and must not be copied over it. */
  async #awaitFetches(first: number, end: number): Promise<void> {
    if (this.#fetching.size === 0) return;
    const waits = new Set<Promise<void>>();
    for (let i = first; i < end; i++) {
      const pending = this.#fetching.get(i);
      if (pending !== undefined) waits.add(pending);
    }
    if (waits.size > 0) await Promise.allSettled(waits);
  }

  /** A write that covers a block only in part needs the rest of it. */
  async #fetchPartialEnds(offset: number, length: number): Promise<void> {
    const end = offset + length;
    const head = Math.floor(offset / BLOCK_BYTES);
    const tail = Math.floor((end - 1) / BLOCK_BYTES);
    const waits: Promise<void>[] = [];
    if (offset % BLOCK_BYTES !== 0 || length < BLOCK_BYTES) {
      waits.push(this.ensurePresent(head, head + 1));
    }
    if (end % BLOCK_BYTES !== 0 && tail !== head) {
      waits.push(this.ensurePresent(tail, tail + 1));
    }
    await Promise.all(waits);
  }

  #markWritten(first: number, end: number, zeroed: boolean): void {
    if (first >= end) return;
    this.#present.setRange(first, end);
    this.#dirty.setRange(first, end);
    if (zeroed) this.#zeroed.setRange(first, end);
    else this.#zeroed.clearRange(first, end);
    this.#dirtySinceMs ??= Date.now();
    // One early round at a time: queueing a round per write past the
    // threshold would bury the event loop in rounds.
    if (
      this.#dirty.count >= this.#options.maxDirtyBlocks && this.#round === null
    ) {
      this.#writeBackAll().catch((error) =>
        this.#log.warn("writeback-failed", { error })
      );
    }
  }

  #tick(): void {
    if (this.#closed || this.#dirtySinceMs === null) return;
    if (this.#round !== null) return;
    if (Date.now() - this.#dirtySinceMs < this.#options.maxUnflushedMs / 2) {
      return;
    }
    this.flush().catch((error) =>
      this.#log.warn("writeback-failed", { error })
    );
  }

  /** Runs write-back rounds one at a time: a caller waits for the round in
   * progress (it may have taken blocks this caller needs) and then runs its
   * own, which sees every block dirtied before the call. */
  async #writeBackAll(): Promise<void> {
    while (this.#round !== null) {
      await this.#round.catch(() => {});
    }
    const round = this.#writeBackRound();
    this.#round = round;
    try {
      await round;
    } finally {
      if (this.#round === round) this.#round = null;
    }
  }

  /** Copies every dirty block to the store, a few runs in flight at once
   * (a remote store's latency would otherwise bound the rate). Rejects
   * with the first failure, after the other runs settled; failed runs are
   * dirty again. */
  async #writeBackRound(): Promise<void> {
    const maxRun = this.#options.maxRunBlocks;
    const inFlight = new Set<Promise<void>>();
    let failure: unknown = null;
    let turnStartedMs = performance.now();
    let index = this.#dirty.nextSet(0);
    while (index < this.sizeBlocks && failure === null) {
      const zeroed = this.#zeroed.get(index);
      let end = index + 1;
      while (
        end < this.sizeBlocks && end - index < maxRun &&
        this.#dirty.get(end) && this.#zeroed.get(end) === zeroed
      ) end++;
      // Taken now, in the same turn as the read below: a write that lands
      // while the store call is in flight dirties the blocks again.
      this.#dirty.clearRange(index, end);
      const data = zeroed ? null : new Uint8Array((end - index) * BLOCK_BYTES);
      if (data !== null) this.#data.readAt(data, index * BLOCK_BYTES);
      const [runFirst, runEnd] = [index, end];
      const call: Promise<void> = this.#storeRun(runFirst, runEnd, data)
        .catch((error) => {
          for (let i = runFirst; i < runEnd; i++) {
            if (!this.#dirty.get(i)) {
              this.#dirty.set(i);
              if (zeroed) this.#zeroed.set(i);
            }
          }
          failure ??= error;
        })
        .finally(() => inFlight.delete(call));
      inFlight.add(call);
      if (inFlight.size >= this.#options.writebackConcurrency) {
        await Promise.race(inFlight);
      }
      index = this.#dirty.nextSet(end);
      // Store calls may finish at once (a local store): give waiting client
      // requests a turn every few milliseconds of write-back.
      if (performance.now() - turnStartedMs > 2) {
        await new Promise((resolve) => setTimeout(resolve, 0));
        turnStartedMs = performance.now();
      }
    }
    await Promise.all(inFlight);
    if (failure !== null) throw failure;
  }

  /** Writes one run to the store; all-zero blocks inside a data run are
   * zeroed (freed) in the store rather than written. */
  async #storeRun(
    first: number,
    end: number,
    data: Uint8Array | null,
  ): Promise<void> {
    if (data === null) {
      await this.#store.zeroBlocks(first, end - first);
      this.#stats.zeroedBackBlocks += end - first;
      return;
    }
    let index = first;
    while (index < end) {
      const zero = isZeroBlock(data, index - first);
      let runEnd = index + 1;
      while (runEnd < end && isZeroBlock(data, runEnd - first) === zero) {
        runEnd++;
      }
      if (zero) {
        await this.#store.zeroBlocks(index, runEnd - index);
        this.#stats.zeroedBackBlocks += runEnd - index;
      } else {
        await this.#store.writeBlocks(
          index,
          data.subarray(
            (index - first) * BLOCK_BYTES,
            (runEnd - first) * BLOCK_BYTES,
          ),
        );
        this.#stats.writtenBackBlocks += runEnd - index;
      }
      index = runEnd;
    }
  }

  async #saveState(clean: boolean): Promise<void> {
    const state = new Uint8Array(
      STATE_HEADER_BYTES + this.#present.bytes.length,
    );
    const view = new DataView(state.buffer);
    view.setUint32(0, STATE_MAGIC);
    view.setUint32(4, clean ? 1 : 0);
    view.setFloat64(8, this.#epoch);
    view.setFloat64(16, this.sizeBlocks);
    state.set(this.#present.bytes, STATE_HEADER_BYTES);
    await writeFileDurably(this.#statePath, state);
  }
}

/** The present bitmap of a cache saved cleanly under the lease epoch just
 * before ours, or null when the cache must be dropped. */
function loadState(
  state: Uint8Array | null,
  sizeBlocks: number,
  epoch: number,
): Bitmap | null {
  if (state === null || state.length < STATE_HEADER_BYTES) return null;
  const view = new DataView(state.buffer, state.byteOffset, state.length);
  if (view.getUint32(0) !== STATE_MAGIC || view.getUint32(4) !== 1) {
    return null;
  }
  if (view.getFloat64(8) + 1 !== epoch) return null;
  if (view.getFloat64(16) !== sizeBlocks) return null;
  const bytes = state.subarray(STATE_HEADER_BYTES);
  if (bytes.length !== Math.ceil(sizeBlocks / 8)) return null;
  return new Bitmap(sizeBlocks, bytes);
}

/** Whether block `blockIndex` of `data` (4-byte aligned) is all zeros;
 * compares 4 bytes at a time, about a microsecond per block. */
export function isZeroBlock(data: Uint8Array, blockIndex: number): boolean {
  const words = new Uint32Array(
    data.buffer,
    data.byteOffset + blockIndex * BLOCK_BYTES,
    BLOCK_BYTES / 4,
  );
  for (let i = 0; i < words.length; i++) {
    if (words[i] !== 0) return false;
  }
  return true;
}
