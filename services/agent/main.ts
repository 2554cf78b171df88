/**
 * The machine agent's process: boots the agent, serves its `Agent`
 * capability to the master, and runs until stopped (its roles stop with
 * it; they start again at the next boot from the saved assignment).
 *
 * Permissions it needs (see image/units/blackrock-agent.service and
 * tasks/cluster.ts): listen on its control port, read the code and its
 * state folder, write its state folder, run the Deno binary, and read the
 * machine's memory size.
 *
 * @module
 */
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import { Agent } from "./agent.ts";
import { listenControl } from "./control.ts";
import { defaultCatalogue } from "./roles.ts";

/** The agent's configuration. */
export const agentConfig = z.strictObject({
  /** The machine's name in the cluster description. */
  machine: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/),
  /** Wiped with the machine: holds the vat keys and last assignment. */
  stateDir: z.string().default("/var/lib/blackrock"),
  /** The machine's address on the cluster network. */
  address: z.string().default("127.0.0.1"),
  controlPort: z.number().int().min(1).max(65535).default(7000),
  /** Hosts the master may call from; empty lets any host call. */
  masterHosts: z.array(z.string()).default([]),
  codeRoot: z.string().default(
    new URL("../../", import.meta.url).pathname.replace(/\/$/, ""),
  ),
  clusterHosts: z.array(z.string()).default([]),
  coordinatorStateFile: z.string().default(
    "/var/lib/blackrock/shared/grains.sqlite",
  ),
  /** A folder every machine's shell shares for its database and packages
   * (the simulated cluster's stand-in for MongoDB); without it, each shell
   * keeps them in its own role folder. */
  shellDataDir: z.string().optional(),
  libc: z.string().default("/lib/x86_64-linux-gnu/libc.so.6"),
  /** The worker's cgroup and its grains' host uids: unique per machine
   * and per cluster where machines or clusters share a host (see
   * tasks/cluster.ts). Without a name, `blackrock-worker-<machine>`. */
  workerCgroupName: z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/).optional(),
  workerUidFirst: z.number().int().min(1000).default(100_000),
  workerUidCount: z.number().int().min(1).max(65_536).default(4096),
  /** Numbers a simulated machine claims instead of measuring. */
  claimedSpecs: z.strictObject({
    cores: z.number().int().positive().optional(),
    memoryBytes: z.number().int().positive().optional(),
    diskBytes: z.number().int().positive().optional(),
  }).default({}),
});

if (import.meta.main) {
  await runService({
    role: "agent",
    config: agentConfig,
    async start(config, log) {
      const agent = await Agent.start({
        machine: config.machine,
        stateDir: config.stateDir,
        address: config.address,
        catalogue: defaultCatalogue(config),
        claimedSpecs: config.claimedSpecs,
        log,
      });
      const control = listenControl(
        agent,
        { hostname: config.address, port: config.controlPort },
        log,
        config.masterHosts,
      );
      if (config.masterHosts.length === 0) {
        log.warn("control-open", {
          reason: "masterHosts is empty: any host may assign roles",
        });
      }
      log.info("listening", {
        address: config.address,
        port: control.port,
      });
      return {
        async stop() {
          control.close();
          await agent.stop();
        },
      };
    },
  });
}
