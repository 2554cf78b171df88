/**
 * Starts the web side of a Blackrock for tests: the gateway (with its own
 * nginx on a free port) and one or more shell replicas, each a real Deno
 * process with the permissions its role gets in production. State lives
 * in `dataDir`, so stopping and starting again keeps everything.
 *
 * @module
 */
import { roleCommand } from "../../services/runtime/permissions.ts";
import {
  gatewayEntry,
  gatewayPermissions,
} from "../../services/gateway/role.ts";
import { shellEntry, shellPermissions } from "../../services/shell/role.ts";

/** One role process with its output kept for assertions and debugging. */
export class RoleProcess {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  output = "";
  #lines: ((line: string) => void)[] = [];

  constructor(name: string, command: string[]) {
    this.name = name;
    this.child = new Deno.Command(command[0], {
      args: command.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#pump(this.child.stdout);
    this.#pump(this.child.stderr);
  }

  async #pump(stream: ReadableStream<Uint8Array>) {
    const decoder = new TextDecoder();
    let buffer = "";
    for await (const chunk of stream) {
      buffer += decoder.decode(chunk, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        this.output += line + "\n";
        for (const listener of this.#lines) listener(line);
      }
    }
  }

  /** Resolves with the first line (already seen or coming) matching. */
  waitForLine(pattern: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
    for (const line of this.output.split("\n")) {
      const m = pattern.exec(line);
      if (m !== null) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `${this.name}: no line matching ${pattern} within ${timeoutMs} ms; output:\n${this.output}`,
          ),
        );
      }, timeoutMs);
      this.child.status.then((status) => {
        clearTimeout(timer);
        reject(
          new Error(
            `${this.name} exited (${status.code}) before printing ${pattern}:\n${this.output}`,
          ),
        );
      });
      this.#lines.push((line) => {
        const m = pattern.exec(line);
        if (m !== null) {
          clearTimeout(timer);
          resolve(m);
        }
      });
    });
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // Already exited.
      }
    }, 10_000);
    await this.child.status;
    clearTimeout(timer);
  }
}

/** Options of {@link startWebSide}. */
export interface WebSideOptions {
  dataDir: string;
  /** Port nginx listens on (TLS). */
  port: number;
  controlPort: number;
  token: string;
  shells?: number;
  runnerUrl?: string;
  /** A worker's RPC port on loopback, for the shell's worker runner. */
  workerPort?: number;
  maxUploadBytes?: number;
  database?: { kind: "sqlite" } | { kind: "mongodb"; url: string };
}

/** A running gateway and shells. */
export interface WebSide {
  url: string;
  gateway: RoleProcess;
  shells: RoleProcess[];
  /** The admin password, if this start created the admin. */
  adminPassword?: string;
  stop(): Promise<void>;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

export { freePort };

/** Starts one shell replica against the given web side's settings. */
export function startShell(options: WebSideOptions, index: number) {
  const host = `localhost:${options.port}`;
  const overrides = [
    `baseUrl=https://${host}`,
    `grainHostSuffix=${host}`,
    `gateway.token=${options.token}`,
    `gateway.control.port=${options.controlPort}`,
    `packageDir=${options.dataDir}/shell/packages`,
    `heartbeatMs=500`,
  ];
  if (options.database?.kind === "mongodb") {
    overrides.push(
      "database.kind=mongodb",
      `database.url=${options.database.url}`,
    );
  } else {
    overrides.push(
      "database.kind=sqlite",
      `database.path=${options.dataDir}/shell/shell.sqlite`,
    );
  }
  if (options.runnerUrl !== undefined) {
    overrides.push("runner.kind=http", `runner.url=${options.runnerUrl}`);
  }
  if (options.workerPort !== undefined) {
    overrides.push("runner.kind=worker", `runner.port=${options.workerPort}`);
  }
  if (options.maxUploadBytes !== undefined) {
    overrides.push(`maxUploadBytes=${options.maxUploadBytes}`);
  }
  return new RoleProcess(
    `shell-${index}`,
    roleCommand({
      deno: Deno.execPath(),
      entry: shellEntry,
      permissions: shellPermissions({
        dataDir: options.dataDir,
      }),
      overrides,
    }),
  );
}

/** Starts the gateway, then the shells, and waits until the main page
 * answers through nginx. */
export async function startWebSide(options: WebSideOptions): Promise<WebSide> {
  await Deno.mkdir(`${options.dataDir}/gateway`, { recursive: true });
  const host = `localhost:${options.port}`;
  const gateway = new RoleProcess(
    "gateway",
    roleCommand({
      deno: Deno.execPath(),
      entry: gatewayEntry,
      permissions: gatewayPermissions({
        dataDir: options.dataDir,
      }),
      overrides: [
        `mainHost=${host}`,
        `grainHostSuffix=${host}`,
        `shellOrigin=https://${host}`,
        `token=${options.token}`,
        `control.port=${options.controlPort}`,
        `shellTimeoutMs=3000`,
        `nginx.dir=${options.dataDir}/gateway/nginx`,
        `nginx.listenPort=${options.port}`,
      ],
    }),
  );
  const shells: RoleProcess[] = [];
  const stop = async () => {
    await Promise.all(shells.map((s) => s.stop()));
    await gateway.stop();
  };
  try {
    await gateway.waitForLine(/"event":"nginx-started"/);
    for (let i = 0; i < (options.shells ?? 1); i++) {
      shells.push(startShell(options, i));
    }
    let adminPassword: string | undefined;
    for (const shell of shells) {
      await shell.waitForLine(/Shell listening/);
      const m = /Password: (\S+)/.exec(shell.output);
      if (m !== null) adminPassword = m[1];
    }
    await gateway.waitForLine(/"event":"nginx-reloaded"/);
    const url = `https://${host}`;
    using client = Deno.createHttpClient({
      caCerts: [
        await Deno.readTextFile(`${options.dataDir}/gateway/nginx/server.pem`),
      ],
    });
    for (let i = 0;; i++) {
      const response = await fetch(`${url}/healthz`, { client }).catch(() =>
        undefined
      );
      const ok = response?.status === 200;
      await response?.body?.cancel();
      if (ok) break;
      if (i > 100) throw new Error(`${url} did not answer:\n${gateway.output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return { url, gateway, shells, adminPassword, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
