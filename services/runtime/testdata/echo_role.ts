// A minimal role for runtime tests: it logs its configuration, optionally
// tries to read a file it may not, and stops cleanly on SIGTERM.
import { z } from "zod";
import { runService } from "../service.ts";

await runService({
  role: "echo",
  config: z.strictObject({
    greeting: z.string().default("hello"),
    port: z.number().int().min(1).max(65535).default(4000),
    probeRead: z.string().optional(),
  }),
  start(config, log) {
    log.info("configured", { greeting: config.greeting, port: config.port });
    if (config.probeRead !== undefined) {
      try {
        Deno.readTextFileSync(config.probeRead);
        log.info("probe-read", { allowed: true });
      } catch (error) {
        log.info("probe-read", { allowed: false, error: String(error) });
      }
    }
    return Promise.resolve({
      stop: async () => {
        await new Promise((resolve) => setTimeout(resolve, 50));
        log.info("cleaned-up");
      },
    });
  },
});
