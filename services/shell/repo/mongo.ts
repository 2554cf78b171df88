/**
 * The shell's repository on MongoDB (npm:mongodb), for a cluster's mongo
 * role. Each record is one document keyed by its own `id` field with a
 * unique index; MongoDB's `_id` is left to the server.
 *
 * Writes that must not duplicate (a user name, an install, a claim, a
 * setting) are upserts with `$setOnInsert`: the server either inserts or
 * finds the existing document, and with the unique index two racing
 * upserts cannot both insert (the loser gets error 11000, reported as a
 * conflict). Deleting a grain touches four collections without a
 * transaction: the grain goes first, so that a failure half-way leaves
 * only unreachable shares and sessions behind, never a reachable grain
 * whose links were removed.
 *
 * @module
 */
import { type Collection, type Db, MongoClient } from "mongodb";
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

// deno-lint-ignore no-explicit-any
type Doc = Record<string, any>;

const DUPLICATE_KEY = 11000;

function isDuplicateKey(error: unknown): boolean {
  return typeof error === "object" && error !== null &&
    (error as { code?: unknown }).code === DUPLICATE_KEY;
}

/** Drops MongoDB's `_id` so that records compare equal across backends. */
function strip<T>(doc: Doc | null): T | undefined {
  if (doc === null) return undefined;
  const { _id, ...rest } = doc;
  return rest as T;
}

const NO_ID = { projection: { _id: 0 } };

/**
 * Connects to MongoDB and makes the indexes the shell relies on.
 *
 * @example
 * ```ts ignore
 * import { MongoRepository } from "./mongo.ts";
 * const repo = await MongoRepository.connect("mongodb://127.0.0.1/", "shell");
 * await repo.close();
 * ```
 */
export class MongoRepository implements ShellRepository {
  readonly backend = "mongodb" as const;
  readonly #client: MongoClient;
  readonly #db: Db;

  private constructor(client: MongoClient, db: Db) {
    this.#client = client;
    this.#db = db;
  }

  /** Connects and ensures indexes; fails if the server is unreachable. */
  static async connect(
    url: string,
    database: string,
  ): Promise<MongoRepository> {
    const client = new MongoClient(url, { serverSelectionTimeoutMS: 10_000 });
    await client.connect();
    const repo = new MongoRepository(client, client.db(database));
    await repo.#ensureIndexes();
    return repo;
  }

  async #ensureIndexes(): Promise<void> {
    const unique = { unique: true };
    await this.#c("users").createIndex({ id: 1 }, unique);
    await this.#c("users").createIndex({ name: 1 }, unique);
    await this.#c("loginSessions").createIndex({ id: 1 }, unique);
    await this.#c("packages").createIndex({ id: 1 }, unique);
    await this.#c("installs").createIndex({ userId: 1, packageId: 1 }, unique);
    await this.#c("grains").createIndex({ id: 1 }, unique);
    await this.#c("grains").createIndex({ ownerId: 1 });
    await this.#c("shares").createIndex({ id: 1 }, unique);
    await this.#c("shares").createIndex({ grainId: 1 });
    await this.#c("claims").createIndex({ userId: 1, grainId: 1 }, unique);
    await this.#c("grainSessions").createIndex({ id: 1 }, unique);
    await this.#c("grainSessions").createIndex({ hostLabel: 1 }, unique);
    await this.#c("replicas").createIndex({ id: 1 }, unique);
    await this.#c("settings").createIndex({ name: 1 }, unique);
  }

  #c(name: string): Collection<Doc> {
    return this.#db.collection<Doc>(name);
  }

  /** Inserts `doc` unless one matching `key` exists; true if inserted. */
  async #insertOnce(
    collection: string,
    key: Doc,
    doc: Doc,
  ): Promise<boolean> {
    try {
      const result = await this.#c(collection).updateOne(
        key,
        { $setOnInsert: { ...doc } },
        { upsert: true },
      );
      return result.upsertedCount === 1;
    } catch (error) {
      if (isDuplicateKey(error)) return false;
      throw error;
    }
  }

  async createUser(user: User): Promise<void> {
    const inserted = await this.#insertOnce("users", { name: user.name }, user);
    if (!inserted) {
      throw new ConflictError(
        `user name ${JSON.stringify(user.name)} is taken`,
      );
    }
  }

  async getUser(id: string): Promise<User | undefined> {
    return strip<User>(await this.#c("users").findOne({ id }, NO_ID));
  }

  async getUserByName(name: string): Promise<User | undefined> {
    return strip<User>(await this.#c("users").findOne({ name }, NO_ID));
  }

  async listUsers(): Promise<User[]> {
    const docs = await this.#c("users").find({}, NO_ID)
      .sort({ createdAt: 1, name: 1 }).toArray();
    return docs as unknown as User[];
  }

  countUsers(): Promise<number> {
    return this.#c("users").countDocuments({});
  }

  async setUserQuota(id: string, quotaBytes: number): Promise<void> {
    await this.#c("users").updateOne({ id }, { $set: { quotaBytes } });
  }

  async createLoginSession(session: LoginSession): Promise<void> {
    await this.#c("loginSessions").insertOne({ ...session });
  }

  async getLoginSession(id: string): Promise<LoginSession | undefined> {
    return strip<LoginSession>(
      await this.#c("loginSessions").findOne({ id }, NO_ID),
    );
  }

  async deleteLoginSession(id: string): Promise<void> {
    await this.#c("loginSessions").deleteOne({ id });
  }

  async deleteExpiredLoginSessions(now: number): Promise<number> {
    const result = await this.#c("loginSessions").deleteMany({
      expiresAt: { $lt: now },
    });
    return result.deletedCount;
  }

  putPackage(info: PackageInfo): Promise<boolean> {
    return this.#insertOnce("packages", { id: info.id }, info);
  }

  async getPackage(id: string): Promise<PackageInfo | undefined> {
    return strip<PackageInfo>(
      await this.#c("packages").findOne({ id }, NO_ID),
    );
  }

  async listPackages(): Promise<PackageInfo[]> {
    const docs = await this.#c("packages").find({}, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as PackageInfo[];
  }

  async deletePackage(id: string): Promise<void> {
    await this.#c("packages").deleteOne({ id });
  }

  async setPackageRoles(id: string, roles: AppRole[]): Promise<void> {
    await this.#c("packages").updateOne({ id }, { $set: { roles } });
  }

  async install(install: Install): Promise<void> {
    await this.#insertOnce(
      "installs",
      { userId: install.userId, packageId: install.packageId },
      install,
    );
  }

  async listInstalls(userId: string): Promise<Install[]> {
    const docs = await this.#c("installs").find({ userId }, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as Install[];
  }

  async uninstall(userId: string, packageId: string): Promise<void> {
    await this.#c("installs").deleteOne({ userId, packageId });
  }

  async createGrain(grain: Grain): Promise<void> {
    await this.#c("grains").insertOne({ ...grain });
  }

  async getGrain(id: string): Promise<Grain | undefined> {
    const grain = strip<Grain>(await this.#c("grains").findOne({ id }, NO_ID));
    return grain && { ...grain, firstStartedAt: grain.firstStartedAt ?? 0 };
  }

  async listGrainsOwnedBy(userId: string): Promise<Grain[]> {
    const docs = await this.#c("grains").find({ ownerId: userId }, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as Grain[];
  }

  async listAllGrains(): Promise<Grain[]> {
    const docs = await this.#c("grains").find({}, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as Grain[];
  }

  async renameGrain(id: string, title: string): Promise<void> {
    await this.#c("grains").updateOne({ id }, { $set: { title } });
  }

  async setGrainSize(id: string, sizeBytes: number): Promise<void> {
    await this.#c("grains").updateOne({ id }, { $set: { sizeBytes } });
  }

  async touchGrain(id: string, now: number): Promise<void> {
    await this.#c("grains").updateOne({ id }, { $set: { lastUsedAt: now } });
  }

  async markGrainStarted(id: string, now: number): Promise<void> {
    await this.#c("grains").updateOne(
      { id, firstStartedAt: { $in: [0, null] } },
      { $set: { firstStartedAt: now } },
    );
  }

  async deleteGrain(id: string): Promise<void> {
    await this.#c("grains").deleteOne({ id });
    await this.#c("grainSessions").deleteMany({ grainId: id });
    await this.#c("claims").deleteMany({ grainId: id });
    await this.#c("shares").deleteMany({ grainId: id });
  }

  async storageUsedBy(userId: string): Promise<number> {
    const rows = await this.#c("grains").aggregate([
      { $match: { ownerId: userId } },
      { $group: { _id: null, total: { $sum: "$sizeBytes" } } },
    ]).toArray();
    return rows.length === 0 ? 0 : Number(rows[0].total);
  }

  async createShare(share: Share): Promise<void> {
    await this.#c("shares").insertOne({ ...share });
  }

  async getShare(id: string): Promise<Share | undefined> {
    return strip<Share>(await this.#c("shares").findOne({ id }, NO_ID));
  }

  async listShares(grainId: string): Promise<Share[]> {
    const docs = await this.#c("shares").find({ grainId }, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as Share[];
  }

  async revokeShare(id: string): Promise<void> {
    await this.#c("shares").updateOne({ id }, { $set: { revoked: true } });
  }

  async addClaim(claim: Claim): Promise<void> {
    await this.#insertOnce(
      "claims",
      { userId: claim.userId, grainId: claim.grainId },
      claim,
    );
  }

  async listClaims(userId: string): Promise<Claim[]> {
    const docs = await this.#c("claims").find({ userId }, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as Claim[];
  }

  async getClaim(userId: string, grainId: string): Promise<Claim | undefined> {
    return strip<Claim>(
      await this.#c("claims").findOne({ userId, grainId }, NO_ID),
    );
  }

  async createGrainSession(session: GrainSession): Promise<void> {
    const inserted = await this.#insertOnce(
      "grainSessions",
      { hostLabel: session.hostLabel },
      session,
    );
    if (!inserted) {
      throw new ConflictError(`host label ${session.hostLabel} is in use`);
    }
  }

  async getGrainSessionByHost(
    hostLabel: string,
  ): Promise<GrainSession | undefined> {
    return strip<GrainSession>(
      await this.#c("grainSessions").findOne({ hostLabel }, NO_ID),
    );
  }

  async listGrainSessions(): Promise<GrainSession[]> {
    const docs = await this.#c("grainSessions").find({}, NO_ID)
      .sort({ createdAt: 1 }).toArray();
    return docs as unknown as GrainSession[];
  }

  async deleteGrainSession(id: string): Promise<void> {
    await this.#c("grainSessions").deleteOne({ id });
  }

  async deleteExpiredGrainSessions(now: number): Promise<GrainSession[]> {
    const filter = { expiresAt: { $lt: now } };
    const expired = await this.#c("grainSessions").find(filter, NO_ID)
      .toArray();
    if (expired.length > 0) {
      await this.#c("grainSessions").deleteMany({
        id: { $in: expired.map((s) => s.id) },
      });
    }
    return expired as unknown as GrainSession[];
  }

  async heartbeat(replica: Replica): Promise<void> {
    const { address, rssBytes, lastSeenAt, ...fixed } = replica;
    await this.#c("replicas").updateOne(
      { id: replica.id },
      { $set: { address, rssBytes, lastSeenAt }, $setOnInsert: fixed },
      { upsert: true },
    );
  }

  async listReplicas(since: number): Promise<Replica[]> {
    const docs = await this.#c("replicas")
      .find({ lastSeenAt: { $gte: since } }, NO_ID)
      .sort({ role: 1, id: 1 }).toArray();
    return docs as unknown as Replica[];
  }

  async removeReplica(id: string): Promise<void> {
    await this.#c("replicas").deleteOne({ id });
  }

  async getSetting(name: string): Promise<string | undefined> {
    const doc = await this.#c("settings").findOne({ name });
    return doc === null ? undefined : String(doc.value);
  }

  async initSetting(name: string, value: string): Promise<string> {
    await this.#insertOnce("settings", { name }, { name, value });
    return (await this.getSetting(name))!;
  }

  async close(): Promise<void> {
    await this.#client.close();
  }
}
