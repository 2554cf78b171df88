/**
 * The narrow view of a storage Volume that the block daemon needs: a sparse
 * array of 4 KiB blocks that can be read, written, zeroed (freed) and
 * synced, guarded by an exclusive writer lease, plus one small side object,
 * the access log used for fast cold starts.
 *
 * The daemon is written against this interface only, so that it runs the
 * same over a local directory ({@link ./directory_store.ts}) and over the
 * storage service's Volume ({@link ./storage_volume_store.ts}).
 *
 * @module
 */

/** Every volume is an array of blocks of this size. */
export const BLOCK_BYTES = 4096;

/** A block store that a daemon has opened for one grain's volume. */
export interface BlockStore {
  /** The volume's size in blocks; fixed while it is open. */
  readonly sizeBlocks: number;

  /** Reads `count` blocks from `firstBlock`. Blocks never written or
   * zeroed read as zeros. */
  readBlocks(firstBlock: number, count: number): Promise<Uint8Array>;

  /** Writes whole blocks (`data.length` a multiple of {@link BLOCK_BYTES}).
   * Not durable until {@link sync} resolves. Needs the lease. */
  writeBlocks(firstBlock: number, data: Uint8Array): Promise<void>;

  /** Makes `count` blocks read as zeros and frees the space behind them.
   * Not durable until {@link sync} resolves. Needs the lease. */
  zeroBlocks(firstBlock: number, count: number): Promise<void>;

  /** Resolves once every write and zero that resolved before the call is
   * durable: it survives the death of this process and of its machine. */
  sync(): Promise<void>;

  /** Takes the exclusive writer lease, waiting up to `waitMs` for another
   * holder's lease to expire. Writes without a current lease fail with
   * {@link LeaseError}. */
  acquireLease(holder: string, waitMs: number): Promise<Lease>;

  /** The access log saved with the volume, or null if none was saved. */
  readAccessLog(): Promise<Uint8Array | null>;

  /** Replaces the access log, durably. Needs the lease. */
  writeAccessLog(data: Uint8Array): Promise<void>;

  /** How many blocks currently hold space in the store (zeroed and never
   * written blocks do not); lets tests see that trims free space. */
  allocatedBlocks(): Promise<number>;

  /** Releases local resources (not the lease). */
  close(): Promise<void>;
}

/** An exclusive writer lease on one volume. */
export interface Lease {
  /** Grows by one with every acquisition, so a cache can tell whether
   * anybody else wrote the volume since it last held the lease. */
  readonly epoch: number;
  /** Extends the lease; fails with {@link LeaseError} if it was lost. */
  renew(): Promise<void>;
  /** Gives the lease up so that another holder can take it at once. */
  release(): Promise<void>;
}

/** The writer lease is held by someone else, or was lost. */
export class LeaseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LeaseError";
  }
}

/** A caller asked for blocks outside the volume or passed a bad buffer. */
export class BlockRangeError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = "BlockRangeError";
  }
}

/** Throws {@link BlockRangeError} unless `[firstBlock, firstBlock+count)`
 * lies inside a volume of `sizeBlocks` blocks. */
export function checkBlockRange(
  sizeBlocks: number,
  firstBlock: number,
  count: number,
): void {
  if (
    !Number.isSafeInteger(firstBlock) || !Number.isSafeInteger(count) ||
    firstBlock < 0 || count < 0 || firstBlock + count > sizeBlocks
  ) {
    throw new BlockRangeError(
      `blocks [${firstBlock}, +${count}) are outside a volume of ${sizeBlocks} blocks`,
    );
  }
}
