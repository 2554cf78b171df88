/**
 * The shell's data: users, sign-in sessions, packages, installed apps,
 * grains, share links, grain web sessions and live replicas. One interface,
 * two backends (SQLite for a single machine, MongoDB for a cluster), and one
 * test suite that runs against both.
 *
 * Times are milliseconds since the epoch. Every id is an opaque random
 * string made by the caller, so that both backends store the same values.
 *
 * @module
 */

/** A person who can sign in. */
export interface User {
  id: string;
  /** Sign-in name, unique, compared exactly (callers lowercase it). */
  name: string;
  displayName: string;
  /** "scrypt$N$r$p$salt$hash" as written by services/shell/password.ts. */
  passwordHash: string;
  isAdmin: boolean;
  /** Storage this user's grains may use in total. */
  quotaBytes: number;
  createdAt: number;
}

/** A signed-in browser. The cookie carries a secret whose SHA-256 is `id`,
 * so a leaked database does not hand out live sessions. */
export interface LoginSession {
  id: string;
  userId: string;
  /** Sent back with every form; a form without it is refused. */
  csrfToken: string;
  createdAt: number;
  expiresAt: number;
}

/** A role an app declares (Sandstorm's `roles` in the view info), or one
 * of the two default roles for apps that declare none. */
export interface AppRole {
  title: string;
  /** False makes the gateway refuse every request that could change the
   * grain (all but GET, HEAD and OPTIONS). True for the default editor
   * and for every role an app declares: such apps enforce their own
   * permissions. */
  canWrite: boolean;
  /** The app's permission flags this role grants, passed to the app with
   * each session; absent for the default roles. */
  permissions?: boolean[];
  /** An app role kept for existing links but no longer offered. */
  obsolete?: boolean;
}

/** What the shell keeps of a package's manifest. */
export interface PackageInfo {
  /** Package ID: derived from the package's bytes. */
  id: string;
  /** App ID: derived from the signing key. */
  appId: string;
  title: string;
  version: string;
  /** Title of the grains it creates ("New note"). */
  newGrainTitle: string;
  roles: AppRole[];
  sizeBytes: number;
  uploadedBy: string;
  createdAt: number;
}

/** An app as one user sees it: the package they installed. */
export interface Install {
  userId: string;
  packageId: string;
  appId: string;
  createdAt: number;
}

/** A grain: one instance of an app, owned by one user. */
export interface Grain {
  id: string;
  ownerId: string;
  packageId: string;
  appId: string;
  title: string;
  /** Last size the grain's volume reported. */
  sizeBytes: number;
  createdAt: number;
  lastUsedAt: number;
  /** When a worker first started the grain; 0 until then. A grain that
   * never started is new (its app's first action runs); one that did is
   * restored on its volume. */
  firstStartedAt: number;
}

/** A share link. The link carries a secret whose SHA-256 is `id`. */
export interface Share {
  id: string;
  grainId: string;
  createdBy: string;
  /** Index into the app's roles. */
  roleIndex: number;
  /** A note for the sharer ("for Bob"). */
  label: string;
  createdAt: number;
  revoked: boolean;
}

/** A user who opened a share link: the grain then shows in their list. */
export interface Claim {
  userId: string;
  grainId: string;
  shareId: string;
  createdAt: number;
}

/** One open view of a grain, on its own random hostname. */
export interface GrainSession {
  id: string;
  grainId: string;
  /** Empty for anonymous visitors who came by a share link. */
  userId: string;
  /** The random host label, unique per session. */
  hostLabel: string;
  roleIndex: number;
  canWrite: boolean;
  /** Where the gateway sends this session's requests. */
  backend: string;
  createdAt: number;
  expiresAt: number;
}

/** A live process of the shell or another role, for the admin page. */
export interface Replica {
  id: string;
  role: string;
  /** Where it serves, as "host:port". */
  address: string;
  hostname: string;
  pid: number;
  rssBytes: number;
  startedAt: number;
  lastSeenAt: number;
}

/** Thrown when a write would break a uniqueness rule. */
export class ConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConflictError";
  }
}

/** The shell's storage. Every method is atomic on its own. */
export interface ShellRepository {
  readonly backend: "sqlite" | "mongodb";

  createUser(user: User): Promise<void>;
  getUser(id: string): Promise<User | undefined>;
  getUserByName(name: string): Promise<User | undefined>;
  listUsers(): Promise<User[]>;
  countUsers(): Promise<number>;
  setUserQuota(id: string, quotaBytes: number): Promise<void>;

  createLoginSession(session: LoginSession): Promise<void>;
  getLoginSession(id: string): Promise<LoginSession | undefined>;
  deleteLoginSession(id: string): Promise<void>;
  /** Removes sessions that expired before `now`; returns how many. */
  deleteExpiredLoginSessions(now: number): Promise<number>;

  /** Adds a package; adding the same id again keeps the first. Returns
   * whether it was new. */
  putPackage(info: PackageInfo): Promise<boolean>;
  getPackage(id: string): Promise<PackageInfo | undefined>;
  listPackages(): Promise<PackageInfo[]>;
  deletePackage(id: string): Promise<void>;
  /** Replaces a package's roles with the ones its app declares. */
  setPackageRoles(id: string, roles: AppRole[]): Promise<void>;

  /** Installs a package for a user; installing again is a no-op. */
  install(install: Install): Promise<void>;
  listInstalls(userId: string): Promise<Install[]>;
  uninstall(userId: string, packageId: string): Promise<void>;

  createGrain(grain: Grain): Promise<void>;
  getGrain(id: string): Promise<Grain | undefined>;
  listGrainsOwnedBy(userId: string): Promise<Grain[]>;
  listAllGrains(): Promise<Grain[]>;
  renameGrain(id: string, title: string): Promise<void>;
  setGrainSize(id: string, sizeBytes: number): Promise<void>;
  touchGrain(id: string, now: number): Promise<void>;
  /** Records the first start; later calls keep the first time. */
  markGrainStarted(id: string, now: number): Promise<void>;
  /** Deletes the grain with its shares, claims and sessions. */
  deleteGrain(id: string): Promise<void>;
  /** Bytes used by every grain the user owns. */
  storageUsedBy(userId: string): Promise<number>;

  createShare(share: Share): Promise<void>;
  getShare(id: string): Promise<Share | undefined>;
  listShares(grainId: string): Promise<Share[]>;
  revokeShare(id: string): Promise<void>;

  /** Records that a user opened a share link; again is a no-op. */
  addClaim(claim: Claim): Promise<void>;
  listClaims(userId: string): Promise<Claim[]>;
  getClaim(userId: string, grainId: string): Promise<Claim | undefined>;

  createGrainSession(session: GrainSession): Promise<void>;
  getGrainSessionByHost(hostLabel: string): Promise<GrainSession | undefined>;
  listGrainSessions(): Promise<GrainSession[]>;
  deleteGrainSession(id: string): Promise<void>;
  deleteExpiredGrainSessions(now: number): Promise<GrainSession[]>;

  /** Inserts or refreshes a replica's row. */
  heartbeat(replica: Replica): Promise<void>;
  /** Replicas seen at or after `since`. */
  listReplicas(since: number): Promise<Replica[]>;
  removeReplica(id: string): Promise<void>;

  /** A value kept across restarts (for example the cookie key). */
  getSetting(name: string): Promise<string | undefined>;
  /** Sets a value only if it is not set yet; returns the value that won. */
  initSetting(name: string, value: string): Promise<string>;

  close(): Promise<void>;
}
