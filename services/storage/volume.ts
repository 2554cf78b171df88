/**
 * Volumes: sparse arrays of 4 KiB blocks (up to 2^32 of them) with an
 * exclusive-writer lease.
 *
 * Layout on disk, all pieces sealed with the volume's content key:
 * - `ID/head`: lease epoch, version, blocks in use, and the version tag of
 *   each map page. The head is the commit point: every write ends with a
 *   compare-and-set (`If-Match`) of the head.
 * - `ID/p/PAGE.TAG`: a map page, for 4096 consecutive chunks, listing for
 *   each stored chunk its version tag and which of its blocks hold data.
 * - `ID/c/CHUNK.TAG`: 16 blocks (64 KiB) of data. Chunk and page pieces are
 *   never overwritten: a write stores new versions, commits the head, then
 *   deletes the versions it replaced.
 *
 * Fencing: taking the lease bumps the epoch in the head by compare-and-set.
 * A writer commits only if the head it replaces carries its own epoch, and
 * the disk refuses the head write if anyone changed the head since the
 * writer read it, so once a new epoch is on disk no earlier holder's write
 * can commit, whichever storage node it goes through.
 *
 * Concurrent writes through one writer are committed together (one head
 * update for the batch); a write resolves only once its head is on disk.
 *
 * @module
 */
import { ConditionFailedError, DiskError } from "./disk.ts";
import { MAX_CAS_ATTEMPTS } from "./ownership.ts";
import {
  contentKeyOf,
  CorruptObjectError,
  newVersionTag,
  objectIdOf,
  openPiece,
  sealPiece,
} from "./object_crypto.ts";
import {
  LeaseLostError,
  ObjectNotFoundError,
  QuotaExceededError,
  WrongKindError,
} from "./errors.ts";
import type { StoreContext } from "./context.ts";

/** Bytes per block. */
export const BLOCK_BYTES = 4096;
/** Blocks per chunk, the unit of storage on disk. */
export const CHUNK_BLOCKS = 16;
const CHUNK_BYTES = BLOCK_BYTES * CHUNK_BLOCKS;
/** Chunks listed by one map page. */
const PAGE_CHUNKS = 4096;
/** Blocks in every volume. */
export const VOLUME_BLOCKS = 2 ** 32;
/** Most blocks one read or write may cover (16 MiB). */
export const MAX_BLOCKS_PER_CALL = 4096;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface VolumeHead {
  /** Random per commit: tells a writer whether a head on disk is its own. */
  commit: string;
  epoch: number;
  version: number;
  usedBlocks: number;
  /** Page index (as a string) to its version tag. */
  pages: Record<string, string>;
}

interface ChunkEntry {
  tag: string;
  /** Bit i set: block i of the chunk holds data (is not all zeros). */
  bitmap: number;
}

type Page = Map<number, ChunkEntry>;

function encodePage(page: Page): Uint8Array {
  const out = new Uint8Array(page.size * 16);
  const view = new DataView(out.buffer);
  let offset = 0;
  for (const [chunk, entry] of page) {
    view.setUint32(offset, chunk);
    view.setUint32(offset + 4, entry.bitmap);
    for (let i = 0; i < 8; i++) {
      out[offset + 8 + i] = parseInt(entry.tag.slice(i * 2, i * 2 + 2), 16);
    }
    offset += 16;
  }
  return out;
}

function decodePage(bytes: Uint8Array, where: string): Page {
  if (bytes.length % 16 !== 0) {
    throw new CorruptObjectError(`map page ${where} has a bad length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const page: Page = new Map();
  for (let offset = 0; offset < bytes.length; offset += 16) {
    let tag = "";
    for (let i = 0; i < 8; i++) {
      tag += bytes[offset + 8 + i].toString(16).padStart(2, "0");
    }
    page.set(view.getUint32(offset), {
      tag,
      bitmap: view.getUint32(offset + 4),
    });
  }
  return page;
}

/** Which blocks of a chunk hold anything but zeros. */
function bitmapOf(chunk: Uint8Array): number {
  const words = new Uint32Array(
    chunk.buffer,
    chunk.byteOffset,
    CHUNK_BYTES / 4,
  );
  let bitmap = 0;
  const wordsPerBlock = BLOCK_BYTES / 4;
  for (let block = 0; block < CHUNK_BLOCKS; block++) {
    const start = block * wordsPerBlock;
    for (let i = start; i < start + wordsPerBlock; i++) {
      if (words[i] !== 0) {
        bitmap |= 1 << block;
        break;
      }
    }
  }
  return bitmap >>> 0;
}

function popcount(value: number): number {
  let count = 0;
  while (value !== 0) {
    value &= value - 1;
    count++;
  }
  return count;
}

function checkRange(blockIndex: number, blockCount: number): void {
  if (
    !Number.isSafeInteger(blockIndex) || !Number.isSafeInteger(blockCount) ||
    blockIndex < 0 || blockCount < 0 || blockIndex + blockCount > VOLUME_BLOCKS
  ) {
    throw new RangeError(
      `blocks ${blockIndex}+${blockCount} are outside the volume's ` +
        `${VOLUME_BLOCKS} blocks`,
    );
  }
}

/** Creates the volume's head; the ownership record must exist already. */
export async function createVolume(
  context: StoreContext,
  parentId: string,
  key: Uint8Array,
): Promise<void> {
  const volume = new VolumeReader(context, key);
  await context.ownership.addChild(parentId, volume.id, "volume");
  const head: VolumeHead = {
    commit: newVersionTag(),
    epoch: 0,
    version: 0,
    usedBlocks: 0,
    pages: {},
  };
  await context.disk.put(`${volume.id}/head`, volume.sealHead(head), {
    ifNoneMatch: true,
  });
}

/** Small least-recently-used map. */
class Lru<V> {
  #map = new Map<string, V>();
  constructor(readonly capacity: number) {}
  get(key: string): V | undefined {
    const value = this.#map.get(key);
    if (value !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, value);
    }
    return value;
  }
  set(key: string, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.capacity) {
      this.#map.delete(this.#map.keys().next().value!);
    }
  }
}

/** A piece named by a head was not on disk; the head may have moved on. */
class StaleHeadError extends Error {}

/** Reads a volume. Holds the key only as long as the instance lives. */
export class VolumeReader {
  readonly id: string;
  readonly context: StoreContext;
  readonly contentKey: Uint8Array;
  #pages = new Lru<Page>(64);

  constructor(context: StoreContext, key: Uint8Array) {
    this.context = context;
    this.id = objectIdOf(key);
    this.contentKey = contentKeyOf(key);
  }

  /** Wipes the content key; later calls fail to authenticate. */
  forget(): void {
    this.contentKey.fill(0);
  }

  sealHead(head: VolumeHead): Uint8Array {
    return sealPiece(
      this.contentKey,
      { objectId: this.id, piece: "head" },
      encoder.encode(JSON.stringify(head)),
      this.context.sealMode,
    );
  }

  async loadHead(): Promise<{ head: VolumeHead; etag: string }> {
    const stored = await this.context.disk.get(`${this.id}/head`);
    if (stored === null) {
      const meta = await this.context.ownership.read(this.id);
      if (meta === null) throw new ObjectNotFoundError(this.id, "volume");
      if (meta.record.kind !== "volume") {
        throw new WrongKindError(this.id, "volume", meta.record.kind);
      }
      throw new CorruptObjectError(`head of volume ${this.id} is missing`);
    }
    // The ETag first: opening in place changes the bytes it is made from.
    const etag = stored.etag;
    const plain = openPiece(
      this.contentKey,
      { objectId: this.id, piece: "head" },
      stored.data,
      this.context.sealMode,
    );
    return { head: JSON.parse(decoder.decode(plain)), etag };
  }

  async loadPage(head: VolumeHead, pageIndex: number): Promise<Page> {
    const tag = head.pages[pageIndex];
    if (tag === undefined) return new Map();
    const piece = `p/${pageIndex}.${tag}`;
    const cached = this.#pages.get(piece);
    if (cached !== undefined) return cached;
    const stored = await this.context.disk.get(`${this.id}/${piece}`);
    if (stored === null) throw new StaleHeadError(piece);
    const page = decodePage(
      openPiece(
        this.contentKey,
        { objectId: this.id, piece },
        stored.data,
        this.context.sealMode,
      ),
      piece,
    );
    this.#pages.set(piece, page);
    return page;
  }

  rememberPage(piece: string, page: Page): void {
    this.#pages.set(piece, page);
  }

  async loadChunk(chunkIndex: number, tag: string): Promise<Uint8Array> {
    const piece = `c/${chunkIndex}.${tag}`;
    const stored = await this.context.disk.get(`${this.id}/${piece}`);
    if (stored === null) throw new StaleHeadError(piece);
    const plain = openPiece(
      this.contentKey,
      { objectId: this.id, piece },
      stored.data,
      this.context.sealMode,
    );
    if (plain.length !== CHUNK_BYTES) {
      throw new CorruptObjectError(
        `chunk ${chunkIndex} of volume ${this.id} has ${plain.length} bytes`,
      );
    }
    return plain;
  }

  async entryOf(
    head: VolumeHead,
    chunkIndex: number,
  ): Promise<ChunkEntry | undefined> {
    const page = await this.loadPage(
      head,
      Math.floor(chunkIndex / PAGE_CHUNKS),
    );
    return page.get(chunkIndex);
  }

  async #readWith(
    head: VolumeHead,
    blockIndex: number,
    blockCount: number,
  ): Promise<Uint8Array> {
    const out = new Uint8Array(blockCount * BLOCK_BYTES);
    const firstChunk = Math.floor(blockIndex / CHUNK_BLOCKS);
    const lastChunk = Math.floor((blockIndex + blockCount - 1) / CHUNK_BLOCKS);
    const jobs: Promise<void>[] = [];
    for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
      jobs.push((async () => {
        const entry = await this.entryOf(head, chunk);
        if (entry === undefined) return;
        const data = await this.loadChunk(chunk, entry.tag);
        const chunkStart = chunk * CHUNK_BLOCKS;
        const from = Math.max(blockIndex, chunkStart);
        const to = Math.min(blockIndex + blockCount, chunkStart + CHUNK_BLOCKS);
        out.set(
          data.subarray(
            (from - chunkStart) * BLOCK_BYTES,
            (to - chunkStart) * BLOCK_BYTES,
          ),
          (from - blockIndex) * BLOCK_BYTES,
        );
      })());
    }
    const results = await Promise.allSettled(jobs);
    for (const result of results) {
      if (result.status === "rejected") throw result.reason;
    }
    return out;
  }

  /** Reads blocks; blocks never written read as zeros. */
  async read(blockIndex: number, blockCount: number): Promise<Uint8Array> {
    checkRange(blockIndex, blockCount);
    if (blockCount > MAX_BLOCKS_PER_CALL) {
      throw new RangeError(
        `a read covers at most ${MAX_BLOCKS_PER_CALL} blocks, got ${blockCount}`,
      );
    }
    if (blockCount === 0) return new Uint8Array(0);
    let lastEtag: string | undefined;
    for (;;) {
      const { head, etag } = await this.loadHead();
      try {
        return await this.#readWith(head, blockIndex, blockCount);
      } catch (error) {
        if (!(error instanceof StaleHeadError)) throw error;
        // A writer replaced the piece after we read the head; a missing
        // piece under an unchanged head is damage.
        if (etag === lastEtag) {
          throw new CorruptObjectError(
            `piece ${error.message} of volume ${this.id} is missing`,
          );
        }
        lastEtag = etag;
      }
    }
  }

  /** Blocks holding data, and the lease epoch now on disk. */
  async stat(): Promise<{ usedBlocks: number; epoch: number }> {
    const { head } = await this.loadHead();
    return { usedBlocks: head.usedBlocks, epoch: head.epoch };
  }

  /**
   * Takes the writer lease: the epoch on disk goes up by one, which fences
   * out every earlier holder. Returns the new holder's writer.
   */
  async takeLease(): Promise<VolumeWriter> {
    for (let attempt = 0;; attempt++) {
      if (attempt === MAX_CAS_ATTEMPTS) {
        throw new DiskError(`head of volume ${this.id} kept changing`);
      }
      const { head, etag } = await this.loadHead();
      const next = { ...head, commit: newVersionTag(), epoch: head.epoch + 1 };
      try {
        const newEtag = await this.context.disk.put(
          `${this.id}/head`,
          this.sealHead(next),
          { ifMatch: etag },
        );
        // No write of the new epoch can be under way before this returns,
        // so every piece the head does not name now is garbage.
        await this.#collectGarbage(next).catch(() => {});
        return new VolumeWriter(this, next.epoch, {
          head: next,
          etag: newEtag,
        });
      } catch (error) {
        if (!(error instanceof ConditionFailedError)) throw error;
      }
    }
  }

  /**
   * Deletes the pieces `head` does not name: versions a crash kept from
   * being deleted, and pieces of writes that never committed (a killed
   * node, a fenced-out writer). Only safe while no write of the head's
   * epoch can be in flight, which takeLease guarantees.
   */
  async #collectGarbage(head: VolumeHead): Promise<void> {
    const names = await this.context.disk.list(`${this.id}/`);
    const keep = new Set([`${this.id}/head`, `${this.id}/meta`]);
    for (const [pageKey, tag] of Object.entries(head.pages)) {
      keep.add(`${this.id}/p/${pageKey}.${tag}`);
      const page = await this.loadPage(head, Number(pageKey));
      for (const [chunk, entry] of page) {
        keep.add(`${this.id}/c/${chunk}.${entry.tag}`);
      }
    }
    const garbage = names.filter((name) => !keep.has(name));
    for (let i = 0; i < garbage.length; i += 16) {
      await Promise.all(
        garbage.slice(i, i + 16).map((name) => this.context.disk.delete(name)),
      );
    }
  }

  /** A writer for a lease epoch taken earlier (for example through another
   * storage node); it fails with LeaseLostError once a newer epoch exists. */
  resumeLease(epoch: number): VolumeWriter {
    return new VolumeWriter(this, epoch, null);
  }
}

type Operation =
  | { kind: "write"; blockIndex: number; data: Uint8Array }
  | { kind: "zero"; blockIndex: number; blockCount: number };

interface Queued {
  operation: Operation;
  done: PromiseWithResolvers<void>;
}

/** Writes to a volume under one lease epoch. */
export class VolumeWriter {
  readonly volume: VolumeReader;
  readonly epoch: number;
  #head: { head: VolumeHead; etag: string } | null;
  #queue: Queued[] = [];
  #running: Promise<void> | null = null;
  #chunks = new Lru<Uint8Array>(256);

  constructor(
    volume: VolumeReader,
    epoch: number,
    head: { head: VolumeHead; etag: string } | null,
  ) {
    this.volume = volume;
    this.epoch = epoch;
    this.#head = head;
  }

  /** Writes whole blocks; resolves once they are durable on the disk. */
  write(blockIndex: number, data: Uint8Array): Promise<void> {
    if (data.length % BLOCK_BYTES !== 0) {
      return Promise.reject(
        new RangeError(
          `write of ${data.length} bytes is not a whole number of blocks`,
        ),
      );
    }
    const blockCount = data.length / BLOCK_BYTES;
    try {
      checkRange(blockIndex, blockCount);
      if (blockCount > MAX_BLOCKS_PER_CALL) {
        throw new RangeError(
          `a write covers at most ${MAX_BLOCKS_PER_CALL} blocks, got ${blockCount}`,
        );
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#enqueue({ kind: "write", blockIndex, data: data.slice() });
  }

  /** Makes blocks read as zeros and frees their space on the disk. */
  zero(blockIndex: number, blockCount: number): Promise<void> {
    try {
      checkRange(blockIndex, blockCount);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#enqueue({ kind: "zero", blockIndex, blockCount });
  }

  /** Resolves when every write queued before it has committed. Writes are
   * durable when they resolve, so this is only a barrier. */
  async sync(): Promise<void> {
    while (this.#running !== null) await this.#running.catch(() => {});
  }

  /** Reads blocks as this writer last committed them (or newer). */
  read(blockIndex: number, blockCount: number): Promise<Uint8Array> {
    return this.volume.read(blockIndex, blockCount);
  }

  #enqueue(operation: Operation): Promise<void> {
    const done = Promise.withResolvers<void>();
    this.#queue.push({ operation, done });
    if (this.#running === null) this.#running = this.#drain();
    return done.promise;
  }

  async #drain(): Promise<void> {
    // Cleared in the same step that sees the queue empty, before any
    // resolved write's continuation runs, so that a write queued then
    // starts a new drain.
    for (;;) {
      if (this.#queue.length === 0) {
        this.#running = null;
        return;
      }
      const batch = this.#queue.splice(0, 64);
      try {
        await this.#commit(batch.map((q) => q.operation));
        for (const queued of batch) queued.done.resolve();
      } catch (error) {
        if (error instanceof QuotaExceededError && batch.length > 1) {
          // One write of the batch may fit where all together do not.
          for (const queued of batch) {
            try {
              await this.#commit([queued.operation]);
              queued.done.resolve();
            } catch (single) {
              queued.done.reject(single);
            }
          }
        } else {
          for (const queued of batch) queued.done.reject(error);
        }
      }
    }
  }

  async #currentChunk(
    head: VolumeHead,
    chunk: number,
    staged: Map<number, Uint8Array | null>,
  ): Promise<Uint8Array | null> {
    if (staged.has(chunk)) return staged.get(chunk)!;
    const entry = await this.volume.entryOf(head, chunk);
    if (entry === undefined) return null;
    const name = `${chunk}.${entry.tag}`;
    const cached = this.#chunks.get(name);
    if (cached !== undefined) return cached;
    return await this.volume.loadChunk(chunk, entry.tag);
  }

  async #stage(
    head: VolumeHead,
    operations: Operation[],
  ): Promise<Map<number, Uint8Array | null>> {
    const staged = new Map<number, Uint8Array | null>();
    for (const operation of operations) {
      const blockCount = operation.kind === "write"
        ? operation.data.length / BLOCK_BYTES
        : operation.blockCount;
      const start = operation.blockIndex;
      const end = start + blockCount;
      const firstChunk = Math.floor(start / CHUNK_BLOCKS);
      const lastChunk = Math.floor((end - 1) / CHUNK_BLOCKS);
      if (blockCount === 0) continue;
      if (operation.kind === "zero") {
        await this.#stageZero(head, staged, start, end, firstChunk, lastChunk);
        continue;
      }
      for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
        const chunkStart = chunk * CHUNK_BLOCKS;
        const from = Math.max(start, chunkStart);
        const to = Math.min(end, chunkStart + CHUNK_BLOCKS);
        const source = operation.data.subarray(
          (from - start) * BLOCK_BYTES,
          (to - start) * BLOCK_BYTES,
        );
        let content: Uint8Array;
        if (to - from === CHUNK_BLOCKS) {
          content = source.slice();
        } else {
          const current = await this.#currentChunk(head, chunk, staged);
          content = current === null
            ? new Uint8Array(CHUNK_BYTES)
            : current.slice();
          content.set(source, (from - chunkStart) * BLOCK_BYTES);
        }
        staged.set(chunk, content);
      }
    }
    return staged;
  }

  async #stageZero(
    head: VolumeHead,
    staged: Map<number, Uint8Array | null>,
    start: number,
    end: number,
    firstChunk: number,
    lastChunk: number,
  ): Promise<void> {
    const partial = async (chunk: number) => {
      const current = await this.#currentChunk(head, chunk, staged);
      if (current === null) return;
      const chunkStart = chunk * CHUNK_BLOCKS;
      const from = Math.max(start, chunkStart);
      const to = Math.min(end, chunkStart + CHUNK_BLOCKS);
      const content = current.slice();
      content.fill(
        0,
        (from - chunkStart) * BLOCK_BYTES,
        (to - chunkStart) * BLOCK_BYTES,
      );
      staged.set(chunk, content);
    };
    if (start % CHUNK_BLOCKS !== 0) await partial(firstChunk);
    if (
      end % CHUNK_BLOCKS !== 0 && (lastChunk !== firstChunk ||
        start % CHUNK_BLOCKS === 0)
    ) {
      await partial(lastChunk);
    }
    // Whole chunks in between: only those that exist need anything.
    const wholeFirst = Math.ceil(start / CHUNK_BLOCKS);
    const wholeEnd = Math.floor(end / CHUNK_BLOCKS);
    if (wholeFirst >= wholeEnd) return;
    for (const chunk of staged.keys()) {
      if (chunk >= wholeFirst && chunk < wholeEnd) staged.set(chunk, null);
    }
    const firstPage = Math.floor(wholeFirst / PAGE_CHUNKS);
    const lastPage = Math.floor((wholeEnd - 1) / PAGE_CHUNKS);
    for (const pageKey of Object.keys(head.pages)) {
      const pageIndex = Number(pageKey);
      if (pageIndex < firstPage || pageIndex > lastPage) continue;
      const page = await this.volume.loadPage(head, pageIndex);
      for (const chunk of page.keys()) {
        if (chunk >= wholeFirst && chunk < wholeEnd) staged.set(chunk, null);
      }
    }
  }

  async #commit(operations: Operation[]): Promise<void> {
    const { disk, ownership } = this.volume.context;
    const id = this.volume.id;
    for (let attempt = 0;; attempt++) {
      if (attempt === MAX_CAS_ATTEMPTS) {
        throw new DiskError(`head of volume ${id} kept changing`);
      }
      const current = this.#head ?? await this.volume.loadHead();
      this.#head = current;
      const { head, etag } = current;
      if (head.epoch !== this.epoch) {
        throw new LeaseLostError(id, this.epoch, head.epoch);
      }

      let staged: Map<number, Uint8Array | null>;
      try {
        staged = await this.#stage(head, operations);
      } catch (error) {
        if (!(error instanceof StaleHeadError)) throw error;
        this.#head = null;
        continue;
      }

      const next: VolumeHead = {
        commit: newVersionTag(),
        epoch: head.epoch,
        version: head.version + 1,
        usedBlocks: head.usedBlocks,
        pages: { ...head.pages },
      };
      const newPieces = new Map<string, Uint8Array>();
      const oldPieces: string[] = [];
      const changedPages = new Map<number, Page>();
      const written = new Map<string, Uint8Array>();
      for (const [chunk, content] of staged) {
        const pageIndex = Math.floor(chunk / PAGE_CHUNKS);
        let page = changedPages.get(pageIndex);
        if (page === undefined) {
          page = new Map(await this.volume.loadPage(head, pageIndex));
          changedPages.set(pageIndex, page);
        }
        const old = page.get(chunk);
        const bitmap = content === null ? 0 : bitmapOf(content);
        next.usedBlocks += popcount(bitmap) - popcount(old?.bitmap ?? 0);
        if (old !== undefined) oldPieces.push(`c/${chunk}.${old.tag}`);
        if (bitmap === 0) {
          page.delete(chunk);
        } else {
          const tag = newVersionTag();
          const piece = `c/${chunk}.${tag}`;
          newPieces.set(
            piece,
            sealPiece(
              this.volume.contentKey,
              { objectId: id, piece },
              content!,
              this.volume.context.sealMode,
            ),
          );
          written.set(`${chunk}.${tag}`, content!);
          page.set(chunk, { tag, bitmap });
        }
      }
      const newPages = new Map<string, Page>();
      for (const [pageIndex, page] of changedPages) {
        const oldTag = head.pages[pageIndex];
        if (oldTag !== undefined) oldPieces.push(`p/${pageIndex}.${oldTag}`);
        if (page.size === 0) {
          delete next.pages[pageIndex];
          continue;
        }
        const tag = newVersionTag();
        const piece = `p/${pageIndex}.${tag}`;
        next.pages[pageIndex] = tag;
        newPages.set(piece, page);
        newPieces.set(
          piece,
          sealPiece(
            this.volume.contentKey,
            { objectId: id, piece },
            encodePage(page),
            this.volume.context.sealMode,
          ),
        );
      }

      const deltaBytes = (next.usedBlocks - head.usedBlocks) * BLOCK_BYTES;
      let newEtag: string;
      try {
        newEtag = await ownership.charge(id, deltaBytes, async () => {
          await Promise.all(
            [...newPieces].map(([piece, data]) =>
              disk.put(`${id}/${piece}`, data)
            ),
          );
          try {
            return await disk.put(`${id}/head`, this.volume.sealHead(next), {
              ifMatch: etag,
            });
          } catch (error) {
            // A retried request whose first attempt landed is refused too:
            // the commit tag tells whether the head on disk is ours.
            if (!(error instanceof ConditionFailedError)) throw error;
            const now = await this.volume.loadHead();
            if (now.head.commit === next.commit) return now.etag;
            throw error;
          }
        });
      } catch (error) {
        this.#head = null;
        if (error instanceof ConditionFailedError) {
          await this.#deletePieces([...newPieces.keys()]);
          continue;
        }
        // After any other failure the head may or may not have landed, so
        // the new pieces stay (as garbage at worst).
        if (error instanceof QuotaExceededError) {
          await this.#deletePieces([...newPieces.keys()]);
        }
        throw error;
      }
      this.#head = { head: next, etag: newEtag };
      for (const [piece, page] of newPages) {
        this.volume.rememberPage(piece, page);
      }
      for (const [name, content] of written) this.#chunks.set(name, content);
      // Nothing names the replaced pieces any more; deleting them need not
      // hold up the write. A crash before they go leaves garbage only.
      void this.#deletePieces(oldPieces);
      return;
    }
  }

  /** Deletes replaced or abandoned pieces. A failure only leaves garbage
   * (nothing names these pieces any more), so it is not the write's error. */
  async #deletePieces(pieces: string[]): Promise<void> {
    const { disk } = this.volume.context;
    await Promise.allSettled(
      pieces.map((piece) => disk.delete(`${this.volume.id}/${piece}`)),
    );
  }
}
