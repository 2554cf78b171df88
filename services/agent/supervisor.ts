/**
 * Keeps a set of role processes running: starts each, restarts one that
 * exits with a growing delay (so a role that crashes at once does not spin
 * the machine), and stops those no longer wanted. A process that exits
 * with status 2 said its configuration is invalid (services/runtime/
 * service.ts): starting it again cannot help, so it stays failed until
 * apply() is told to retry (a new assignment or new settings).
 *
 * @module
 */
import type { Logger } from "../runtime/log.ts";

/** One process the supervisor keeps alive. */
export interface ProcessSpec {
  /** Unique among the supervised processes, e.g. the role name. */
  name: string;
  /** Program and arguments (see roleCommand in runtime/permissions.ts). */
  command: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Where the running process's pid is written, so that a supervisor
   * that died without stopping it can find it at its next start. */
  pidFile?: string;
  /** Where the process's standard output is appended (created 0600), when
   * the supervisor's output is "inherit". Roles log on standard error; what
   * they print on standard output is meant for the operator alone (the
   * shell's first admin password) and must stay out of shared logs. */
  stdoutFile?: string;
}

/** Restart delays: `initialMs`, doubling per crash up to `maxMs`, back to
 * `initialMs` once a process has stayed up for `stableMs`. */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  stableMs: number;
}

/** What the supervisor knows about one process. */
export interface ProcessStatus {
  name: string;
  /** "running", "restarting" (waiting out the backoff), "stopping", or
   * "failed" (it exited with status 2, invalid configuration, and waits
   * for a retry). */
  state: "running" | "restarting" | "stopping" | "failed";
  pid: number | undefined;
  /** Times the process was started again after it exited. */
  restarts: number;
  /** The delay before the next restart, as it stands now. */
  nextDelayMs: number;
  lastExit: { code: number; signal: string | null } | undefined;
}

interface Supervised {
  spec: ProcessSpec;
  child: Deno.ChildProcess | undefined;
  startedMs: number;
  restarts: number;
  delayMs: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  stopping: boolean;
  failed: boolean;
  exited: Promise<void>;
  lastExit: { code: number; signal: string | null } | undefined;
}

/** The exit status of a role whose configuration is invalid. */
export const INVALID_CONFIGURATION_STATUS = 2;

const DEFAULT_BACKOFF: BackoffOptions = {
  initialMs: 200,
  maxMs: 30_000,
  stableMs: 10_000,
};

function sameSpec(a: ProcessSpec, b: ProcessSpec): boolean {
  const key = (spec: ProcessSpec) =>
    JSON.stringify([
      spec.command,
      spec.env ?? {},
      spec.cwd ?? null,
      spec.stdoutFile ?? null,
    ]);
  return key(a) === key(b);
}

/**
 * Kills the process a previous supervisor left running, if the pid in
 * `pidFile` still names a process whose command line contains `marker`
 * (so that a reused pid is never killed). Returns the pid it killed.
 */
export function killLeftover(
  pidFile: string,
  marker: string,
): number | undefined {
  let pid: number;
  try {
    pid = Number(Deno.readTextFileSync(pidFile).trim());
  } catch {
    return undefined;
  }
  if (!Number.isSafeInteger(pid) || pid <= 1) return undefined;
  let commandLine: string;
  try {
    commandLine = Deno.readTextFileSync(`/proc/${pid}/cmdline`);
  } catch {
    return undefined;
  }
  if (!commandLine.replaceAll("\0", " ").includes(marker)) return undefined;
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    return undefined;
  }
  return pid;
}

/**
 * Supervises processes.
 *
 * @example
 * ```ts
 * import { Logger } from "../runtime/log.ts";
 * import { Supervisor } from "./supervisor.ts";
 * const supervisor = new Supervisor(new Logger({ role: "agent" }));
 * await supervisor.apply([{ name: "sleeper", command: ["sleep", "30"] }]);
 * await supervisor.stopAll();
 * ```
 */
export class Supervisor {
  readonly #log: Logger;
  readonly #backoff: BackoffOptions;
  readonly #stopGraceMs: number;
  readonly #output: "inherit" | "null";
  readonly #processes = new Map<string, Supervised>();

  constructor(
    log: Logger,
    options: {
      backoff?: Partial<BackoffOptions>;
      stopGraceMs?: number;
      /** Where the processes' stdout and stderr go. */
      output?: "inherit" | "null";
    } = {},
  ) {
    this.#log = log;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#stopGraceMs = options.stopGraceMs ?? 10_000;
    this.#output = options.output ?? "inherit";
  }

  /**
   * Makes the supervised set equal `specs`: starts new ones, stops those
   * left out, restarts those whose command changed, leaves the rest alone.
   * With `retryFailed`, a process that failed on invalid configuration
   * starts again even if its command is the same (its settings, read
   * from elsewhere, may have changed).
   */
  async apply(
    specs: ProcessSpec[],
    options: { retryFailed?: boolean } = {},
  ): Promise<void> {
    const wanted = new Map<string, ProcessSpec>();
    for (const spec of specs) {
      if (wanted.has(spec.name)) {
        throw new RangeError(`process ${spec.name} is listed twice`);
      }
      if (spec.command.length === 0) {
        throw new RangeError(`process ${spec.name} has an empty command`);
      }
      wanted.set(spec.name, spec);
    }
    const stopping: Promise<void>[] = [];
    for (const [name, supervised] of this.#processes) {
      const spec = wanted.get(name);
      if (
        spec === undefined || !sameSpec(spec, supervised.spec) ||
        (supervised.failed && options.retryFailed === true)
      ) {
        stopping.push(this.#stop(supervised));
      }
    }
    await Promise.all(stopping);
    for (const spec of wanted.values()) {
      if (!this.#processes.has(spec.name)) this.#start(spec);
    }
  }

  /** The state of every supervised process, by name. */
  status(): ProcessStatus[] {
    return [...this.#processes.values()].map((s) => ({
      name: s.spec.name,
      state: s.stopping
        ? "stopping"
        : s.failed
        ? "failed"
        : s.child === undefined
        ? "restarting"
        : "running",
      pid: s.child?.pid,
      restarts: s.restarts,
      nextDelayMs: s.delayMs,
      lastExit: s.lastExit,
    }));
  }

  /** Stops every process (SIGTERM, then SIGKILL after the grace time). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.#processes.values()].map((s) => this.#stop(s)));
  }

  #start(spec: ProcessSpec, previous?: Supervised): void {
    const supervised: Supervised = previous ?? {
      spec,
      child: undefined,
      startedMs: 0,
      restarts: 0,
      delayMs: this.#backoff.initialMs,
      timer: undefined,
      stopping: false,
      failed: false,
      exited: Promise.resolve(),
      lastExit: undefined,
    };
    this.#processes.set(spec.name, supervised);
    supervised.timer = undefined;
    let child: Deno.ChildProcess;
    let stdoutFile: Deno.FsFile | undefined;
    const toFile = this.#output === "inherit" && spec.stdoutFile !== undefined;
    try {
      if (toFile) {
        stdoutFile = Deno.openSync(spec.stdoutFile!, {
          write: true,
          append: true,
          create: true,
          mode: 0o600,
        });
        // An older file may have been made with a wider mode.
        Deno.chmodSync(spec.stdoutFile!, 0o600);
      }
      child = new Deno.Command(spec.command[0], {
        args: spec.command.slice(1),
        env: spec.env,
        cwd: spec.cwd,
        stdin: "null",
        stdout: toFile ? "piped" : this.#output,
        stderr: this.#output,
      }).spawn();
    } catch (error) {
      stdoutFile?.close();
      this.#log.error("role-spawn-failed", { process: spec.name, error });
      this.#scheduleRestart(supervised);
      return;
    }
    if (stdoutFile !== undefined) {
      const file = stdoutFile;
      (async () => {
        for await (const chunk of child.stdout) {
          let written = 0;
          while (written < chunk.length) {
            written += file.writeSync(chunk.subarray(written));
          }
        }
      })().catch((error) => {
        this.#log.error("role-output-failed", { process: spec.name, error });
      }).finally(() => file.close());
    }
    supervised.child = child;
    supervised.startedMs = performance.now();
    if (spec.pidFile !== undefined) {
      try {
        Deno.writeTextFileSync(spec.pidFile, `${child.pid}\n`);
      } catch (error) {
        this.#log.error("pid-file-failed", { process: spec.name, error });
      }
    }
    this.#log.info("role-started", { process: spec.name, pid: child.pid });
    supervised.exited = child.status.then((status) => {
      supervised.child = undefined;
      supervised.lastExit = { code: status.code, signal: status.signal };
      if (supervised.stopping) return;
      if (status.code === INVALID_CONFIGURATION_STATUS && !status.signal) {
        supervised.failed = true;
        this.#log.error("role-failed", {
          process: spec.name,
          pid: child.pid,
          code: status.code,
          reason: "invalid configuration: not restarted until new settings",
        });
        return;
      }
      this.#log.warn("role-exited", {
        process: spec.name,
        pid: child.pid,
        code: status.code,
        signal: status.signal,
      });
      if (performance.now() - supervised.startedMs >= this.#backoff.stableMs) {
        supervised.delayMs = this.#backoff.initialMs;
      }
      this.#scheduleRestart(supervised);
    });
  }

  #scheduleRestart(supervised: Supervised): void {
    const delayMs = supervised.delayMs;
    supervised.delayMs = Math.min(this.#backoff.maxMs, delayMs * 2);
    supervised.timer = setTimeout(() => {
      if (supervised.stopping) return;
      supervised.restarts++;
      this.#start(supervised.spec, supervised);
    }, delayMs);
  }

  async #stop(supervised: Supervised): Promise<void> {
    supervised.stopping = true;
    clearTimeout(supervised.timer);
    const child = supervised.child;
    if (child !== undefined) {
      try {
        child.kill("SIGTERM");
      } catch {
        // It exited between the check and the signal.
      }
      const killTimer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already gone.
        }
      }, this.#stopGraceMs);
      await supervised.exited;
      clearTimeout(killTimer);
      this.#log.info("role-stopped", {
        process: supervised.spec.name,
        pid: child.pid,
      });
    }
    if (this.#processes.get(supervised.spec.name) === supervised) {
      this.#processes.delete(supervised.spec.name);
    }
  }
}
