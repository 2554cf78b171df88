/**
 * The life of a role's process: read configuration, start, serve, and on
 * SIGTERM or SIGINT stop gracefully within a deadline.
 *
 * @module
 */
import type { z } from "zod";
import { ConfigError, loadConfig, parseConfigArgs } from "./config.ts";
import { Logger, type LogLevel } from "./log.ts";
import { LogShipper } from "./log_shipper.ts";

/** What a running role hands back so that it can be stopped. */
export interface RunningService {
  /** Stops accepting work, finishes or cancels what is in flight, and
   * releases every resource. Called once. */
  stop(): Promise<void>;
  /** Resolves if the service ends on its own (for example a fatal error);
   * the process then exits with status 1. */
  done?: Promise<void>;
}

/** Describes a role to {@link runService}. */
export interface ServiceDefinition<T extends z.ZodType> {
  role: string;
  /** The role's configuration schema; use z.strictObject so that unknown
   * fields are reported instead of ignored. */
  config: T;
  start(config: z.infer<T>, log: Logger): Promise<RunningService>;
  /** How long stop() may take before the process exits anyway. */
  stopTimeoutMs?: number;
}

/** Options that tests use to drive a service without a process around it. */
export interface RunOptions {
  args?: string[];
  logLevel?: LogLevel;
  /** Whether to call Deno.exit when done; tests pass false. */
  exit?: boolean;
}

/** BLACKROCK_LOG_LEVEL, when the role may read it and it names a level. */
function logLevelFromEnvironment(): LogLevel | undefined {
  const name = "BLACKROCK_LOG_LEVEL";
  if (
    Deno.permissions.querySync({ name: "env", variable: name }).state !==
      "granted"
  ) {
    return undefined;
  }
  const value = Deno.env.get(name);
  return value === "debug" || value === "info" || value === "warn" ||
      value === "error"
    ? value
    : undefined;
}

/**
 * Runs a role until a stop signal. Configuration errors are printed as one
 * log line naming each bad field, and the process exits with status 2.
 */
export async function runService<T extends z.ZodType>(
  definition: ServiceDefinition<T>,
  options: RunOptions = {},
): Promise<number> {
  const args = options.args ?? Deno.args;
  const exit = options.exit ?? true;
  const level = options.logLevel ?? logLevelFromEnvironment();
  let log = new Logger({ role: definition.role, level });
  let shipper: LogShipper | undefined;
  const finish = async (code: number) => {
    await shipper?.close();
    if (exit) Deno.exit(code);
    return code;
  };

  let config: z.infer<T>;
  try {
    const source = parseConfigArgs(args);
    if (source.logSink !== undefined) {
      shipper = new LogShipper(source.logSink);
      log = new Logger({
        role: definition.role,
        level,
        writer: shipper.writer,
      });
    }
    config = await loadConfig(definition.config, source);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    log.error("config-invalid", { problem: error.message });
    return await finish(2);
  }

  let service: RunningService;
  try {
    service = await definition.start(config, log);
  } catch (error) {
    log.error("start-failed", { error });
    return await finish(1);
  }
  const stopSignal = Promise.withResolvers<string>();
  const signals: Deno.Signal[] = ["SIGTERM", "SIGINT"];
  const handlers = signals.map((signal) => {
    const handler = () => stopSignal.resolve(signal);
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });
  // Only now: whoever waits for "started" may stop the role gracefully.
  log.info("started", { pid: Deno.pid });

  const ended = service.done?.then(() => "ended" as const) ??
    new Promise<never>(() => {});
  const reason = await Promise.race([stopSignal.promise, ended]);
  for (const [signal, handler] of handlers) {
    Deno.removeSignalListener(signal, handler);
  }
  if (reason === "ended") {
    log.error("ended-unexpectedly");
    return await finish(1);
  }

  log.info("stopping", { signal: reason });
  const timeoutMs = definition.stopTimeoutMs ?? 10_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  try {
    const outcome = await Promise.race([
      service.stop().then(() => "stopped" as const),
      timedOut,
    ]);
    if (outcome === "timeout") {
      log.error("stop-timeout", { timeoutMs });
      return await finish(1);
    }
  } catch (error) {
    log.error("stop-failed", { error });
    return await finish(1);
  } finally {
    clearTimeout(timer);
  }
  log.info("stopped");
  return await finish(0);
}
