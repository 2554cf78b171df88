/**
 * The shell role: the web interface where people sign in, install apps and
 * use grains. Any number of replicas may run over one database; each one
 * registers with the gateway, which spreads the main hostname over them.
 *
 * At first start (no users at all) one replica creates the account
 * `admin` and prints its password once on standard output.
 *
 * @module
 */
import { hostname } from "node:os";
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import type { Logger } from "../runtime/log.ts";
import { HttpGrainRunner, noRunner } from "./grain_runner.ts";
import {
  DEFAULT_MAX_UNPACKED_BYTES,
  PackageStore,
  spkVerifierWith,
  uploadLimits,
} from "./packages.ts";
import { WorkerGrainRunner } from "./worker_client.ts";
import { ClusterGrainRunner } from "./cluster_runner.ts";
import { randomToken } from "./password.ts";
import { MongoRepository } from "./repo/mongo.ts";
import { SqliteRepository } from "./repo/sqlite.ts";
import {
  ConflictError,
  type Replica,
  type ShellRepository,
} from "./repo/types.ts";
import { createShellHandler, createUser, lookupRoute } from "./server.ts";
import { GatewayLink } from "./gateway_link.ts";

const GiB = 1024 ** 3;

/** The shell's configuration. */
export const shellConfig = z.strictObject({
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(0),
  }).default({ hostname: "127.0.0.1", port: 0 }),
  /** Public URL of the main hostname, as browsers see it. */
  baseUrl: z.string().url().default("https://localhost:8443"),
  /** Grain hostnames are `<random>.<grainHostSuffix>`. */
  grainHostSuffix: z.string().default("localhost:8443"),
  database: z.discriminatedUnion("kind", [
    z.strictObject({ kind: z.literal("sqlite"), path: z.string() }),
    z.strictObject({
      kind: z.literal("mongodb"),
      url: z.string(),
      name: z.string().default("blackrock"),
    }),
  ]).default({ kind: "sqlite", path: ".data/shell/shell.sqlite" }),
  packageDir: z.string().default(".data/shell/packages"),
  maxUploadBytes: z.number().int().positive().default(GiB),
  /** What an uploaded package may unpack to (packages.ts). */
  maxUnpackedBytes: z.number().int().positive().default(
    DEFAULT_MAX_UNPACKED_BYTES,
  ),
  defaultQuotaBytes: z.number().int().nonnegative().default(10 * GiB),
  runner: z.discriminatedUnion("kind", [
    z.strictObject({ kind: z.literal("none") }),
    z.strictObject({ kind: z.literal("http"), url: z.string().url() }),
    z.strictObject({
      kind: z.literal("worker"),
      hostname: z.string().default("127.0.0.1"),
      port: z.number().int().min(1).max(65535),
    }),
    /** In a cluster: coordinators place grains (cluster_runner.ts). */
    z.strictObject({
      kind: z.literal("cluster"),
      coordinators: z.array(z.strictObject({
        hostname: z.string(),
        port: z.number().int().min(1).max(65535),
      })).min(1),
      directoryFile: z.string().min(1),
    }),
  ]).default({ kind: "none" }),
  gateway: z.strictObject({
    /** The gateway's control port (RPC, proto/gateway.capnp), where
     * replicas register. */
    control: z.strictObject({
      hostname: z.string().default("127.0.0.1"),
      port: z.number().int().min(1).max(65535),
    }).optional(),
    /** Shared secret between shells and gateways. */
    token: z.string().min(16),
  }),
  heartbeatMs: z.number().int().positive().default(2000),
});

type ShellConfig = z.infer<typeof shellConfig>;

async function openRepository(config: ShellConfig): Promise<ShellRepository> {
  if (config.database.kind === "mongodb") {
    return await MongoRepository.connect(
      config.database.url,
      config.database.name,
    );
  }
  const path = config.database.path;
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  // Password hashes and session ids: the folder and the database files
  // (with SQLite's journals) are for this user alone.
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  await Deno.chmod(dir, 0o700);
  const repo = new SqliteRepository(path);
  for (const file of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) {
    await Deno.chmod(file, 0o600).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }
  return repo;
}

/** Creates the first admin if there are no users; prints the password. */
async function ensureAdmin(
  repo: ShellRepository,
  config: ShellConfig,
  log: Logger,
) {
  if ((await repo.countUsers()) > 0) return;
  const password = randomToken(12);
  try {
    await createUser(repo, {
      name: "admin",
      displayName: "Administrator",
      password,
      isAdmin: true,
      quotaBytes: config.defaultQuotaBytes,
    });
  } catch (error) {
    if (error instanceof ConflictError) return;
    throw error;
  }
  log.info("admin-created", { name: "admin" });
  // Printed, not logged: logs never carry secrets, and this is shown once.
  console.log(
    `Blackrock admin account created. User name: admin  Password: ${password}`,
  );
}

/** The gateway as the admin page shows it, or nothing if it is away. */
async function gatewayReplicas(link?: GatewayLink): Promise<Replica[]> {
  const status = await link?.status();
  if (status === undefined) return [];
  return [{
    id: `gateway-${status.pid}`,
    role: "gateway",
    address: status.address,
    hostname: status.hostname,
    pid: status.pid,
    rssBytes: status.rssBytes,
    startedAt: status.startedAtMs,
    lastSeenAt: Date.now(),
  }];
}

if (import.meta.main) {
  await runService({
    role: "shell",
    config: shellConfig,
    async start(config, log) {
      const repo = await openRepository(config);
      await ensureAdmin(repo, config, log);
      const runner = config.runner.kind === "http"
        ? new HttpGrainRunner(config.runner.url)
        : config.runner.kind === "worker"
        ? new WorkerGrainRunner(config.runner)
        : config.runner.kind === "cluster"
        ? new ClusterGrainRunner(config.runner)
        : noRunner;
      const packages = new PackageStore(
        config.packageDir,
        config.maxUploadBytes,
      );
      const abandoned = await packages.sweepAbandoned();
      if (abandoned > 0) log.info("abandoned-uploads-removed", { abandoned });
      const handler = createShellHandler({
        repo,
        packages,
        verifier: spkVerifierWith(uploadLimits(config.maxUnpackedBytes)),
        runner,
        log,
        baseUrl: config.baseUrl,
        grainHostSuffix: config.grainHostSuffix,
        defaultQuotaBytes: config.defaultQuotaBytes,
        otherReplicas: () => gatewayReplicas(gateway),
      });
      const server = Deno.serve({
        hostname: config.listen.hostname,
        port: config.listen.port,
        onListen: () => {},
      }, handler);
      const address = `${config.listen.hostname}:${server.addr.port}`;
      log.info("listening", { address });

      const id = `shell-${randomToken(6)}`;
      const gateway = config.gateway.control === undefined
        ? undefined
        : new GatewayLink({
          address: config.gateway.control,
          token: config.gateway.token,
          shellId: id,
          httpAddress: address,
          lookup: (label) => lookupRoute(repo, label),
        });
      const startedAt = Date.now();
      const beat = async () => {
        const now = Date.now();
        await repo.heartbeat({
          id,
          role: "shell",
          address,
          hostname: hostname(),
          pid: Deno.pid,
          rssBytes: Deno.memoryUsage().rss,
          startedAt,
          lastSeenAt: now,
        });
        await repo.deleteExpiredLoginSessions(now);
        await repo.deleteExpiredGrainSessions(now);
        await gateway?.heartbeat();
      };
      let beating = false;
      const timer = setInterval(() => {
        if (beating) return;
        beating = true;
        beat().catch((error) => log.warn("heartbeat-failed", { error }))
          .finally(() => beating = false);
      }, config.heartbeatMs);
      await beat().catch((error) => log.warn("heartbeat-failed", { error }));
      console.log(
        `Shell listening on http://${address}/ for ${config.baseUrl}`,
      );

      return {
        done: server.finished,
        async stop() {
          clearInterval(timer);
          await gateway?.close();
          await server.shutdown();
          await repo.removeReplica(id);
          await repo.close();
          if (
            runner instanceof WorkerGrainRunner ||
            runner instanceof ClusterGrainRunner
          ) runner.close();
        },
      };
    },
  });
}
