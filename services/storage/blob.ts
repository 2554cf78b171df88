/**
 * Blobs: immutable bytes of any size, uploaded and downloaded as streams.
 *
 * Layout on disk: chunks `ID/c/INDEX` of `chunkBytes` plaintext each (the
 * last one shorter), then `ID/head` with the total size, written last with
 * `If-None-Match` as the commit point: a blob whose head is missing was
 * never finished and does not exist. The head fixes the number and length
 * of the chunks, so a missing or cut chunk is detected.
 *
 * Memory stays bounded: at most `concurrency` chunks are in flight in each
 * direction.
 *
 * @module
 */
import {
  contentKeyOf,
  CorruptObjectError,
  objectIdOf,
  openPiece,
  openPieceAsync,
  sealPiece,
  sealPieceAsync,
} from "./object_crypto.ts";
import {
  ObjectNotFoundError,
  QuotaExceededError,
  WrongKindError,
} from "./errors.ts";
import type { StoreContext } from "./context.ts";

/** Chunks' worth of quota an upload reserves at once when it fits. */
const RESERVE_CHUNKS = 4;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface BlobHead {
  sizeBytes: number;
  chunkBytes: number;
}

/** Cuts a stream of byte arrays into pieces of exactly `size` bytes (the
 * last one may be shorter), copying only when a piece spans inputs. */
export async function* rechunk(
  source: AsyncIterable<Uint8Array>,
  size: number,
): AsyncGenerator<Uint8Array> {
  let buffer = new Uint8Array(size);
  let filled = 0;
  for await (const input of source) {
    let offset = 0;
    while (offset < input.length) {
      if (filled === 0 && input.length - offset >= size) {
        yield input.slice(offset, offset + size);
        offset += size;
        continue;
      }
      const take = Math.min(size - filled, input.length - offset);
      buffer.set(input.subarray(offset, offset + take), filled);
      filled += take;
      offset += take;
      if (filled === size) {
        yield buffer;
        buffer = new Uint8Array(size);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield buffer.subarray(0, filled);
}

/**
 * Uploads a new blob owned by `parentId`. The blob exists only once this
 * resolves; if it throws (quota, disk, cancelled source) every piece
 * written so far is deleted and nothing is left charged.
 */
export async function uploadBlob(
  context: StoreContext,
  parentId: string,
  key: Uint8Array,
  source: AsyncIterable<Uint8Array>,
): Promise<{ sizeBytes: number }> {
  const id = objectIdOf(key);
  const contentKey = contentKeyOf(key);
  const { disk, ownership } = context;
  const chunkBytes = context.blobChunkBytes;
  await ownership.addChild(parentId, id, "blob");

  const rootId = await ownership.rootOf(id);

  // Quota is reserved on the root before each chunk is written, several
  // chunks' worth at a time while that fits and exactly chunk by chunk when
  // it does not, so an upload stops exactly at the quota without one
  // root update per chunk.
  let reservedBytes = 0;
  let creditBytes = 0;
  const reserveFor = async (bytes: number) => {
    if (creditBytes < bytes) {
      const missing = bytes - creditBytes;
      const ahead = Math.max(missing, chunkBytes * RESERVE_CHUNKS);
      try {
        await ownership.reserve(rootId, ahead);
        creditBytes += ahead;
        reservedBytes += ahead;
      } catch (error) {
        if (!(error instanceof QuotaExceededError) || ahead === missing) {
          throw error;
        }
        await ownership.reserve(rootId, missing);
        creditBytes += missing;
        reservedBytes += missing;
      }
    }
    creditBytes -= bytes;
  };

  let sizeBytes = 0;
  let index = 0;
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  try {
    for await (const chunk of rechunk(source, chunkBytes)) {
      if (failure !== undefined) break;
      const chunkIndex = index++;
      await reserveFor(chunk.length);
      sizeBytes += chunk.length;
      const piece = `c/${chunkIndex}`;
      const write = sealPieceAsync(
        contentKey,
        { objectId: id, piece },
        chunk,
        context.sealMode,
      ).then((sealed) => disk.put(`${id}/${piece}`, sealed)).then(
        () => {},
        (error) => {
          failure ??= error;
        },
      );
      const tracked = write.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= context.concurrency) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    const head: BlobHead = { sizeBytes, chunkBytes };
    await disk.put(
      `${id}/head`,
      sealPiece(
        contentKey,
        { objectId: id, piece: "head" },
        encoder.encode(JSON.stringify(head)),
        context.sealMode,
      ),
      { ifNoneMatch: true },
    );
  } catch (error) {
    await Promise.allSettled(inFlight);
    await ownership.remove(id);
    if (reservedBytes > 0) await ownership.reserve(rootId, -reservedBytes);
    throw error;
  }
  if (creditBytes > 0) await ownership.reserve(rootId, -creditBytes);
  await ownership.accountChain(id, rootId, sizeBytes, true);
  return { sizeBytes };
}

async function readHead(
  context: StoreContext,
  id: string,
  contentKey: Uint8Array,
): Promise<BlobHead> {
  const stored = await context.disk.get(`${id}/head`);
  if (stored === null) {
    const meta = await context.ownership.read(id);
    if (meta === null) throw new ObjectNotFoundError(id, "blob");
    if (meta.record.kind !== "blob") {
      throw new WrongKindError(id, "blob", meta.record.kind);
    }
    throw new CorruptObjectError(`head of blob ${id} is missing`);
  }
  const plain = openPiece(
    contentKey,
    { objectId: id, piece: "head" },
    stored.data,
    context.sealMode,
  );
  return JSON.parse(decoder.decode(plain)) as BlobHead;
}

/** The size of a blob in bytes. */
export async function blobSize(
  context: StoreContext,
  key: Uint8Array,
): Promise<number> {
  const id = objectIdOf(key);
  return (await readHead(context, id, contentKeyOf(key))).sizeBytes;
}

/**
 * Reads one blob. The head is read once and kept: a blob never changes,
 * so a capability serving many range reads pays for it once.
 */
export class BlobReader {
  readonly id: string;
  #contentKey: Uint8Array;
  #head: Promise<BlobHead> | undefined;

  constructor(readonly context: StoreContext, key: Uint8Array) {
    this.id = objectIdOf(key);
    this.#contentKey = contentKeyOf(key);
  }

  #loadHead(): Promise<BlobHead> {
    const loading = this.#head ??= readHead(
      this.context,
      this.id,
      this.#contentKey,
    );
    // A failed read is not kept: the next call tries again.
    loading.catch(() => {
      if (this.#head === loading) this.#head = undefined;
    });
    return loading;
  }

  async size(): Promise<number> {
    return (await this.#loadHead()).sizeBytes;
  }

  /** Wipes the content key; later reads fail to authenticate. */
  forget(): void {
    this.#contentKey.fill(0);
  }

  /**
   * Streams the blob's bytes from `offsetBytes`, at most `lengthBytes` of
   * them. Every chunk is authenticated before any of its bytes is yielded.
   */
  async *read(
    offsetBytes = 0,
    lengthBytes = Number.MAX_SAFE_INTEGER,
  ): AsyncGenerator<Uint8Array> {
    const context = this.context;
    const id = this.id;
    const contentKey = this.#contentKey;
    const head = await this.#loadHead();
    const end = Math.min(head.sizeBytes, offsetBytes + lengthBytes);
    if (offsetBytes >= end) return;
    const first = Math.floor(offsetBytes / head.chunkBytes);
    const last = Math.floor((end - 1) / head.chunkBytes);

    const fetchChunk = async (index: number): Promise<Uint8Array> => {
      const piece = `c/${index}`;
      const stored = await context.disk.get(`${id}/${piece}`);
      if (stored === null) {
        throw new CorruptObjectError(
          `chunk ${index} of blob ${id} is missing`,
        );
      }
      const plain = await openPieceAsync(
        contentKey,
        { objectId: id, piece },
        stored.data,
        context.sealMode,
      );
      const expected = Math.min(
        head.chunkBytes,
        head.sizeBytes - index * head.chunkBytes,
      );
      if (plain.length !== expected) {
        throw new CorruptObjectError(
          `chunk ${index} of blob ${id} has ${plain.length} bytes, ` +
            `expected ${expected}`,
        );
      }
      return plain;
    };

    const ahead: Promise<Uint8Array>[] = [];
    let next = first;
    const fill = () => {
      while (ahead.length < context.concurrency && next <= last) {
        const pending = fetchChunk(next++);
        // Errors surface when the chunk's turn comes; avoid unhandled noise.
        pending.catch(() => {});
        ahead.push(pending);
      }
    };
    fill();
    for (let index = first; index <= last; index++) {
      const plain = await ahead.shift()!;
      fill();
      const start = index === first ? offsetBytes - index * head.chunkBytes : 0;
      const stop = index === last
        ? end - index * head.chunkBytes
        : plain.length;
      yield plain.subarray(start, stop);
    }
  }
}

/** Streams a blob's bytes (see {@link BlobReader.read}). */
export function readBlob(
  context: StoreContext,
  key: Uint8Array,
  offsetBytes = 0,
  lengthBytes = Number.MAX_SAFE_INTEGER,
): AsyncGenerator<Uint8Array> {
  return new BlobReader(context, key).read(offsetBytes, lengthBytes);
}
