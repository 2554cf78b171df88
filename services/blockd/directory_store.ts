/**
 * A block store kept in a local directory: a real, durable backend (every
 * sync is an fsync) for running the daemon on one machine and for
 * testing it without the storage service.
 *
 * Layout of the directory:
 * - `volume.json`: `{"sizeBlocks": N}`, written once at creation;
 * - `blocks`: a sparse file of N blocks; zeroed blocks are punched holes,
 *   so the file's allocated size is the volume's used space;
 * - `lease.json`: holder, epoch and expiry of the writer lease;
 * - `access_log`: the access log object.
 *
 * Several processes may open the same directory (a new daemon while the
 * old one dies); the lease decides who writes. Every write re-reads the
 * lease file, so a daemon that lost its lease cannot write behind the new
 * holder's back.
 *
 * @module
 */
import { NativeFile, punchBlocks } from "../../ffi/native.ts";
import {
  BLOCK_BYTES,
  type BlockStore,
  checkBlockRange,
  type Lease,
  LeaseError,
} from "./block_store.ts";
import { readFileIfExists, writeFileDurably } from "./file_io.ts";

interface LeaseRecord {
  holder: string;
  epoch: number;
  expiresAtMs: number;
}

/** Inode and modification time: an inode number alone may be reused by a
 * later replacement once ours is freed. */
function stampOf(info: Deno.FileInfo): string {
  return `${info.ino}:${info.mtime?.getTime()}`;
}

/** A write trusts a lease check this recent. Another holder can only
 * take the lease after it expired (seconds) or was released, so a stale
 * writer's window is bounded by this, and sync() always checks afresh. */
const LEASE_CHECK_INTERVAL_MS = 100;

/** How long a lease lasts without renewal, unless configured otherwise. */
export const DEFAULT_LEASE_TTL_MS = 10_000;

/** Options of {@link DirectoryBlockStore.open}. */
export interface DirectoryStoreOptions {
  /** Lease lifetime without renewal. */
  leaseTtlMs?: number;
}

/** See the module documentation. */
export class DirectoryBlockStore implements BlockStore {
  readonly sizeBlocks: number;
  readonly #root: string;
  readonly #blocksPath: string;
  /** For syncing. */
  readonly #file: Deno.FsFile;
  /** For data: positional, large reads off the event loop. */
  readonly #data: NativeFile;
  readonly #leaseTtlMs: number;
  #lease: LeaseRecord | undefined;
  /** Inode and mtime of lease.json as this instance last wrote it. */
  #leaseStamp: string | null = null;
  /** When #checkLease last found the lease ours. */
  #leaseCheckedAt = -Infinity;

  private constructor(
    root: string,
    sizeBlocks: number,
    file: Deno.FsFile,
    leaseTtlMs: number,
  ) {
    this.#root = root;
    this.#blocksPath = `${root}/blocks`;
    this.sizeBlocks = sizeBlocks;
    this.#file = file;
    this.#data = NativeFile.open(this.#blocksPath, true);
    this.#leaseTtlMs = leaseTtlMs;
  }

  /** Creates an empty volume of `sizeBlocks` blocks in `root` (made if
   * missing). Fails if a volume is already there. */
  static async create(root: string, sizeBlocks: number): Promise<void> {
    if (!Number.isSafeInteger(sizeBlocks) || sizeBlocks <= 0) {
      throw new RangeError(`sizeBlocks must be positive, got ${sizeBlocks}`);
    }
    await Deno.mkdir(root, { recursive: true });
    const file = await Deno.open(`${root}/blocks`, {
      write: true,
      createNew: true,
    });
    try {
      await file.truncate(sizeBlocks * BLOCK_BYTES);
      await file.sync();
    } finally {
      file.close();
    }
    await writeFileDurably(
      `${root}/volume.json`,
      new TextEncoder().encode(JSON.stringify({ sizeBlocks })),
    );
  }

  /** Whether `root` holds a volume. */
  static async exists(root: string): Promise<boolean> {
    return (await readFileIfExists(`${root}/volume.json`)) !== null;
  }

  /** Opens the volume in `root`. */
  static async open(
    root: string,
    options: DirectoryStoreOptions = {},
  ): Promise<DirectoryBlockStore> {
    const meta = await readFileIfExists(`${root}/volume.json`);
    if (meta === null) throw new Error(`no volume in ${root}`);
    const { sizeBlocks } = JSON.parse(new TextDecoder().decode(meta));
    if (!Number.isSafeInteger(sizeBlocks) || sizeBlocks <= 0) {
      throw new Error(`${root}/volume.json has a bad sizeBlocks`);
    }
    const file = await Deno.open(`${root}/blocks`, {
      read: true,
      write: true,
    });
    return new DirectoryBlockStore(
      root,
      sizeBlocks,
      file,
      options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
    );
  }

  async readBlocks(firstBlock: number, count: number): Promise<Uint8Array> {
    checkBlockRange(this.sizeBlocks, firstBlock, count);
    const data = new Uint8Array(count * BLOCK_BYTES);
    // Large reads run on the thread pool; small ones are cheaper inline.
    if (count >= 32) {
      await this.#data.readAtAsync(data, firstBlock * BLOCK_BYTES);
    } else {
      this.#data.readAt(data, firstBlock * BLOCK_BYTES);
    }
    return data;
  }

  // Synchronous I/O inside async methods: a bad call still rejects
  // rather than throwing, and a page-cache hit costs microseconds.
  // deno-lint-ignore require-await
  async writeBlocks(firstBlock: number, data: Uint8Array): Promise<void> {
    if (data.length % BLOCK_BYTES !== 0) {
      throw new RangeError(
        `write of ${data.length} bytes is not whole ${BLOCK_BYTES}-byte blocks`,
      );
    }
    checkBlockRange(this.sizeBlocks, firstBlock, data.length / BLOCK_BYTES);
    this.#checkLease();
    this.#data.writeAt(data, firstBlock * BLOCK_BYTES);
  }

  // deno-lint-ignore require-await
  async zeroBlocks(firstBlock: number, count: number): Promise<void> {
    checkBlockRange(this.sizeBlocks, firstBlock, count);
    this.#checkLease();
    punchBlocks(this.#blocksPath, firstBlock, count);
  }

  async sync(): Promise<void> {
    // fsync rather than fdatasync: punched holes change the extent tree,
    // and a full fsync leaves no doubt that the change is on disk.
    await this.#file.sync();
    // A flush must not report success to a writer that lost its lease.
    this.#leaseCheckedAt = -Infinity;
    this.#checkLease();
  }

  async acquireLease(holder: string, waitMs: number): Promise<Lease> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const record = await this.#tryAcquire(holder);
      if (record !== null) {
        this.#lease = record;
        return this.#leaseHandle(record);
      }
      if (Date.now() >= deadline) {
        const current = await this.#readLease();
        throw new LeaseError(
          `volume ${this.#root} is leased to ${current?.holder} until ${
            new Date(current?.expiresAtMs ?? 0).toISOString()
          }`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  readAccessLog(): Promise<Uint8Array | null> {
    return readFileIfExists(`${this.#root}/access_log`);
  }

  async writeAccessLog(data: Uint8Array): Promise<void> {
    this.#checkLease();
    await writeFileDurably(`${this.#root}/access_log`, data);
  }

  async allocatedBlocks(): Promise<number> {
    const info = await Deno.stat(this.#blocksPath);
    return Math.ceil(((info.blocks ?? 0) * 512) / BLOCK_BYTES);
  }

  close(): Promise<void> {
    this.#data.close();
    this.#file.close();
    return Promise.resolve();
  }

  /** Takes the lease if it is free, expired, or already ours; the lock
   * file makes the read-modify-write atomic between processes. */
  async #tryAcquire(holder: string): Promise<LeaseRecord | null> {
    return await this.#withLock(async () => {
      const current = await this.#readLease();
      const now = Date.now();
      if (
        current !== null && current.holder !== holder &&
        current.expiresAtMs > now
      ) {
        return null;
      }
      const record = {
        holder,
        epoch: (current?.epoch ?? 0) + 1,
        expiresAtMs: now + this.#leaseTtlMs,
      };
      await this.#writeLease(record);
      return record;
    });
  }

  #leaseHandle(record: LeaseRecord): Lease {
    return {
      epoch: record.epoch,
      renew: () =>
        this.#withLock(async () => {
          this.#checkLease();
          const renewed = {
            ...record,
            expiresAtMs: Date.now() + this.#leaseTtlMs,
          };
          await this.#writeLease(renewed);
        }),
      release: () =>
        this.#withLock(async () => {
          const current = await this.#readLease();
          if (current?.epoch === record.epoch) {
            await this.#writeLease({ ...record, expiresAtMs: 0 });
          }
          this.#lease = undefined;
        }),
    };
  }

  /** Throws unless the lease file still names our lease. The file is
   * replaced by rename on every change, so while its inode and mtime are
   * the ones our own last update made, nobody else has touched it: a stat,
   * not a read, on the write path. */
  #checkLease(): void {
    const ours = this.#lease;
    if (ours === undefined) {
      throw new LeaseError(`no writer lease held on ${this.#root}`);
    }
    const leasePath = `${this.#root}/lease.json`;
    const now = performance.now();
    if (now - this.#leaseCheckedAt < LEASE_CHECK_INTERVAL_MS) return;
    if (this.#leaseStamp !== null) {
      if (stampOf(Deno.statSync(leasePath)) === this.#leaseStamp) {
        this.#leaseCheckedAt = now;
        return;
      }
    }
    let current: LeaseRecord;
    try {
      current = JSON.parse(Deno.readTextFileSync(`${this.#root}/lease.json`));
    } catch (error) {
      throw new LeaseError(`cannot read the lease of ${this.#root}: ${error}`);
    }
    if (current.epoch !== ours.epoch || current.holder !== ours.holder) {
      this.#leaseCheckedAt = -Infinity;
      throw new LeaseError(
        `lease on ${this.#root} lost to ${current.holder} (epoch ${current.epoch})`,
      );
    }
  }

  async #readLease(): Promise<LeaseRecord | null> {
    const bytes = await readFileIfExists(`${this.#root}/lease.json`);
    return bytes === null ? null : JSON.parse(new TextDecoder().decode(bytes));
  }

  async #writeLease(record: LeaseRecord): Promise<void> {
    const path = `${this.#root}/lease.json`;
    await writeFileDurably(
      path,
      new TextEncoder().encode(JSON.stringify(record)),
    );
    this.#leaseStamp = stampOf(await Deno.stat(path));
  }

  /** Runs `action` while holding `lease.lock`, created exclusively. A lock
   * older than five seconds belongs to a process that died inside it. */
  async #withLock<T>(action: () => Promise<T>): Promise<T> {
    const lockPath = `${this.#root}/lease.lock`;
    for (;;) {
      try {
        (await Deno.open(lockPath, { write: true, createNew: true })).close();
        break;
      } catch (error) {
        if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
        const info = await Deno.stat(lockPath).catch(() => null);
        if (info?.mtime && Date.now() - info.mtime.getTime() > 5_000) {
          await Deno.remove(lockPath).catch(() => {});
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    try {
      return await action();
    } finally {
      await Deno.remove(lockPath);
    }
  }
}
