/**
 * The object store of a storage node: blobs, volumes, assignables and
 * immutables, each sealed under its own key, arranged in ownership trees
 * under named user roots with quotas. This is the storage role without its
 * RPC surface; services/storage/service.ts serves it.
 *
 * An object is named by its 32-byte key. The store keeps no key after a
 * call returns: the caller (the RPC layer, which seals the key into
 * SturdyRefs) hands it in with every call.
 *
 * @example
 * ```ts ignore
 * import { LocalDisk } from "./disk.ts";
 * import { ObjectStore } from "./store.ts";
 * const disk = await LocalDisk.open("/tmp/store");
 * const store = new ObjectStore({ disk, diskSecret: new Uint8Array(32) });
 * await store.ensureRoot("alice", 1 << 20);
 * const key = await store.createBlob({ root: "alice" }, [
 *   new TextEncoder().encode("hello"),
 * ]);
 * for await (const bytes of store.readBlob(key)) console.log(bytes);
 * ```
 *
 * @module
 */
import type { Disk } from "./disk.ts";
import { newObjectKey, objectIdOf, rootIdOf } from "./object_crypto.ts";
import type { SealMode } from "./object_crypto.ts";
import { type ObjectKind, Ownership, type RootUsage } from "./ownership.ts";
import { BlobReader, blobSize, readBlob, uploadBlob } from "./blob.ts";
import { createVolume, VolumeReader } from "./volume.ts";
import { createValue, getValue, setValue, type StoredValue } from "./value.ts";
import type { StoreContext } from "./context.ts";
import { ObjectNotFoundError } from "./errors.ts";

/** Who owns a new object: a user's named root, or another object. */
export type Owner = { root: string } | { key: Uint8Array };

/** Options of {@link ObjectStore}. */
export interface ObjectStoreOptions {
  disk: Disk;
  /** Shared by every storage node of the disk; seals ownership records. */
  diskSecret: Uint8Array;
  /** "copy" only for the sealing benchmark. */
  sealMode?: SealMode;
  /** Plaintext bytes per blob chunk; default 4 MiB. */
  blobChunkBytes?: number;
  /** Disk requests one stream keeps in flight; default 4. */
  concurrency?: number;
}

/** Bytes held by one object and by its whole subtree. */
export interface ObjectUsage {
  kind: ObjectKind;
  ownBytes: number;
  subtreeBytes: number;
}

/** The storage role's objects over one disk. */
export class ObjectStore {
  readonly context: StoreContext;

  constructor(options: ObjectStoreOptions) {
    if (options.diskSecret.length < 16) {
      throw new RangeError(
        `disk secret must be at least 16 bytes, got ${options.diskSecret.length}`,
      );
    }
    const blobChunkBytes = options.blobChunkBytes ?? 4 * 1024 * 1024;
    if (!Number.isInteger(blobChunkBytes) || blobChunkBytes < 1024) {
      throw new RangeError(
        `blob chunk of ${blobChunkBytes} bytes is too small`,
      );
    }
    this.context = {
      disk: options.disk,
      ownership: new Ownership(options.disk, options.diskSecret),
      sealMode: options.sealMode ?? "aead",
      blobChunkBytes,
      concurrency: options.concurrency ?? 4,
    };
  }

  #ownerId(owner: Owner): string {
    return "root" in owner ? rootIdOf(owner.root) : objectIdOf(owner.key);
  }

  /** Creates a user's root if missing; sets its quota when given. */
  async ensureRoot(name: string, quotaBytes?: number): Promise<void> {
    if (name.length === 0 || name.length > 256) {
      throw new RangeError(`root name must be 1-256 characters`);
    }
    if (
      quotaBytes !== undefined &&
      (!Number.isSafeInteger(quotaBytes) || quotaBytes < 0)
    ) {
      throw new RangeError(`quota ${quotaBytes} must be a whole byte count`);
    }
    await this.context.ownership.ensureRoot(name, quotaBytes);
  }

  /** Bytes used and allowed under a user's root. */
  rootUsage(name: string): Promise<RootUsage> {
    return this.context.ownership.rootUsage(name);
  }

  /** Bytes held by the object and everything it owns. */
  async usage(key: Uint8Array): Promise<ObjectUsage> {
    const id = objectIdOf(key);
    const found = await this.context.ownership.read(id);
    if (found === null) throw new ObjectNotFoundError(id);
    const { kind, ownBytes, subtreeBytes } = found.record;
    return { kind, ownBytes, subtreeBytes };
  }

  /** The kind of the object, or ObjectNotFoundError. */
  async kindOf(key: Uint8Array): Promise<ObjectKind> {
    return (await this.usage(key)).kind;
  }

  /** Uploads a blob from a stream of byte arrays; returns its key. */
  async createBlob(
    owner: Owner,
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  ): Promise<Uint8Array> {
    const key = newObjectKey();
    const iterable: AsyncIterable<Uint8Array> = Symbol.asyncIterator in source
      ? source as AsyncIterable<Uint8Array>
      : (async function* () {
        yield* source as Iterable<Uint8Array>;
      })();
    await uploadBlob(this.context, this.#ownerId(owner), key, iterable);
    return key;
  }

  /** The blob's size in bytes. */
  blobSize(key: Uint8Array): Promise<number> {
    return blobSize(this.context, key);
  }

  /** Streams a blob (or a range of it). */
  readBlob(
    key: Uint8Array,
    offsetBytes?: number,
    lengthBytes?: number,
  ): AsyncGenerator<Uint8Array> {
    return readBlob(this.context, key, offsetBytes, lengthBytes);
  }

  /** A reader of one blob that keeps its head between reads. */
  blob(key: Uint8Array): BlobReader {
    return new BlobReader(this.context, key);
  }

  /** Creates an empty volume; returns its key. */
  async createVolume(owner: Owner): Promise<Uint8Array> {
    const key = newObjectKey();
    await createVolume(this.context, this.#ownerId(owner), key);
    return key;
  }

  /** A handle to read the volume and take (or resume) its lease. */
  volume(key: Uint8Array): VolumeReader {
    return new VolumeReader(this.context, key);
  }

  /** Creates an assignable at version 0; returns its key. */
  async createAssignable(
    owner: Owner,
    value: StoredValue,
  ): Promise<Uint8Array> {
    const key = newObjectKey();
    await createValue(
      this.context,
      this.#ownerId(owner),
      key,
      "assignable",
      value,
    );
    return key;
  }

  /** Creates an immutable; returns its key. */
  async createImmutable(
    owner: Owner,
    value: StoredValue,
  ): Promise<Uint8Array> {
    const key = newObjectKey();
    await createValue(
      this.context,
      this.#ownerId(owner),
      key,
      "immutable",
      value,
    );
    return key;
  }

  /** Reads an assignable or immutable. */
  getValue(
    key: Uint8Array,
    kind: "assignable" | "immutable",
  ): Promise<{ value: StoredValue; version: number }> {
    return getValue(this.context, key, kind);
  }

  /** Compare-and-set of an assignable; returns the new version. */
  setValue(
    key: Uint8Array,
    expectedVersion: number,
    value: StoredValue,
  ): Promise<number> {
    return setValue(this.context, key, expectedVersion, value);
  }

  /** Removes the object and everything it owns, and frees their bytes. */
  remove(key: Uint8Array): Promise<void> {
    return this.context.ownership.remove(objectIdOf(key));
  }

  /** Whether the object (its ownership record) exists. */
  async exists(key: Uint8Array): Promise<boolean> {
    return await this.context.ownership.read(objectIdOf(key)) !== null;
  }
}
