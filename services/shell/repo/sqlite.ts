/**
 * The shell's repository on SQLite (Deno's `node:sqlite`), the default on a
 * single machine. Several shell processes may open the same file: WAL mode
 * lets readers run beside one writer, and a busy timeout makes a writer
 * wait for another instead of failing.
 *
 * @module
 */
/// <reference path="./node_sqlite.d.ts" />
import { DatabaseSync, type SQLInputValue } from "node:sqlite";
import {
  type AppRole,
  type Claim,
  ConflictError,
  type Grain,
  type GrainSession,
  type Install,
  type LoginSession,
  type PackageInfo,
  type Replica,
  type Share,
  type ShellRepository,
  type User,
} from "./types.ts";

const SCHEMA = `
create table if not exists users (
  id text primary key, name text not null unique, display_name text not null,
  password_hash text not null, is_admin integer not null,
  quota_bytes integer not null, created_at integer not null);
create table if not exists login_sessions (
  id text primary key, user_id text not null, csrf_token text not null,
  created_at integer not null, expires_at integer not null);
create table if not exists packages (
  id text primary key, app_id text not null, title text not null,
  version text not null, new_grain_title text not null, roles text not null,
  size_bytes integer not null, uploaded_by text not null,
  created_at integer not null);
create table if not exists installs (
  user_id text not null, package_id text not null, app_id text not null,
  created_at integer not null, primary key (user_id, package_id));
create table if not exists grains (
  id text primary key, owner_id text not null, package_id text not null,
  app_id text not null, title text not null, size_bytes integer not null,
  created_at integer not null, last_used_at integer not null,
  first_started_at integer not null default 0);
create index if not exists grains_owner on grains (owner_id);
create table if not exists shares (
  id text primary key, grain_id text not null, created_by text not null,
  role_index integer not null, label text not null,
  created_at integer not null, revoked integer not null);
create index if not exists shares_grain on shares (grain_id);
create table if not exists claims (
  user_id text not null, grain_id text not null, share_id text not null,
  created_at integer not null, primary key (user_id, grain_id));
create table if not exists grain_sessions (
  id text primary key, grain_id text not null, user_id text not null,
  host_label text not null unique, role_index integer not null,
  can_write integer not null, backend text not null,
  created_at integer not null, expires_at integer not null);
create table if not exists replicas (
  id text primary key, role text not null, address text not null,
  hostname text not null, pid integer not null, rss_bytes integer not null,
  started_at integer not null, last_seen_at integer not null);
create table if not exists settings (name text primary key, value text not null);
`;

type Row = Record<string, SQLInputValue>;

function isUniqueViolation(error: unknown): boolean {
  return error instanceof Error && /UNIQUE constraint/.test(error.message);
}

const num = (v: SQLInputValue) => Number(v);
const str = (v: SQLInputValue) => String(v);

function toUser(r: Row): User {
  return {
    id: str(r.id),
    name: str(r.name),
    displayName: str(r.display_name),
    passwordHash: str(r.password_hash),
    isAdmin: num(r.is_admin) === 1,
    quotaBytes: num(r.quota_bytes),
    createdAt: num(r.created_at),
  };
}

function toPackage(r: Row): PackageInfo {
  return {
    id: str(r.id),
    appId: str(r.app_id),
    title: str(r.title),
    version: str(r.version),
    newGrainTitle: str(r.new_grain_title),
    roles: JSON.parse(str(r.roles)),
    sizeBytes: num(r.size_bytes),
    uploadedBy: str(r.uploaded_by),
    createdAt: num(r.created_at),
  };
}

function toGrain(r: Row): Grain {
  return {
    id: str(r.id),
    ownerId: str(r.owner_id),
    packageId: str(r.package_id),
    appId: str(r.app_id),
    title: str(r.title),
    sizeBytes: num(r.size_bytes),
    createdAt: num(r.created_at),
    lastUsedAt: num(r.last_used_at),
    firstStartedAt: num(r.first_started_at ?? 0),
  };
}

function toShare(r: Row): Share {
  return {
    id: str(r.id),
    grainId: str(r.grain_id),
    createdBy: str(r.created_by),
    roleIndex: num(r.role_index),
    label: str(r.label),
    createdAt: num(r.created_at),
    revoked: num(r.revoked) === 1,
  };
}

function toGrainSession(r: Row): GrainSession {
  return {
    id: str(r.id),
    grainId: str(r.grain_id),
    userId: str(r.user_id),
    hostLabel: str(r.host_label),
    roleIndex: num(r.role_index),
    canWrite: num(r.can_write) === 1,
    backend: str(r.backend),
    createdAt: num(r.created_at),
    expiresAt: num(r.expires_at),
  };
}

function toReplica(r: Row): Replica {
  return {
    id: str(r.id),
    role: str(r.role),
    address: str(r.address),
    hostname: str(r.hostname),
    pid: num(r.pid),
    rssBytes: num(r.rss_bytes),
    startedAt: num(r.started_at),
    lastSeenAt: num(r.last_seen_at),
  };
}

/**
 * Opens (and creates if needed) the shell's SQLite database.
 *
 * @example
 * ```ts
 * import { SqliteRepository } from "./sqlite.ts";
 * const repo = new SqliteRepository(":memory:");
 * if ((await repo.countUsers()) !== 0) throw new Error("not empty");
 * await repo.close();
 * ```
 */
export class SqliteRepository implements ShellRepository {
  readonly backend = "sqlite" as const;
  readonly #db: DatabaseSync;

  constructor(path: string) {
    this.#db = new DatabaseSync(path);
    // The busy timeout comes first: switching to WAL takes a lock that a
    // replica starting at the same moment may hold.
    this.#db.exec("pragma busy_timeout = 5000; pragma journal_mode = wal;");
    this.#db.exec(SCHEMA);
    this.#migrate();
  }

  /** Brings a database made by an earlier version up to this schema. */
  #migrate(): void {
    const columns = this.#all("pragma table_info(grains)").map((r) =>
      str(r.name)
    );
    if (!columns.includes("first_started_at")) {
      this.#db.exec(
        "alter table grains add column first_started_at integer not null default 0",
      );
    }
  }

  #run(sql: string, ...params: SQLInputValue[]): number {
    return Number(this.#db.prepare(sql).run(...params).changes);
  }

  #get(sql: string, ...params: SQLInputValue[]): Row | undefined {
    return this.#db.prepare(sql).get(...params) as Row | undefined;
  }

  #all(sql: string, ...params: SQLInputValue[]): Row[] {
    return this.#db.prepare(sql).all(...params) as Row[];
  }

  createUser(u: User): Promise<void> {
    try {
      this.#run(
        "insert into users values (?, ?, ?, ?, ?, ?, ?)",
        u.id,
        u.name,
        u.displayName,
        u.passwordHash,
        u.isAdmin ? 1 : 0,
        u.quotaBytes,
        u.createdAt,
      );
    } catch (error) {
      if (isUniqueViolation(error)) {
        return Promise.reject(
          new ConflictError(`user name ${JSON.stringify(u.name)} is taken`),
        );
      }
      throw error;
    }
    return Promise.resolve();
  }

  getUser(id: string): Promise<User | undefined> {
    const row = this.#get("select * from users where id = ?", id);
    return Promise.resolve(row && toUser(row));
  }

  getUserByName(name: string): Promise<User | undefined> {
    const row = this.#get("select * from users where name = ?", name);
    return Promise.resolve(row && toUser(row));
  }

  listUsers(): Promise<User[]> {
    return Promise.resolve(
      this.#all("select * from users order by created_at, name").map(toUser),
    );
  }

  countUsers(): Promise<number> {
    return Promise.resolve(
      num(this.#get("select count(*) as n from users")!.n),
    );
  }

  setUserQuota(id: string, quotaBytes: number): Promise<void> {
    this.#run("update users set quota_bytes = ? where id = ?", quotaBytes, id);
    return Promise.resolve();
  }

  createLoginSession(s: LoginSession): Promise<void> {
    this.#run(
      "insert into login_sessions values (?, ?, ?, ?, ?)",
      s.id,
      s.userId,
      s.csrfToken,
      s.createdAt,
      s.expiresAt,
    );
    return Promise.resolve();
  }

  getLoginSession(id: string): Promise<LoginSession | undefined> {
    const r = this.#get("select * from login_sessions where id = ?", id);
    if (r === undefined) return Promise.resolve(undefined);
    return Promise.resolve({
      id: str(r.id),
      userId: str(r.user_id),
      csrfToken: str(r.csrf_token),
      createdAt: num(r.created_at),
      expiresAt: num(r.expires_at),
    });
  }

  deleteLoginSession(id: string): Promise<void> {
    this.#run("delete from login_sessions where id = ?", id);
    return Promise.resolve();
  }

  deleteExpiredLoginSessions(now: number): Promise<number> {
    return Promise.resolve(
      this.#run("delete from login_sessions where expires_at < ?", now),
    );
  }

  putPackage(p: PackageInfo): Promise<boolean> {
    const changes = this.#run(
      "insert or ignore into packages values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
      p.id,
      p.appId,
      p.title,
      p.version,
      p.newGrainTitle,
      JSON.stringify(p.roles),
      p.sizeBytes,
      p.uploadedBy,
      p.createdAt,
    );
    return Promise.resolve(changes === 1);
  }

  getPackage(id: string): Promise<PackageInfo | undefined> {
    const row = this.#get("select * from packages where id = ?", id);
    return Promise.resolve(row && toPackage(row));
  }

  listPackages(): Promise<PackageInfo[]> {
    return Promise.resolve(
      this.#all("select * from packages order by created_at").map(toPackage),
    );
  }

  deletePackage(id: string): Promise<void> {
    this.#run("delete from packages where id = ?", id);
    return Promise.resolve();
  }

  setPackageRoles(id: string, roles: AppRole[]): Promise<void> {
    this.#run(
      "update packages set roles = ? where id = ?",
      JSON.stringify(roles),
      id,
    );
    return Promise.resolve();
  }

  install(i: Install): Promise<void> {
    this.#run(
      "insert or ignore into installs values (?, ?, ?, ?)",
      i.userId,
      i.packageId,
      i.appId,
      i.createdAt,
    );
    return Promise.resolve();
  }

  listInstalls(userId: string): Promise<Install[]> {
    return Promise.resolve(
      this.#all(
        "select * from installs where user_id = ? order by created_at",
        userId,
      ).map((r) => ({
        userId: str(r.user_id),
        packageId: str(r.package_id),
        appId: str(r.app_id),
        createdAt: num(r.created_at),
      })),
    );
  }

  uninstall(userId: string, packageId: string): Promise<void> {
    this.#run(
      "delete from installs where user_id = ? and package_id = ?",
      userId,
      packageId,
    );
    return Promise.resolve();
  }

  createGrain(g: Grain): Promise<void> {
    this.#run(
      `insert into grains (id, owner_id, package_id, app_id, title,
         size_bytes, created_at, last_used_at, first_started_at)
       values (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      g.id,
      g.ownerId,
      g.packageId,
      g.appId,
      g.title,
      g.sizeBytes,
      g.createdAt,
      g.lastUsedAt,
      g.firstStartedAt,
    );
    return Promise.resolve();
  }

  getGrain(id: string): Promise<Grain | undefined> {
    const row = this.#get("select * from grains where id = ?", id);
    return Promise.resolve(row && toGrain(row));
  }

  listGrainsOwnedBy(userId: string): Promise<Grain[]> {
    return Promise.resolve(
      this.#all(
        "select * from grains where owner_id = ? order by created_at",
        userId,
      ).map(toGrain),
    );
  }

  listAllGrains(): Promise<Grain[]> {
    return Promise.resolve(
      this.#all("select * from grains order by created_at").map(toGrain),
    );
  }

  renameGrain(id: string, title: string): Promise<void> {
    this.#run("update grains set title = ? where id = ?", title, id);
    return Promise.resolve();
  }

  setGrainSize(id: string, sizeBytes: number): Promise<void> {
    this.#run("update grains set size_bytes = ? where id = ?", sizeBytes, id);
    return Promise.resolve();
  }

  touchGrain(id: string, now: number): Promise<void> {
    this.#run("update grains set last_used_at = ? where id = ?", now, id);
    return Promise.resolve();
  }

  markGrainStarted(id: string, now: number): Promise<void> {
    this.#run(
      "update grains set first_started_at = ? where id = ? and first_started_at = 0",
      now,
      id,
    );
    return Promise.resolve();
  }

  deleteGrain(id: string): Promise<void> {
    this.#db.exec("begin immediate");
    try {
      this.#run("delete from grain_sessions where grain_id = ?", id);
      this.#run("delete from claims where grain_id = ?", id);
      this.#run("delete from shares where grain_id = ?", id);
      this.#run("delete from grains where id = ?", id);
      this.#db.exec("commit");
    } catch (error) {
      this.#db.exec("rollback");
      throw error;
    }
    return Promise.resolve();
  }

  storageUsedBy(userId: string): Promise<number> {
    const row = this.#get(
      "select coalesce(sum(size_bytes), 0) as n from grains where owner_id = ?",
      userId,
    );
    return Promise.resolve(num(row!.n));
  }

  createShare(s: Share): Promise<void> {
    this.#run(
      "insert into shares values (?, ?, ?, ?, ?, ?, ?)",
      s.id,
      s.grainId,
      s.createdBy,
      s.roleIndex,
      s.label,
      s.createdAt,
      s.revoked ? 1 : 0,
    );
    return Promise.resolve();
  }

  getShare(id: string): Promise<Share | undefined> {
    const row = this.#get("select * from shares where id = ?", id);
    return Promise.resolve(row && toShare(row));
  }

  listShares(grainId: string): Promise<Share[]> {
    return Promise.resolve(
      this.#all(
        "select * from shares where grain_id = ? order by created_at",
        grainId,
      ).map(toShare),
    );
  }

  revokeShare(id: string): Promise<void> {
    this.#run("update shares set revoked = 1 where id = ?", id);
    return Promise.resolve();
  }

  addClaim(c: Claim): Promise<void> {
    this.#run(
      "insert or ignore into claims values (?, ?, ?, ?)",
      c.userId,
      c.grainId,
      c.shareId,
      c.createdAt,
    );
    return Promise.resolve();
  }

  #toClaim(r: Row): Claim {
    return {
      userId: str(r.user_id),
      grainId: str(r.grain_id),
      shareId: str(r.share_id),
      createdAt: num(r.created_at),
    };
  }

  listClaims(userId: string): Promise<Claim[]> {
    return Promise.resolve(
      this.#all(
        "select * from claims where user_id = ? order by created_at",
        userId,
      ).map((r) => this.#toClaim(r)),
    );
  }

  getClaim(userId: string, grainId: string): Promise<Claim | undefined> {
    const row = this.#get(
      "select * from claims where user_id = ? and grain_id = ?",
      userId,
      grainId,
    );
    return Promise.resolve(row && this.#toClaim(row));
  }

  createGrainSession(s: GrainSession): Promise<void> {
    try {
      this.#run(
        "insert into grain_sessions values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        s.id,
        s.grainId,
        s.userId,
        s.hostLabel,
        s.roleIndex,
        s.canWrite ? 1 : 0,
        s.backend,
        s.createdAt,
        s.expiresAt,
      );
    } catch (error) {
      if (isUniqueViolation(error)) {
        return Promise.reject(
          new ConflictError(`host label ${s.hostLabel} is in use`),
        );
      }
      throw error;
    }
    return Promise.resolve();
  }

  getGrainSessionByHost(hostLabel: string): Promise<GrainSession | undefined> {
    const row = this.#get(
      "select * from grain_sessions where host_label = ?",
      hostLabel,
    );
    return Promise.resolve(row && toGrainSession(row));
  }

  listGrainSessions(): Promise<GrainSession[]> {
    return Promise.resolve(
      this.#all("select * from grain_sessions order by created_at").map(
        toGrainSession,
      ),
    );
  }

  deleteGrainSession(id: string): Promise<void> {
    this.#run("delete from grain_sessions where id = ?", id);
    return Promise.resolve();
  }

  deleteExpiredGrainSessions(now: number): Promise<GrainSession[]> {
    const rows = this.#all(
      "delete from grain_sessions where expires_at < ? returning *",
      now,
    );
    return Promise.resolve(rows.map(toGrainSession));
  }

  heartbeat(r: Replica): Promise<void> {
    this.#run(
      `insert into replicas values (?, ?, ?, ?, ?, ?, ?, ?)
       on conflict (id) do update set address = excluded.address,
         rss_bytes = excluded.rss_bytes, last_seen_at = excluded.last_seen_at`,
      r.id,
      r.role,
      r.address,
      r.hostname,
      r.pid,
      r.rssBytes,
      r.startedAt,
      r.lastSeenAt,
    );
    return Promise.resolve();
  }

  listReplicas(since: number): Promise<Replica[]> {
    return Promise.resolve(
      this.#all(
        "select * from replicas where last_seen_at >= ? order by role, id",
        since,
      ).map(toReplica),
    );
  }

  removeReplica(id: string): Promise<void> {
    this.#run("delete from replicas where id = ?", id);
    return Promise.resolve();
  }

  getSetting(name: string): Promise<string | undefined> {
    const row = this.#get("select value from settings where name = ?", name);
    return Promise.resolve(row && str(row.value));
  }

  initSetting(name: string, value: string): Promise<string> {
    this.#run("insert or ignore into settings values (?, ?)", name, value);
    return this.getSetting(name) as Promise<string>;
  }

  close(): Promise<void> {
    this.#db.close();
    return Promise.resolve();
  }
}
