/**
 * Disks: where a storage node keeps its (already sealed) bytes. A disk is a
 * flat namespace of names with `/` separators, each holding one small or
 * medium object, with conditional writes so that several storage nodes can
 * share one disk without losing each other's updates.
 *
 * A disk is trusted with availability only: everything written to it is
 * sealed by the object store first, and names are hashes.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** What a conditional write requires of the current object. */
export type WriteCondition =
  /** The name must not exist yet (S3 `If-None-Match: *`). */
  | { ifNoneMatch: true }
  /** The object must still be the version with this ETag (`If-Match`). */
  | { ifMatch: string };

/** One object read from a disk. */
export interface DiskObject {
  /** The caller's own copy of the bytes. */
  data: Uint8Array;
  /** Changes whenever the object is replaced; used with `ifMatch`. Read
   * it before changing `data`: a disk may compute it from the bytes. */
  etag: string;
}

/** Raised when a conditional write finds another writer got there first. */
export class ConditionFailedError extends Error {
  constructor(name: string, condition: WriteCondition) {
    super(
      `conditional write of ${name} refused: ${
        "ifMatch" in condition
          ? `it is no longer version ${condition.ifMatch}`
          : "it already exists"
      }`,
    );
    this.name = "ConditionFailedError";
  }
}

/** Raised when the disk itself fails (I/O error, S3 error, bad reply). */
export class DiskError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DiskError";
  }
}

/** The physical storage behind a storage node. */
export interface Disk {
  /** The object, or null when the name does not exist. */
  get(name: string): Promise<DiskObject | null>;
  /**
   * Stores the bytes durably before resolving; returns the new ETag (a
   * local disk returns "" for an unconditional write over 64 KiB, whose
   * ETag nobody asks for). With a condition that no longer holds, throws
   * {@link ConditionFailedError} and changes nothing.
   */
  put(
    name: string,
    data: Uint8Array,
    condition?: WriteCondition,
  ): Promise<string>;
  /** Removes the name; a missing name is not an error. */
  delete(name: string): Promise<void>;
  /** Every name that starts with the prefix, which must end with `/`. */
  list(prefix: string): Promise<string[]>;
  close(): Promise<void>;
}

const NAME = /^[a-z0-9]+(\/[a-z0-9.-]+)*$/;

/** Refuses names that could escape a directory or mean two things. */
export function checkName(name: string): void {
  if (!NAME.test(name) || name.includes("..")) {
    throw new RangeError(`disk name ${JSON.stringify(name)} is not valid`);
  }
}

function checkPrefix(prefix: string): void {
  if (!prefix.endsWith("/")) {
    throw new RangeError(`disk prefix ${JSON.stringify(prefix)} must end /`);
  }
  checkName(prefix.slice(0, -1));
}

/** ETag of bytes as S3 computes it for a single-part upload. */
export function contentEtag(data: Uint8Array): string {
  return createHash("md5").update(data).digest("hex");
}

/** Serializes async work per name inside one process. */
export class KeyedMutex {
  #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const done = Promise.withResolvers<void>();
    const tail = previous.then(() => done.promise);
    this.#tails.set(key, tail);
    await previous;
    try {
      return await work();
    } finally {
      done.resolve();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

async function fsyncPath(path: string): Promise<void> {
  const file = await Deno.open(path, { read: true });
  try {
    await file.sync();
  } finally {
    file.close();
  }
}

/**
 * A local directory. Writes go to a temporary file that is synced, renamed
 * over the name and followed by a sync of the directory, so a write that
 * resolved survives a crash of the process or the machine. One process at a
 * time may open a directory (an exclusive lock on `.lock`), which makes the
 * in-process mutex enough for conditional writes.
 */
export class LocalDisk implements Disk {
  readonly root: string;
  #lock: Deno.FsFile;
  #mutex = new KeyedMutex();
  #knownDirectories = new Set<string>();

  private constructor(root: string, lock: Deno.FsFile) {
    this.root = root;
    this.#lock = lock;
  }

  /** Opens (creating if needed) the directory; throws DiskError if another
   * process holds it. */
  static async open(root: string): Promise<LocalDisk> {
    await Deno.mkdir(root, { recursive: true });
    const lock = await Deno.open(`${root}/.lock`, {
      read: true,
      write: true,
      create: true,
    });
    try {
      await lock.lock(true);
    } catch (error) {
      lock.close();
      throw new DiskError(`cannot lock ${root}/.lock`, { cause: error });
    }
    return new LocalDisk(root, lock);
  }

  #path(name: string): string {
    checkName(name);
    return `${this.root}/objects/${name}`;
  }

  async get(name: string): Promise<DiskObject | null> {
    let data: Uint8Array;
    try {
      data = await Deno.readFile(this.#path(name));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null;
      throw new DiskError(`cannot read ${name}`, { cause: error });
    }
    // Hashing is left until a conditional write asks for the ETag: most
    // reads (blob and volume chunks) never need it. Small objects (heads,
    // records: the ones written conditionally) are hashed at once.
    let etag = data.length <= 65536 ? contentEtag(data) : undefined;
    return {
      data,
      get etag() {
        return etag ??= contentEtag(data);
      },
    };
  }

  async #ensureDirectory(directory: string): Promise<void> {
    if (this.#knownDirectories.has(directory)) return;
    const missing: string[] = [];
    let current = directory;
    while (current.length > this.root.length) {
      try {
        await Deno.stat(current);
        break;
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
        missing.unshift(current);
        current = current.slice(0, current.lastIndexOf("/"));
      }
    }
    for (const path of missing) {
      try {
        await Deno.mkdir(path);
      } catch (error) {
        if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
      }
      // The new entry is durable only once its parent is synced.
      await fsyncPath(path.slice(0, path.lastIndexOf("/")));
    }
    this.#knownDirectories.add(directory);
  }

  put(
    name: string,
    data: Uint8Array,
    condition?: WriteCondition,
  ): Promise<string> {
    const path = this.#path(name);
    return this.#mutex.run(name, async () => {
      if (condition !== undefined) {
        const current = await this.get(name);
        const holds = "ifMatch" in condition
          ? current?.etag === condition.ifMatch
          : current === null;
        if (!holds) throw new ConditionFailedError(name, condition);
      }
      const directory = path.slice(0, path.lastIndexOf("/"));
      const temporary = `${path}.${crypto.randomUUID()}.tmp`;
      try {
        await this.#ensureDirectory(directory);
        const file = await Deno.open(temporary, {
          write: true,
          createNew: true,
        });
        try {
          let written = 0;
          while (written < data.length) {
            written += await file.write(data.subarray(written));
          }
          await file.sync();
        } finally {
          file.close();
        }
        await Deno.rename(temporary, path);
        await fsyncPath(directory);
      } catch (error) {
        await Deno.remove(temporary).catch(() => {});
        throw new DiskError(`cannot write ${name}`, { cause: error });
      }
      // Only conditional writes and small objects need their ETag; hashing
      // every large chunk written would cost more than writing it.
      return condition !== undefined || data.length <= 65536
        ? contentEtag(data)
        : "";
    });
  }

  delete(name: string): Promise<void> {
    const path = this.#path(name);
    return this.#mutex.run(name, async () => {
      try {
        await Deno.remove(path);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return;
        throw new DiskError(`cannot delete ${name}`, { cause: error });
      }
      await fsyncPath(path.slice(0, path.lastIndexOf("/")));
    });
  }

  async list(prefix: string): Promise<string[]> {
    checkPrefix(prefix);
    const names: string[] = [];
    const walk = async (directory: string, relative: string) => {
      let entries: Deno.DirEntry[];
      try {
        entries = await Array.fromAsync(Deno.readDir(directory));
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return;
        throw new DiskError(`cannot list ${relative}`, { cause: error });
      }
      for (const entry of entries) {
        if (entry.name.endsWith(".tmp")) continue;
        if (entry.isDirectory) {
          await walk(`${directory}/${entry.name}`, `${relative}${entry.name}/`);
        } else {
          names.push(`${relative}${entry.name}`);
        }
      }
    };
    await walk(`${this.root}/objects/${prefix.slice(0, -1)}`, prefix);
    return names.sort();
  }

  async close(): Promise<void> {
    await this.#lock.unlock().catch(() => {});
    this.#lock.close();
  }
}
