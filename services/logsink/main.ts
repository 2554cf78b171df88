/**
 * Entry point of the log sink role: `deno run ... services/logsink/main.ts
 * --config FILE`. See sink.ts for what it does and config fields.
 *
 * @module
 */
import { runService } from "../runtime/service.ts";
import { LogSink, logSinkConfig } from "./sink.ts";

if (import.meta.main) {
  await runService({
    role: "logsink",
    config: logSinkConfig,
    start: (config, log) => LogSink.start(config, log),
  });
}
