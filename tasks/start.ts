/**
 * The single-machine launcher behind `deno task start` (tasks/start.sh):
 * starts every role of tasks/single_machine_roles.ts as its own `deno run`
 * with only that role's permissions, restarts a role that crashes (with
 * backoff), and on SIGINT or SIGTERM stops every role gracefully, last
 * started first.
 *
 * Usage: deno task start [--data-dir DIR] [--base-port N] [--only a,b]
 *
 * Roles' log lines (JSON on their stderr) pass through to this process's
 * stderr; the table of what runs where goes to stdout.
 *
 * @module
 */
import { Logger } from "../services/runtime/log.ts";
import { roleCommand } from "../services/runtime/permissions.ts";
import {
  DEFAULT_BASE_PORT,
  relative,
  type RoleContext,
  type SingleMachineRole,
  singleMachineRoles,
} from "./single_machine_roles.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** First wait before restarting a crashed role; doubles per crash. */
const RESTART_FIRST_MS = 500;
const RESTART_MAX_MS = 30_000;
/** A role that ran this long before crashing starts its backoff afresh. */
const HEALTHY_RUN_MS = 30_000;
/** How long a role may take to stop before it is killed. */
const STOP_TIMEOUT_MS = 15_000;
/** Exit status of a role whose configuration is invalid (see
 * services/runtime/service.ts): restarting would not help. */
const CONFIG_INVALID = 2;

const log = new Logger({ role: "launcher" });

interface Options {
  dataDir: string;
  basePort: number;
  only?: string[];
}

class UsageError extends Error {}

function parseArgs(args: string[]): Options {
  const options: Options = {
    dataDir: `${ROOT}/.data`,
    basePort: DEFAULT_BASE_PORT,
  };
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].includes("=")
      ? [args[i].slice(0, args[i].indexOf("=")), args[i].split("=", 2)[1]]
      : [args[i], undefined];
    const value = () => {
      const next = inline ?? args[++i];
      if (next === undefined) throw new UsageError(`${flag} needs a value`);
      return next;
    };
    if (flag === "--data-dir") {
      const dir = value();
      options.dataDir = dir.startsWith("/") ? dir : `${Deno.cwd()}/${dir}`;
      // `deno task start` may write only under .data; say how to allow
      // another folder instead of failing later on the first write.
      const write = Deno.permissions.querySync({
        name: "write",
        path: options.dataDir,
      });
      if (write.state !== "granted") {
        throw new UsageError(
          `--data-dir ${options.dataDir} is not writable under this run's ` +
            `permissions; run \`deno run --allow-read --allow-run ` +
            `--allow-env --allow-net=127.0.0.1 ` +
            `--allow-write=${options.dataDir} tasks/start.ts ...\``,
        );
      }
    } else if (flag === "--base-port") {
      const port = Number(value());
      if (!Number.isInteger(port) || port < 1 || port > 65000) {
        throw new UsageError(`--base-port must be 1-65000, got ${port}`);
      }
      options.basePort = port;
    } else if (flag === "--only") {
      options.only = value().split(",").filter((name) => name !== "");
    } else {
      throw new UsageError(
        `unknown argument ${JSON.stringify(args[i])}; usage: ` +
          `start.ts [--data-dir DIR] [--base-port N] [--only role,role]`,
      );
    }
  }
  return options;
}

/** Gives each role its ports, in table order from the base port. */
function allocatePorts(
  roles: SingleMachineRole[],
  basePort: number,
): Record<string, number[]> {
  const ports: Record<string, number[]> = {};
  let next = basePort;
  for (const role of roles) {
    ports[role.name] = [];
    for (let i = 0; i < (role.ports ?? 0); i++) ports[role.name].push(next++);
  }
  return ports;
}

/** Shell text run before the role replaces the shell: kills the role's
 * process group if this launcher disappears without stopping it (for
 * example SIGKILL), so no role outlives it holding its ports. */
const WATCHDOG = `( while kill -0 $PPID 2>/dev/null; do sleep 1; done; ` +
  `kill -KILL 0 ) </dev/null >/dev/null 2>&1 & exec "$@"`;

/** Runs one role and restarts it when it crashes. */
class RoleRunner {
  readonly name: string;
  readonly #command: string[];
  readonly #onStarted: (pid: number, restarts: number) => void;
  #child: Deno.ChildProcess | undefined;
  #stopping = false;
  #wake: (() => void) | undefined;
  #restarts = 0;
  #failed = false;
  /** Resolves when the role is down for good (stopped or failed). */
  readonly done: Promise<void>;
  /** The exit status of the role's last run. */
  lastStatus: Deno.CommandStatus | undefined;

  constructor(
    name: string,
    command: string[],
    onStarted: (pid: number, restarts: number) => void,
  ) {
    this.name = name;
    this.#command = command;
    this.#onStarted = onStarted;
    this.done = this.#supervise();
  }

  get failed(): boolean {
    return this.#failed;
  }

  async #supervise(): Promise<void> {
    let backoffMs = RESTART_FIRST_MS;
    while (!this.#stopping) {
      const startedAt = Date.now();
      const status = await this.#runOnce();
      this.lastStatus = status;
      if (this.#stopping) return;
      if (status.code === CONFIG_INVALID) {
        this.#failed = true;
        log.error("role-config-invalid", { name: this.name, code: 2 });
        return;
      }
      if (Date.now() - startedAt >= HEALTHY_RUN_MS) {
        backoffMs = RESTART_FIRST_MS;
      }
      log.warn("role-crashed", {
        name: this.name,
        code: status.code,
        signal: status.signal,
        restartInMs: backoffMs,
      });
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, backoffMs);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
      backoffMs = Math.min(backoffMs * 2, RESTART_MAX_MS);
      this.#restarts++;
    }
  }

  async #runOnce(): Promise<Deno.CommandStatus> {
    const child = new Deno.Command("setsid", {
      args: ["sh", "-c", WATCHDOG, "sh", ...this.#command],
      cwd: ROOT,
      stdin: "null",
      stdout: "inherit",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const forwarding = this.#forward(child);
    const status = await child.status;
    this.#child = undefined;
    // The watchdog (and anything the role left behind) goes with it.
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // The group is already gone.
    }
    await forwarding;
    return status;
  }

  /** Copies the role's log lines to stderr, noting its "started" line. */
  async #forward(child: Deno.ChildProcess): Promise<void> {
    const encoder = new TextEncoder();
    let buffered = "";
    for await (
      const chunk of child.stderr.pipeThrough(new TextDecoderStream())
    ) {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop()!;
      for (const line of lines) {
        writeAll(Deno.stderr, encoder.encode(line + "\n"));
        if (line.includes('"started"')) {
          try {
            if (JSON.parse(line).event === "started") {
              this.#onStarted(child.pid, this.#restarts);
            }
          } catch {
            // Not a JSON line; passed through as it is.
          }
        }
      }
    }
    if (buffered !== "") writeAll(Deno.stderr, encoder.encode(buffered));
  }

  /** Sends SIGTERM and waits; kills the role if it takes too long. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    const child = this.#child;
    if (child !== undefined) {
      try {
        child.kill("SIGTERM");
      } catch {
        // It exited just now.
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((resolve) => {
        timer = setTimeout(() => resolve("late"), STOP_TIMEOUT_MS);
      });
      if (await Promise.race([child.status, late]) === "late") {
        log.error("role-stop-timeout", {
          name: this.name,
          timeoutMs: STOP_TIMEOUT_MS,
        });
        try {
          Deno.kill(-child.pid, "SIGKILL");
        } catch {
          // Gone meanwhile.
        }
      }
      clearTimeout(timer);
    }
    await this.done;
  }
}

function writeAll(
  file: { writeSync(p: Uint8Array): number },
  bytes: Uint8Array,
) {
  let written = 0;
  while (written < bytes.length) {
    written += file.writeSync(bytes.subarray(written));
  }
}

function print(text: string): void {
  writeAll(Deno.stdout, new TextEncoder().encode(text + "\n"));
}

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parseArgs(Deno.args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    log.error("usage", { problem: error.message });
    return 2;
  }

  let roles = singleMachineRoles;
  if (options.only !== undefined) {
    const unknown = options.only.filter((name) =>
      !roles.some((role) => role.name === name)
    );
    if (unknown.length > 0) {
      log.error("usage", {
        problem: `unknown roles ${unknown.join(", ")}; known: ${
          roles.map((r) => r.name).join(", ")
        }`,
      });
      return 2;
    }
    roles = roles.filter((role) => options.only!.includes(role.name));
  }

  const ports = allocatePorts(singleMachineRoles, options.basePort);
  const logSink = { hostname: "127.0.0.1", port: ports.logsink?.[0] ?? 0 };
  const contexts = new Map<string, RoleContext>();
  for (const role of roles) {
    const dataDir = `${options.dataDir}/${role.name}`;
    const context: RoleContext = {
      root: ROOT,
      dataDir,
      configFile: `${dataDir}/config.json`,
      ports,
      logSink,
    };
    await Deno.mkdir(dataDir, { recursive: true });
    // Configs hold tokens: private to this user, also when they existed.
    await Deno.writeTextFile(
      context.configFile,
      JSON.stringify(role.config(context), null, 2) + "\n",
      { mode: 0o600 },
    );
    await Deno.chmod(context.configFile, 0o600);
    contexts.set(role.name, context);
  }

  print(
    `blackrock: starting ${roles.length} role(s) on this machine, ` +
      `state in ${relative(ROOT, options.dataDir)}/`,
  );
  const width = Math.max(...roles.map((role) => role.name.length));
  const pending = new Set(roles.map((role) => role.name));
  const allStarted = Promise.withResolvers<void>();
  if (roles.length === 0) allStarted.resolve();

  const runners: RoleRunner[] = [];
  const stopSignal = Promise.withResolvers<Deno.Signal>();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const handlers = signals.map((signal) => {
    const handler = () => stopSignal.resolve(signal);
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });

  for (const role of roles) {
    const context = contexts.get(role.name)!;
    const command = roleCommand({
      deno: Deno.execPath(),
      entry: `${ROOT}/${role.entry}`,
      permissions: role.permissions(context),
      configFile: context.configFile,
      // Every role but the sink ships its log lines to the sink.
      logSink: role.name === "logsink" ? undefined : context.logSink,
    });
    const runner = new RoleRunner(role.name, command, (pid, restarts) => {
      const where = role.describe(context);
      if (restarts > 0) {
        print(`  ${role.name.padEnd(width)}  restarted, pid ${pid}  ${where}`);
        return;
      }
      print(`  ${role.name.padEnd(width)}  pid ${pid}  ${where}`);
      pending.delete(role.name);
      if (pending.size === 0) allStarted.resolve();
    });
    runners.push(runner);
    log.info("role-starting", { name: role.name, entry: role.entry });
  }

  allStarted.promise.then(() =>
    print("blackrock: all roles started; Ctrl-C or SIGTERM stops them")
  );

  const signal = await stopSignal.promise;
  print(`blackrock: ${signal}, stopping every role`);
  log.info("stopping", { signal });
  for (const runner of [...runners].reverse()) await runner.stop();
  for (const [name, handler] of handlers) {
    Deno.removeSignalListener(name, handler);
  }

  const unclean = runners.filter((runner) =>
    runner.failed || (runner.lastStatus !== undefined &&
      !runner.lastStatus.success)
  );
  if (unclean.length > 0) {
    log.error("stopped-unclean", { roles: unclean.map((r) => r.name) });
    return 1;
  }
  print("blackrock: stopped");
  return 0;
}

if (import.meta.main) Deno.exit(await main());
