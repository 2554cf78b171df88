/**
 * The shell's grain runner over a worker's Cap'n Proto interface
 * (proto/worker.capnp): installs the grain's package on the worker, starts
 * the grain (new the first time, restored afterwards), and names the
 * worker and grain as the session's backend, `worker://host:port/grainId`.
 * The gateway then opens the grain's WebSession through the same worker.
 *
 * On a single machine there is one worker; in a cluster a coordinator
 * picks it, and this runner is given the coordinator's answer instead.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import {
  Worker,
  type Worker$Client,
  type Worker_NewGrain$Params,
  type Worker_RestoreGrain$Params,
} from "../../proto/gen/worker.ts";
import {
  type GrainRunner,
  GrainUnavailableError,
  type RunnerUsage,
} from "./grain_runner.ts";
import type { AppRole, Grain } from "./repo/types.ts";

/** Largest package sent in one installPackage call: the RPC engine's
 * message limit is 64 MiB, less room for the message around it. */
const MAX_INLINE_SPK_BYTES = 63 * 1024 * 1024;

/** Starts grains on one worker over RPC. */
export class WorkerGrainRunner implements GrainRunner {
  readonly kind = "worker";
  readonly #address: { hostname: string; port: number };
  #connection: rpc.RpcConnection | undefined;
  #worker: Worker$Client | undefined;
  #connecting: Promise<Worker$Client> | undefined;
  /** Packages known to be installed on the worker, by package ID. */
  readonly #installed = new Set<string>();
  /** Starts in flight, so that two sessions opening one grain at once do
   * not both start it. */
  readonly #starting = new Map<string, Promise<void>>();

  constructor(address: { hostname: string; port: number }) {
    this.#address = address;
  }

  get #backendBase(): string {
    return `worker://${this.#address.hostname}:${this.#address.port}`;
  }

  async #connect(): Promise<Worker$Client> {
    if (this.#worker !== undefined) return this.#worker;
    this.#connecting ??= (async () => {
      try {
        const transport = await rpc.connectTcp(this.#address);
        const connection = new rpc.RpcConnection(transport);
        const worker = rpc.bootstrap(connection, Worker);
        this.#connection = connection;
        this.#worker = worker;
        // A lost connection is noticed here; the next call reconnects and
        // installs packages again (the worker may have restarted).
        connection.closed.then(() => {
          if (this.#connection !== connection) return;
          this.#connection = undefined;
          this.#worker = undefined;
          this.#installed.clear();
        });
        return worker;
      } catch (error) {
        throw new GrainUnavailableError(
          `No worker answers at ${this.#address.hostname}:${this.#address.port} (${
            (error as Error).message
          }).`,
        );
      } finally {
        this.#connecting = undefined;
      }
    })();
    return await this.#connecting;
  }

  async #install(
    worker: Worker$Client,
    packageId: string,
    packagePath: string,
  ) {
    if (this.#installed.has(packageId)) return;
    const spk = await Deno.readFile(packagePath);
    if (spk.length > MAX_INLINE_SPK_BYTES) {
      throw new GrainUnavailableError(
        `The package is ${spk.length} bytes; packages over ${MAX_INLINE_SPK_BYTES} bytes cannot be sent to a worker yet.`,
      );
    }
    const installed = await worker.installPackage((p) => {
      p._initSpk(spk.length).copyBuffer(spk);
    }).promise();
    if (installed.packageId !== packageId) {
      throw new GrainUnavailableError(
        `The worker read package ${installed.packageId}, expected ${packageId}.`,
      );
    }
    this.#installed.add(packageId);
  }

  async #ensureRunning(worker: Worker$Client, grain: Grain): Promise<void> {
    try {
      const running = await worker.getView((p) => p.grainId = grain.id)
        .promise();
      rpc.release(rpc.retain(running.view));
      return;
    } catch {
      // Not running on this worker: start it below.
    }
    const start = (p: Worker_NewGrain$Params | Worker_RestoreGrain$Params) => {
      p.grainId = grain.id;
      const spec = p._initSpec();
      spec.packageId = grain.packageId;
      spec.isNew = grain.firstStartedAt === 0;
    };
    const started = grain.firstStartedAt === 0
      ? await worker.newGrain(start).promise()
      : await worker.restoreGrain(start).promise();
    rpc.release(rpc.retain(started.view));
  }

  /** Installs a package on the worker without starting any grain (so
   * that a coordinator may later start grains of it there). */
  async installPackage(packageId: string, packagePath: string): Promise<void> {
    const worker = await this.#connect();
    try {
      await this.#install(worker, packageId, packagePath);
    } catch (error) {
      if (error instanceof GrainUnavailableError) throw error;
      throw new GrainUnavailableError(
        `The worker could not install the package: ${(error as Error).message}`,
      );
    }
  }

  async open(grain: Grain, packagePath: string): Promise<string> {
    const worker = await this.#connect();
    try {
      await this.#install(worker, grain.packageId, packagePath);
      let starting = this.#starting.get(grain.id);
      if (starting === undefined) {
        starting = this.#ensureRunning(worker, grain).finally(() =>
          this.#starting.delete(grain.id)
        );
        this.#starting.set(grain.id, starting);
      }
      await starting;
    } catch (error) {
      if (error instanceof GrainUnavailableError) throw error;
      throw new GrainUnavailableError(
        `The worker could not start the grain: ${(error as Error).message}`,
      );
    }
    return `${this.#backendBase}/${grain.id}`;
  }

  sizeOf(): Promise<number | undefined> {
    // The worker reports memory, not storage; volumes report their size
    // through storage once grains live on storage volumes.
    return Promise.resolve(undefined);
  }

  /** The worker's machine and per-grain memory, or undefined if the
   * worker does not answer. */
  async usage(): Promise<RunnerUsage | undefined> {
    try {
      const worker = await this.#connect();
      const [machine, listed] = await Promise.all([
        worker.machineUsage().promise(),
        worker.listGrains().promise(),
      ]);
      const states = ["running", "stopped", "out of memory", "crashed"];
      const grains = new Map<string, { state: string; memoryBytes: number }>();
      for (const usage of listed.grains) {
        grains.set(usage.grainId, {
          state: states[usage.state] ?? "unknown",
          memoryBytes: Number(usage.memoryBytes),
        });
      }
      const m = machine.usage;
      return {
        machines: [{
          name: `worker ${this.#address.hostname}:${this.#address.port}`,
          memoryTotalBytes: Number(m.memoryTotalBytes),
          memoryAvailableBytes: Number(m.memoryAvailableBytes),
          grainMemoryBytes: Number(m.grainMemoryBytes),
          runningGrains: m.runningGrains,
          load1: m.load1,
        }],
        grains,
      };
    } catch {
      return undefined;
    }
  }

  /** The roles the grain's app declares in its view info. */
  async declaredRoles(grainId: string): Promise<AppRole[]> {
    const worker = await this.#connect();
    const result = await worker.getView((p) => p.grainId = grainId).promise();
    const view = rpc.retain(result.view);
    try {
      const info = await view.getViewInfo().promise();
      const permissionCount = info.permissions.length;
      return [...info.roles].map((role) => {
        const flags = [...role.permissions];
        while (flags.length < permissionCount) flags.push(false);
        return {
          title: role._hasTitle() && role.title.defaultText !== ""
            ? role.title.defaultText
            : "unnamed role",
          canWrite: true,
          permissions: flags,
          ...(role.obsolete ? { obsolete: true } : {}),
        };
      });
    } finally {
      rpc.release(view);
    }
  }

  async destroy(grainId: string): Promise<void> {
    const worker = await this.#connect();
    await worker.deleteGrain((p) => p.grainId = grainId).promise();
  }

  /** Closes the connection to the worker. */
  close(): void {
    this.#worker = undefined;
    this.#installed.clear();
    this.#connection?.close();
    this.#connection = undefined;
  }
}
