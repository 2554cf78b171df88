/**
 * The object graph: who owns whom, how many bytes each subtree holds, and
 * the quota of each user's root.
 *
 * Every object has an ownership record at `ID/meta`, sealed with the
 * disk's metadata key (so a storage node can account a child's growth to
 * its ancestors without holding their object keys). Records change only by
 * compare-and-set on the disk, so storage nodes sharing a disk never lose
 * each other's updates.
 *
 * Crash behaviour, by design: a quota reservation is made on the root
 * before the write it pays for, so a crash in between can leave usage
 * counted too high, never too low; an object is registered with its parent
 * before it is created, so a crash leaves at worst a dangling child ID,
 * which removal skips.
 *
 * @module
 */
import {
  ConditionFailedError,
  type Disk,
  DiskError,
  KeyedMutex,
} from "./disk.ts";
import {
  metadataKeyOf,
  newVersionTag,
  openPiece,
  rootIdOf,
  sealPiece,
} from "./object_crypto.ts";
import { ObjectNotFoundError, QuotaExceededError } from "./errors.ts";

/** What an object is. A root is a user's named root. */
export type ObjectKind =
  | "root"
  | "blob"
  | "volume"
  | "assignable"
  | "immutable";

/** The ownership record of one object. */
export interface OwnershipRecord {
  kind: ObjectKind;
  /** The owning object's ID; null for a root. */
  parent: string | null;
  /** The ID of the root at the top of the owner chain (itself for a root). */
  root: string;
  /** Bytes of this object's own contents. */
  ownBytes: number;
  /** ownBytes plus every descendant's. */
  subtreeBytes: number;
  children: string[];
  /** Only on roots: the root's name and quota. */
  rootName?: string;
  quotaBytes?: number;
  /** Random per update, to recognize one's own write after a retry. */
  stamp?: string;
}

/** Compare-and-set attempts before a record is declared too contended (or
 * the disk's conditional writes broken). */
export const MAX_CAS_ATTEMPTS = 1000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Bytes used and allowed under one user's root. */
export interface RootUsage {
  usedBytes: number;
  quotaBytes: number;
}

/** Reads and changes ownership records on one disk. */
export class Ownership {
  readonly disk: Disk;
  #key: Uint8Array;
  #mutex = new KeyedMutex();
  /** Last record seen per ID with its ETag, to skip a read before CAS. */
  #cache = new Map<string, { record: OwnershipRecord; etag: string }>();

  constructor(disk: Disk, diskSecret: Uint8Array) {
    this.disk = disk;
    this.#key = metadataKeyOf(diskSecret);
  }

  #remember(id: string, record: OwnershipRecord, etag: string): void {
    // Bounded: records of idle objects are dropped in insertion order.
    if (this.#cache.size > 4096) {
      this.#cache.delete(this.#cache.keys().next().value!);
    }
    this.#cache.set(id, { record, etag });
  }

  /** The record as it is on disk now, or null. */
  async read(
    id: string,
  ): Promise<{ record: OwnershipRecord; etag: string } | null> {
    const stored = await this.disk.get(`${id}/meta`);
    if (stored === null) {
      this.#cache.delete(id);
      return null;
    }
    // The ETag first: opening in place changes the bytes it is made from.
    const etag = stored.etag;
    const plain = openPiece(
      this.#key,
      { objectId: id, piece: "meta" },
      stored.data,
    );
    const record = JSON.parse(decoder.decode(plain)) as OwnershipRecord;
    this.#remember(id, record, etag);
    return { record, etag };
  }

  #seal(id: string, record: OwnershipRecord): Uint8Array {
    return sealPiece(
      this.#key,
      { objectId: id, piece: "meta" },
      encoder.encode(JSON.stringify(record)),
    );
  }

  /** Writes a new record; false if the ID already has one. */
  async create(id: string, record: OwnershipRecord): Promise<boolean> {
    try {
      const etag = await this.disk.put(`${id}/meta`, this.#seal(id, record), {
        ifNoneMatch: true,
      });
      this.#remember(id, record, etag);
      return true;
    } catch (error) {
      if (error instanceof ConditionFailedError) return false;
      throw error;
    }
  }

  /**
   * Applies `change` to the record by compare-and-set, retrying on a
   * concurrent update. `change` may throw to refuse (nothing is written).
   * Throws ObjectNotFoundError if the record is missing.
   */
  update(
    id: string,
    change: (record: OwnershipRecord) => void,
  ): Promise<OwnershipRecord> {
    return this.#mutex.run(id, async () => {
      const cached = this.#cache.get(id);
      let current = cached ?? await this.read(id);
      let fresh = cached === undefined;
      for (let attempt = 0;; attempt++) {
        if (attempt === MAX_CAS_ATTEMPTS) {
          throw new DiskError(
            `ownership record of ${id} kept changing: ${attempt} ` +
              "compare-and-set attempts failed",
          );
        }
        if (current === null) throw new ObjectNotFoundError(id);
        const record = structuredClone(current.record);
        try {
          change(record);
        } catch (error) {
          // A refusal (over quota) must rest on the record as it is now,
          // not on a copy another node has since changed.
          if (fresh) throw error;
          current = await this.read(id);
          fresh = true;
          continue;
        }
        record.stamp = newVersionTag();
        try {
          const etag = await this.disk.put(
            `${id}/meta`,
            this.#seal(id, record),
            { ifMatch: current.etag },
          );
          this.#remember(id, record, etag);
          return record;
        } catch (error) {
          if (!(error instanceof ConditionFailedError)) throw error;
          current = await this.read(id);
          fresh = true;
          // A retried request whose first attempt landed is refused too;
          // the stamp shows the record on disk is this very update.
          if (current?.record.stamp === record.stamp) return record;
        }
      }
    });
  }

  /** Deletes the record (the last piece of an object to go). */
  async delete(id: string): Promise<void> {
    this.#cache.delete(id);
    await this.disk.delete(`${id}/meta`);
  }

  /** Creates the named root if it is missing; sets its quota if given. */
  async ensureRoot(name: string, quotaBytes?: number): Promise<string> {
    const id = rootIdOf(name);
    const created = await this.create(id, {
      kind: "root",
      parent: null,
      root: id,
      ownBytes: 0,
      subtreeBytes: 0,
      children: [],
      rootName: name,
      quotaBytes: quotaBytes ?? Number.MAX_SAFE_INTEGER,
    });
    if (!created && quotaBytes !== undefined) {
      await this.update(id, (record) => {
        record.quotaBytes = quotaBytes;
      });
    }
    return id;
  }

  /** Usage and quota of a root, read from disk now. */
  async rootUsage(name: string): Promise<RootUsage> {
    const id = rootIdOf(name);
    const found = await this.read(id);
    if (found === null) throw new ObjectNotFoundError(id, `root ${name}`);
    return {
      usedBytes: found.record.subtreeBytes,
      quotaBytes: found.record.quotaBytes ?? Number.MAX_SAFE_INTEGER,
    };
  }

  /**
   * Registers a new child under `parentId` and writes its record. Returns
   * the child's record.
   */
  async addChild(
    parentId: string,
    childId: string,
    kind: ObjectKind,
  ): Promise<OwnershipRecord> {
    const parent = await this.update(parentId, (record) => {
      if (!record.children.includes(childId)) record.children.push(childId);
    });
    const record: OwnershipRecord = {
      kind,
      parent: parentId,
      root: parent.root,
      ownBytes: 0,
      subtreeBytes: 0,
      children: [],
    };
    if (!await this.create(childId, record)) {
      throw new Error(`object ID ${childId} collided; keys must be random`);
    }
    return record;
  }

  /**
   * Runs `work`, which changes the object's own size by `deltaBytes`, and
   * accounts the change up the owner chain. Growth is first reserved
   * against the root's quota: if it does not fit, QuotaExceededError is
   * thrown and `work` never runs. If `work` throws, the reservation is
   * returned.
   */
  async charge<T>(
    id: string,
    deltaBytes: number,
    work: () => Promise<T>,
  ): Promise<T> {
    if (deltaBytes === 0) return await work();
    const found = this.#cache.get(id) ?? await this.read(id);
    if (found === null) throw new ObjectNotFoundError(id);
    const rootId = found.record.root;
    if (deltaBytes > 0) await this.reserve(rootId, deltaBytes);
    let result: T;
    try {
      result = await work();
    } catch (error) {
      if (deltaBytes > 0) await this.reserve(rootId, -deltaBytes);
      throw error;
    }
    await this.accountChain(id, rootId, deltaBytes, true);
    if (deltaBytes < 0) await this.reserve(rootId, deltaBytes);
    return result;
  }

  /**
   * Adds `deltaBytes` to the root's usage; growth past the quota throws
   * QuotaExceededError and changes nothing. Callers that reserve ahead of
   * writing (see blob.ts) must later account the bytes to the object's
   * chain with {@link accountChain} and give back what they did not use.
   */
  async reserve(rootId: string, deltaBytes: number): Promise<void> {
    await this.update(rootId, (record) => {
      const quota = record.quotaBytes ?? Number.MAX_SAFE_INTEGER;
      if (deltaBytes > 0 && record.subtreeBytes + deltaBytes > quota) {
        throw new QuotaExceededError(
          record.rootName ?? rootId,
          record.subtreeBytes,
          deltaBytes,
          quota,
        );
      }
      record.subtreeBytes = Math.max(0, record.subtreeBytes + deltaBytes);
    });
  }

  /** Adds delta to every record from `id` up to (not including) the root;
   * to `id`'s own bytes too when `own` is set. */
  async accountChain(
    id: string,
    rootId: string,
    deltaBytes: number,
    own: boolean,
  ): Promise<void> {
    let current: string | null = id;
    let first = own;
    while (current !== null && current !== rootId) {
      const isFirst = first;
      let record: OwnershipRecord;
      try {
        record = await this.update(current, (r) => {
          if (isFirst) r.ownBytes = Math.max(0, r.ownBytes + deltaBytes);
          r.subtreeBytes = Math.max(0, r.subtreeBytes + deltaBytes);
        });
      } catch (error) {
        // An ancestor removed meanwhile has taken its subtree's bytes with it.
        if (error instanceof ObjectNotFoundError) return;
        throw error;
      }
      first = false;
      current = record.parent;
    }
  }

  /**
   * Removes the object and everything it owns from the disk, then takes
   * its bytes off its ancestors and unlists it from its parent. Safe to
   * call again after a crash part way.
   */
  /** The root at the top of the object's owner chain. */
  async rootOf(id: string): Promise<string> {
    const found = this.#cache.get(id) ?? await this.read(id);
    if (found === null) throw new ObjectNotFoundError(id);
    return found.record.root;
  }

  async remove(id: string): Promise<void> {
    const found = await this.read(id);
    if (found === null) return;
    const { record } = found;
    if (record.kind === "root") {
      throw new RangeError(`root ${id} cannot be removed as an object`);
    }
    await this.#removeTree(id);
    if (record.parent !== null) {
      await this.accountChain(
        record.parent,
        record.root,
        -record.subtreeBytes,
        false,
      );
      await this.reserve(record.root, -record.subtreeBytes);
      await this.update(record.parent, (parent) => {
        parent.children = parent.children.filter((child) => child !== id);
      }).catch((error) => {
        if (!(error instanceof ObjectNotFoundError)) throw error;
      });
    }
  }

  async #removeTree(id: string): Promise<void> {
    const found = await this.read(id);
    if (found !== null) {
      for (const child of found.record.children) await this.#removeTree(child);
    }
    const names = await this.disk.list(`${id}/`);
    const pieces = names.filter((name) => name !== `${id}/meta`);
    for (let i = 0; i < pieces.length; i += 16) {
      await Promise.all(
        pieces.slice(i, i + 16).map((name) => this.disk.delete(name)),
      );
    }
    await this.delete(id);
  }
}
