/**
 * State that every coordinator shares and that outlives any one of them:
 * where each grain runs. Coordinators never trust their own memory for it;
 * they read the shared record and change it only by compare-and-set, so two
 * coordinators deciding at once cannot both win.
 *
 * {@link SharedStateStore} is the narrow contract the coordinator needs,
 * shaped after storage's Assignable (a value with a version, replaced only
 * if the version still matches). {@link SqliteStateStore} implements it in
 * one SQLite file that several coordinator processes on one host open
 * together (the simulated cluster); a store backed by storage's Assignable
 * over RPC takes its place when the coordinators run on different machines.
 *
 * @module
 */

/** The part of `node:sqlite` used here. The project's @types/node (20)
 * predates that module, so it is loaded by name and typed by hand. */
interface StatementSync {
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): { changes: number | bigint };
}
interface DatabaseSync {
  exec(sql: string): void;
  prepare(sql: string): StatementSync;
  close(): void;
}
const sqliteModule = "node:sqlite";
const { DatabaseSync: Database } = await import(sqliteModule) as {
  DatabaseSync: new (path: string) => DatabaseSync;
};

/** One value and the version it was read at. Versions start at 1. */
export interface Versioned {
  key: string;
  value: Uint8Array;
  version: number;
}

/** The outcome of {@link SharedStateStore.compareAndSet}. */
export interface SetResult {
  /** Whether the write happened. */
  ok: boolean;
  /** The version now stored (0 when the key is absent). */
  version: number;
}

/** Durable, shared, versioned key-value state with compare-and-set. */
export interface SharedStateStore {
  /** The current value, or null if the key was never set or was deleted. */
  get(key: string): Promise<Versioned | null>;
  /**
   * Writes `value` (or deletes the key when null) only if the stored
   * version is `expectedVersion`, with 0 meaning "absent". A write is
   * durable when the promise resolves.
   */
  compareAndSet(
    key: string,
    expectedVersion: number,
    value: Uint8Array | null,
  ): Promise<SetResult>;
  /** Every value whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<Versioned[]>;
  close(): void;
}

/** Raised for a key the store cannot hold. */
export class StateKeyError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = "StateKeyError";
  }
}

function checkKey(key: string): void {
  if (key.length === 0 || key.length > 1024) {
    throw new StateKeyError(
      `state key of ${key.length} characters: expected 1 to 1024`,
    );
  }
}

/**
 * {@link SharedStateStore} in a SQLite file, written with full fsync in WAL
 * mode. Several processes may open the same file; SQLite's locking makes
 * each compare-and-set atomic across them.
 *
 * @example
 * ```ts
 * import { SqliteStateStore } from "./shared_state.ts";
 * const store = new SqliteStateStore(":memory:");
 * const first = await store.compareAndSet("grain/a", 0, new Uint8Array([1]));
 * const stale = await store.compareAndSet("grain/a", 0, new Uint8Array([2]));
 * if (!first.ok || stale.ok) throw new Error("compare-and-set broken");
 * store.close();
 * ```
 */
export class SqliteStateStore implements SharedStateStore {
  readonly #db: DatabaseSync;
  readonly #select: StatementSync;
  readonly #insert: StatementSync;
  readonly #update: StatementSync;
  readonly #delete: StatementSync;
  readonly #list: StatementSync;

  constructor(path: string) {
    this.#db = new Database(path);
    this.#db.exec("PRAGMA busy_timeout = 10000");
    this.#db.exec("PRAGMA journal_mode = WAL");
    this.#db.exec("PRAGMA synchronous = FULL");
    this.#db.exec(
      "CREATE TABLE IF NOT EXISTS state (" +
        "key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL)",
    );
    this.#select = this.#db.prepare(
      "SELECT value, version FROM state WHERE key = ?",
    );
    this.#insert = this.#db.prepare(
      "INSERT OR IGNORE INTO state (key, value, version) VALUES (?, ?, 1)",
    );
    this.#update = this.#db.prepare(
      "UPDATE state SET value = ?, version = version + 1 " +
        "WHERE key = ? AND version = ?",
    );
    this.#delete = this.#db.prepare(
      "DELETE FROM state WHERE key = ? AND version = ?",
    );
    this.#list = this.#db.prepare(
      "SELECT key, value, version FROM state " +
        "WHERE key >= ? AND key < ? ORDER BY key",
    );
  }

  get(key: string): Promise<Versioned | null> {
    checkKey(key);
    const row = this.#select.get(key) as
      | { value: Uint8Array; version: number }
      | undefined;
    return Promise.resolve(
      row === undefined
        ? null
        : { key, value: new Uint8Array(row.value), version: row.version },
    );
  }

  compareAndSet(
    key: string,
    expectedVersion: number,
    value: Uint8Array | null,
  ): Promise<SetResult> {
    checkKey(key);
    if (!Number.isSafeInteger(expectedVersion) || expectedVersion < 0) {
      throw new RangeError(
        `expectedVersion is ${expectedVersion}, expected an integer >= 0`,
      );
    }
    let changes: number | bigint;
    if (expectedVersion === 0) {
      changes = value === null ? 0 : this.#insert.run(key, value).changes;
    } else if (value === null) {
      changes = this.#delete.run(key, expectedVersion).changes;
    } else {
      changes = this.#update.run(value, key, expectedVersion).changes;
    }
    const row = this.#select.get(key) as { version: number } | undefined;
    const version = row?.version ?? 0;
    const ok = Number(changes) === 1 ||
      (expectedVersion === 0 && value === null && version === 0);
    return Promise.resolve({ ok, version });
  }

  list(prefix: string): Promise<Versioned[]> {
    // Every key with the prefix sorts at or after it and before the prefix
    // followed by the highest code point.
    const rows = this.#list.all(prefix, prefix + "\u{10FFFF}") as {
      key: string;
      value: Uint8Array;
      version: number;
    }[];
    return Promise.resolve(rows.map((row) => ({
      key: row.key,
      value: new Uint8Array(row.value),
      version: row.version,
    })));
  }

  close(): void {
    this.#db.close();
  }
}
