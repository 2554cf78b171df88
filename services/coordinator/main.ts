/**
 * The coordinator role: serves `Coordinator` (proto/coordinator.capnp) on
 * its TCP port and checks workers' heartbeats, moving the grains of a
 * worker that falls silent.
 *
 * Run it with permission to listen on its port and to read and write the
 * folder of its shared state file, for example:
 *
 * ```sh
 * deno run --allow-net=10.77.0.2:7101 --allow-read=/srv/state \
 *   --allow-write=/srv/state services/coordinator/main.ts \
 *   --set listen.hostname=10.77.0.2 --set stateFile=/srv/state/grains.sqlite
 * ```
 *
 * @module
 */
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import { Coordinator } from "./coordinator.ts";
import { coordinatorCapability, listenCapability } from "./rpc_service.ts";
import { SqliteStateStore } from "./shared_state.ts";

/** The coordinator's configuration. */
export const coordinatorConfig = z.strictObject({
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(7101),
  }).default({ hostname: "127.0.0.1", port: 7101 }),
  /** The grain records every coordinator shares (see shared_state.ts). */
  stateFile: z.string().default(".data/coordinator/grains.sqlite"),
  heartbeatTimeoutMs: z.number().int().positive().default(3000),
  checkIntervalMs: z.number().int().positive().default(500),
  /** Set by the machine agent; accepted so that the agent's standard
   * overrides do not make the configuration invalid. */
  vatKeyFile: z.string().optional(),
  directoryFile: z.string().optional(),
});

if (import.meta.main) {
  await runService({
    role: "coordinator",
    config: coordinatorConfig,
    start(config, log) {
      const state = new SqliteStateStore(config.stateFile);
      const coordinator = new Coordinator({
        state,
        log,
        heartbeatTimeoutMs: config.heartbeatTimeoutMs,
      });
      const listener = listenCapability(
        coordinatorCapability(coordinator),
        config.listen,
        log,
      );
      log.info("listening", { ...config.listen, port: listener.port });
      let checking = Promise.resolve();
      const timer = setInterval(() => {
        checking = checking.then(async () => {
          try {
            await coordinator.checkWorkers();
          } catch (error) {
            log.error("check-workers-failed", { error });
          }
        });
      }, config.checkIntervalMs);
      return Promise.resolve({
        async stop() {
          clearInterval(timer);
          await checking;
          listener.close();
          state.close();
        },
      });
    },
  });
}
