/**
 * A {@link BlockStore} over the storage role's Volume: in-process
 * (services/storage/volume.ts) or over RPC (the Volume capability of
 * proto/storage.capnp, bound in {@link ./rpc_volume.ts}).
 *
 * What the Volume gives maps one to one: read, write (durable when it
 * resolves), zero (frees the blocks), sync (a barrier that also checks the
 * lease), and a fenced lease whose epoch grows by one per holder. What it
 * does not have is a side object for the access log, so the log lives in
 * the volume itself, in blocks reserved at its far end: one header block
 * (magic and byte length) followed by the log's bytes. An export is never
 * that large (volumes have 2^32 blocks; the reserve is the last 256).
 *
 * The Volume's lease has no holder names and no expiry: taking it always
 * succeeds and fences every earlier holder out, so `waitMs` is unused and
 * release has nothing to give back.
 *
 * @module
 */
import {
  BLOCK_BYTES,
  type BlockStore,
  checkBlockRange,
  type Lease,
  LeaseError,
} from "./block_store.ts";

/** First block of the access log reserve. */
export const ACCESS_LOG_FIRST_BLOCK = 2 ** 32 - 256;
/** Blocks of log data after the header block. */
const ACCESS_LOG_DATA_BLOCKS = 255;
const ACCESS_LOG_MAGIC = 0x4252414c; // "BRAL", as in access_log.ts

/** What this adapter uses of a Volume: the storage role's VolumeReader
 * in-process, or {@link ./rpc_volume.ts}'s binding of the Volume
 * capability. */
export interface VolumeApi {
  /** Names the volume in messages. */
  readonly id: string;
  read(blockIndex: number, blockCount: number): Promise<Uint8Array>;
  stat(): Promise<{ usedBlocks: number; epoch: number }>;
  takeLease(): Promise<VolumeWriterApi>;
  /** Gives the capabilities up, so the storage node forgets the
   * volume's key; called once, when the store closes. */
  release?(): void;
}

/** The writer a lease gives. */
export interface VolumeWriterApi {
  readonly epoch: number;
  /** Resolves once the blocks are durable. */
  write(blockIndex: number, data: Uint8Array): Promise<void>;
  zero(blockIndex: number, blockCount: number): Promise<void>;
  /** A barrier that fails once the lease was lost. */
  sync(): Promise<void>;
}

/** Whether an error says the lease was lost: the storage role's error by
 * name in process, or its name in a remote exception's text over RPC. The
 * daemon does not import the storage role's code, so it cannot match the
 * class. */
function isLeaseLost(error: unknown): boolean {
  return error instanceof Error &&
    (error.name === "LeaseLostError" || /LeaseLostError/.test(error.message));
}

/** Turns the Volume's lease error into the daemon's. */
async function fenced<T>(action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (isLeaseLost(error)) {
      throw new LeaseError((error as Error).message);
    }
    throw error;
  }
}

/** See the module documentation. */
export class StorageVolumeStore implements BlockStore {
  readonly sizeBlocks: number;
  readonly #volume: VolumeApi;
  #writer: VolumeWriterApi | undefined;

  /** `sizeBlocks` is the export's size, chosen by whoever created the
   * grain; the Volume itself is unbounded. */
  constructor(volume: VolumeApi, sizeBlocks: number) {
    if (
      !Number.isSafeInteger(sizeBlocks) || sizeBlocks <= 0 ||
      sizeBlocks > ACCESS_LOG_FIRST_BLOCK
    ) {
      throw new RangeError(
        `export of ${sizeBlocks} blocks does not fit below the access log`,
      );
    }
    this.#volume = volume;
    this.sizeBlocks = sizeBlocks;
  }

  readBlocks(firstBlock: number, count: number): Promise<Uint8Array> {
    checkBlockRange(this.sizeBlocks, firstBlock, count);
    return this.#volume.read(firstBlock, count);
  }

  writeBlocks(firstBlock: number, data: Uint8Array): Promise<void> {
    checkBlockRange(this.sizeBlocks, firstBlock, data.length / BLOCK_BYTES);
    return fenced(() => this.#leased().write(firstBlock, data));
  }

  zeroBlocks(firstBlock: number, count: number): Promise<void> {
    checkBlockRange(this.sizeBlocks, firstBlock, count);
    return fenced(() => this.#leased().zero(firstBlock, count));
  }

  sync(): Promise<void> {
    return fenced(() => this.#leased().sync());
  }

  async acquireLease(_holder: string, _waitMs: number): Promise<Lease> {
    const writer = await this.#volume.takeLease();
    this.#writer = writer;
    return {
      epoch: writer.epoch,
      renew: async () => {
        const { epoch } = await this.#volume.stat();
        if (epoch !== writer.epoch) {
          throw new LeaseError(
            `lease epoch ${writer.epoch} lost to epoch ${epoch}`,
          );
        }
      },
      release: () => {
        if (this.#writer === writer) this.#writer = undefined;
        return Promise.resolve();
      },
    };
  }

  async readAccessLog(): Promise<Uint8Array | null> {
    const header = await this.#volume.read(ACCESS_LOG_FIRST_BLOCK, 1);
    const view = new DataView(header.buffer, header.byteOffset, 8);
    if (view.getUint32(0) !== ACCESS_LOG_MAGIC) return null;
    const length = view.getUint32(4);
    if (length > ACCESS_LOG_DATA_BLOCKS * BLOCK_BYTES) return null;
    if (length === 0) return new Uint8Array(0);
    const data = await this.#volume.read(
      ACCESS_LOG_FIRST_BLOCK + 1,
      Math.ceil(length / BLOCK_BYTES),
    );
    return data.subarray(0, length);
  }

  async writeAccessLog(data: Uint8Array): Promise<void> {
    if (data.length > ACCESS_LOG_DATA_BLOCKS * BLOCK_BYTES) {
      throw new RangeError(
        `access log of ${data.length} bytes exceeds its reserve`,
      );
    }
    const blocks = Math.ceil(data.length / BLOCK_BYTES);
    const body = new Uint8Array(blocks * BLOCK_BYTES);
    body.set(data);
    const header = new Uint8Array(BLOCK_BYTES);
    const view = new DataView(header.buffer);
    view.setUint32(0, ACCESS_LOG_MAGIC);
    view.setUint32(4, data.length);
    await fenced(async () => {
      const writer = this.#leased();
      // Data first, header last: a torn update leaves the old header, whose
      // length may then cover new data; the decoder rejects a log whose
      // length does not match its run count.
      if (blocks > 0) await writer.write(ACCESS_LOG_FIRST_BLOCK + 1, body);
      await writer.write(ACCESS_LOG_FIRST_BLOCK, header);
    });
  }

  async allocatedBlocks(): Promise<number> {
    return (await this.#volume.stat()).usedBlocks;
  }

  close(): Promise<void> {
    this.#writer = undefined;
    this.#volume.release?.();
    return Promise.resolve();
  }

  #leased(): VolumeWriterApi {
    if (this.#writer === undefined) {
      throw new LeaseError(`no writer lease held on volume ${this.#volume.id}`);
    }
    return this.#writer;
  }
}
