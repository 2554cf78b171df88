/**
 * Fast cold start: the blocks a grain reads in its first seconds are
 * recorded, in the order it first touched them, and saved with the volume
 * as a small access log object. The next start of the grain, on any
 * worker, fetches those blocks in the background while the grain boots,
 * so that its reads find them in the cache instead of waiting for the
 * store one by one.
 *
 * Encoding (big-endian): "BRAL", a u32 version (1), a u32 run count, then
 * per run a u32 first block and a u32 block count.
 *
 * @module
 */
import { Bitmap } from "./bitmap.ts";

const MAGIC = 0x4252414c; // "BRAL"
const VERSION = 1;
const HEADER_BYTES = 12;

/** A range of blocks, `[first, first + count)`. */
export interface BlockRun {
  first: number;
  count: number;
}

/** A log that cannot be decoded; the start goes on without prefetching. */
export class AccessLogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AccessLogError";
  }
}

/** Records first touches of blocks, up to `maxBlocks` distinct blocks. */
export class AccessRecorder {
  readonly #seen: Bitmap;
  readonly #maxBlocks: number;
  readonly #runs: BlockRun[] = [];

  constructor(sizeBlocks: number, maxBlocks: number) {
    this.#seen = new Bitmap(sizeBlocks);
    this.#maxBlocks = maxBlocks;
  }

  /** How many distinct blocks were recorded. */
  get blocks(): number {
    return this.#seen.count;
  }

  /** Notes a read of `[first, first + count)`. */
  record(first: number, count: number): void {
    for (let block = first; block < first + count; block++) {
      if (this.#seen.count >= this.#maxBlocks) return;
      if (this.#seen.get(block)) continue;
      this.#seen.set(block);
      const last = this.#runs[this.#runs.length - 1];
      if (last !== undefined && last.first + last.count === block) {
        last.count++;
      } else {
        this.#runs.push({ first: block, count: 1 });
      }
    }
  }

  /** The recorded runs, in first-touch order. */
  runs(): BlockRun[] {
    return this.#runs.map((run) => ({ ...run }));
  }

  encode(): Uint8Array {
    return encodeAccessLog(this.#runs);
  }
}

/** Encodes runs as an access log object. */
export function encodeAccessLog(runs: BlockRun[]): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES + 8 * runs.length);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, MAGIC);
  view.setUint32(4, VERSION);
  view.setUint32(8, runs.length);
  runs.forEach((run, i) => {
    view.setUint32(HEADER_BYTES + 8 * i, run.first);
    view.setUint32(HEADER_BYTES + 8 * i + 4, run.count);
  });
  return bytes;
}

/**
 * Decodes an access log for a volume of `sizeBlocks` blocks. Every run
 * must lie inside the volume; the object comes from storage and is checked
 * like any other input.
 *
 * @example
 * ```ts
 * import { decodeAccessLog, encodeAccessLog } from "./access_log.ts";
 * const runs = decodeAccessLog(encodeAccessLog([{ first: 3, count: 2 }]), 8);
 * if (runs[0].first !== 3 || runs[0].count !== 2) throw new Error("lost");
 * ```
 */
export function decodeAccessLog(
  bytes: Uint8Array,
  sizeBlocks: number,
): BlockRun[] {
  if (bytes.length < HEADER_BYTES) {
    throw new AccessLogError(`access log of ${bytes.length} bytes is short`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (view.getUint32(0) !== MAGIC || view.getUint32(4) !== VERSION) {
    throw new AccessLogError("access log has a bad magic or version");
  }
  const count = view.getUint32(8);
  if (bytes.length !== HEADER_BYTES + 8 * count) {
    throw new AccessLogError(
      `access log says ${count} runs but holds ${bytes.length} bytes`,
    );
  }
  const runs: BlockRun[] = [];
  for (let i = 0; i < count; i++) {
    const first = view.getUint32(HEADER_BYTES + 8 * i);
    const length = view.getUint32(HEADER_BYTES + 8 * i + 4);
    if (length === 0 || first + length > sizeBlocks) {
      throw new AccessLogError(
        `access log run [${first}, +${length}) is outside ${sizeBlocks} blocks`,
      );
    }
    runs.push({ first, count: length });
  }
  return runs;
}
