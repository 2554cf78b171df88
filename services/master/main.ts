/**
 * The master's process: reads the cluster description, runs a round of
 * {@link Master.tick} every poll interval, and serves `Master`
 * (proto/master.capnp) so that tools can show the cluster and add or
 * remove machines. Machines added or removed are written back to the
 * description, so a restarted master knows them.
 *
 * The cluster description is JSON:
 *
 * ```json
 * {
 *   "machines": [{ "name": "m1", "agentAddress": "10.77.0.1:7000" }],
 *   "needs": { "coordinators": 2, "storage": 1, "gateways": 1, "shells": 1 },
 *   "roleSettings": { "gateway": { "mainHost": "example.com" } }
 * }
 * ```
 *
 * The master adds the cluster's shared secrets (services/master/secrets.ts)
 * the first time it reads a description without them, and rewrites the
 * file readable by root only.
 *
 * @module
 */
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import { RpcAgentLink } from "./agent_client.ts";
import { DEFAULT_NEEDS } from "./assign.ts";
import { Master } from "./master.ts";
import { masterCapability, RpcDrainLink } from "./rpc_service.ts";
import { ClusterSecrets, generateSecrets, withSecrets } from "./secrets.ts";
import * as rpc from "../rpc/mod.ts";

const roleName = z.enum([
  "coordinator",
  "storage",
  "worker",
  "gateway",
  "shell",
]);

/** The cluster description's schema. */
export const ClusterDescription = z.strictObject({
  machines: z.array(z.strictObject({
    name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/),
    agentAddress: z.string().min(3),
  })),
  needs: z.strictObject({
    coordinators: z.number().int().min(1),
    storage: z.number().int().min(1),
    gateways: z.number().int().min(1),
    shells: z.number().int().min(1),
  }).default(DEFAULT_NEEDS),
  roleSettings: z.partialRecord(roleName, z.record(z.string(), z.string()))
    .default({}),
  /** Made by the master when missing (see secrets.ts). */
  secrets: ClusterSecrets.optional(),
});
/** See {@link ClusterDescription}. */
export type ClusterDescription = z.infer<typeof ClusterDescription>;

/** The master's configuration. */
export const masterConfig = z.strictObject({
  description: z.string(),
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(7001),
  }).default({ hostname: "127.0.0.1", port: 7001 }),
  pollIntervalMs: z.number().int().positive().default(1000),
  deadAfterMs: z.number().int().positive().default(5000),
});

async function readDescription(path: string): Promise<ClusterDescription> {
  const text = await Deno.readTextFile(path);
  const result = ClusterDescription.safeParse(JSON.parse(text));
  if (!result.success) {
    throw new Error(
      `cluster description ${path} is invalid: ` +
        result.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`)
          .join("; "),
    );
  }
  return result.data;
}

if (import.meta.main) {
  await runService({
    role: "master",
    config: masterConfig,
    async start(config, log) {
      const description = await readDescription(config.description);
      const secrets = description.secrets ?? generateSecrets();
      description.secrets = secrets;
      const link = new RpcAgentLink();
      let master: Master | undefined = undefined;
      const coordinatorAddresses = () =>
        master!.status().machines.filter((m) => m.alive).flatMap((m) =>
          m.report!.roles.filter((r) => r.role === "coordinator")
            .map((r) => r.address)
        );
      master = new Master({
        link,
        log,
        drain: new RpcDrainLink(coordinatorAddresses, log),
        needs: description.needs,
        roleSettings: withSecrets(description.roleSettings, secrets),
        deadAfterMs: config.deadAfterMs,
      });
      for (const machine of description.machines) master.addMachine(machine);

      const save = async () => {
        const next: ClusterDescription = {
          ...description,
          machines: master!.status().machines.map((m) => ({
            name: m.name,
            agentAddress: m.agentAddress,
          })),
        };
        const temporary = `${config.description}.tmp`;
        await Deno.writeTextFile(temporary, JSON.stringify(next, null, 2), {
          mode: 0o600,
        });
        await Deno.chmod(temporary, 0o600);
        await Deno.rename(temporary, config.description);
      };
      await save();
      const cap = masterCapability(master, save);
      const server = rpc.serveTcp(cap, config.listen, {
        onAcceptError: (error) => log.error("accept-failed", { error }),
      });
      log.info("listening", { ...config.listen, port: server.port });

      let round = Promise.resolve();
      const timer = setInterval(() => {
        round = round.then(async () => {
          try {
            await master!.tick();
          } catch (error) {
            log.error("round-failed", { error });
          }
        });
      }, config.pollIntervalMs);
      return {
        async stop() {
          clearInterval(timer);
          await round;
          server.close();
          cap.close();
          link.close();
        },
      };
    },
  });
}
