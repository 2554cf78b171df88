/**
 * The shell's grain runner in a cluster: a coordinator picks the worker
 * (and moves the grain when that worker dies), and the worker it names
 * serves the session, as with {@link WorkerGrainRunner}.
 *
 * Before asking, the shell installs the grain's package on every worker
 * the vat directory names, so that a coordinator restarting the grain on
 * another worker after a failure finds the package there. Coordinators are
 * tried in order; any of them can place any grain.
 *
 * @module
 */
import { Message } from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import { Coordinator } from "../../proto/gen/coordinator.ts";
import { GrainSpec } from "../../proto/gen/worker.ts";
import { type GrainRunner, GrainUnavailableError } from "./grain_runner.ts";
import type { Grain } from "./repo/types.ts";
import { WorkerGrainRunner } from "./worker_client.ts";

/** Where the cluster's coordinators and vat directory are. */
export interface ClusterRunnerOptions {
  coordinators: { hostname: string; port: number }[];
  /** The vat directory the machine agent keeps (JSON: `{vats: [{role,
   * vatId, address}]}`). */
  directoryFile: string;
  /** Memory a grain asks for when placed. */
  grainMemoryBytes?: number;
}

interface DirectoryVat {
  role: string;
  vatId: string;
  address: string;
}

function hostPort(address: string): { hostname: string; port: number } {
  const at = address.lastIndexOf(":");
  return {
    hostname: address.slice(0, at).replace(/^\[|\]$/g, ""),
    port: Number(address.slice(at + 1)),
  };
}

/** Starts grains where a coordinator places them. */
export class ClusterGrainRunner implements GrainRunner {
  readonly kind = "cluster";
  readonly #options: ClusterRunnerOptions;
  readonly #workers = new Map<string, WorkerGrainRunner>();

  constructor(options: ClusterRunnerOptions) {
    this.#options = options;
  }

  async #workerVats(): Promise<DirectoryVat[]> {
    try {
      const directory = JSON.parse(
        await Deno.readTextFile(this.#options.directoryFile),
      );
      return (directory.vats as DirectoryVat[]).filter((v) =>
        v.role === "worker"
      );
    } catch (error) {
      throw new GrainUnavailableError(
        `The vat directory cannot be read (${(error as Error).message}).`,
      );
    }
  }

  #worker(address: string): WorkerGrainRunner {
    let worker = this.#workers.get(address);
    if (worker === undefined) {
      worker = new WorkerGrainRunner(hostPort(address));
      this.#workers.set(address, worker);
    }
    return worker;
  }

  async #place(grain: Grain): Promise<string> {
    const message = new Message();
    const spec = message.initRoot(GrainSpec);
    spec.packageId = grain.packageId;
    spec.isNew = grain.firstStartedAt === 0;
    const bytes = new Uint8Array(message.toArrayBuffer());
    const failures: string[] = [];
    for (const address of this.#options.coordinators) {
      let connection: rpc.RpcConnection | undefined;
      try {
        connection = new rpc.RpcConnection(await rpc.connectTcp(address));
        const coordinator = rpc.bootstrap(connection, Coordinator);
        const result = await coordinator.openGrain((p) => {
          p.grainId = grain.id;
          p._initNeeds().memoryBytes = BigInt(
            this.#options.grainMemoryBytes ?? 256 << 20,
          );
          p._initSpec(bytes.length).copyBuffer(bytes);
        }).promise();
        return result.placement.workerId;
      } catch (error) {
        failures.push(
          `${address.hostname}:${address.port}: ${(error as Error).message}`,
        );
      } finally {
        connection?.close();
      }
    }
    throw new GrainUnavailableError(
      `No coordinator could place the grain (${failures.join("; ")}).`,
    );
  }

  async open(grain: Grain, packagePath: string): Promise<string> {
    const workers = await this.#workerVats();
    // A worker that does not answer cannot be picked either; the others
    // must have the package.
    await Promise.all(
      workers.map((v) =>
        this.#worker(v.address).installPackage(grain.packageId, packagePath)
          .catch(() => {})
      ),
    );
    const workerId = await this.#place(grain);
    const placed = (await this.#workerVats()).find((v) => v.vatId === workerId);
    if (placed === undefined) {
      throw new GrainUnavailableError(
        `The coordinator placed the grain on worker ${workerId}, which the vat directory does not name.`,
      );
    }
    return await this.#worker(placed.address).open(grain, packagePath);
  }

  sizeOf(): Promise<number | undefined> {
    return Promise.resolve(undefined);
  }

  /** Deletes the grain on every worker that has it. */
  async destroy(grainId: string): Promise<void> {
    const workers = await this.#workerVats();
    await Promise.all(
      workers.map((v) =>
        this.#worker(v.address).destroy(grainId).catch(() => {})
      ),
    );
  }

  /** Closes the connections to workers. */
  close(): void {
    for (const worker of this.#workers.values()) worker.close();
    this.#workers.clear();
  }
}
