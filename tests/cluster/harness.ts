/**
 * Building blocks for cluster tests and the cluster benchmark: coordinator
 * processes (the real role, started under its scoped permissions), worker
 * processes, RPC clients of the coordinator and the worker, and clean-up
 * for what killed workers leave (mounts, cgroups).
 *
 * Two kinds of worker: {@link startRealWorker} runs the real worker role
 * (services/worker/main.ts: sandboxes, the app on fd 3); {@link
 * startWorker} runs tests/cluster/testdata/standin_worker.ts, which speaks
 * the coordinator's real protocol but answers for a grain over HTTP without
 * running an app, for tests of the coordinator alone. Whole simulated
 * machines (namespaces, agents, master) come from tasks/cluster.ts.
 *
 * @module
 */
import * as rpc from "../../services/rpc/mod.ts";
import {
  Coordinator,
  type Coordinator$Client,
} from "../../proto/gen/coordinator.ts";
import { roleCommand } from "../../services/runtime/permissions.ts";
import { Worker } from "../../proto/gen/worker.ts";
export { removeCgroups, unmountUnder } from "../../tasks/cluster.ts";
import {
  freePort,
  type ServerProcess,
  spawnServer,
} from "../fixtures/process.ts";

const root = new URL("../../", import.meta.url).pathname;

/** A coordinator process and the port it serves on. */
export interface CoordinatorProcess {
  process: ServerProcess;
  port: number;
}

/** Starts the coordinator role on loopback, sharing `stateFile`. */
export async function startCoordinator(options: {
  stateFile: string;
  heartbeatTimeoutMs?: number;
  checkIntervalMs?: number;
}): Promise<CoordinatorProcess> {
  const port = freePort();
  const stateDir = options.stateFile.replace(/\/[^/]*$/, "");
  const [command, ...args] = roleCommand({
    deno: Deno.execPath(),
    entry: `${root}services/coordinator/main.ts`,
    permissions: {
      net: [`127.0.0.1:${port}`],
      read: [stateDir],
      write: [stateDir],
    },
    overrides: [
      `listen.port=${port}`,
      `stateFile=${options.stateFile}`,
      `heartbeatTimeoutMs=${options.heartbeatTimeoutMs ?? 3000}`,
      `checkIntervalMs=${options.checkIntervalMs ?? 100}`,
    ],
  });
  const process = spawnServer({ name: `coordinator:${port}`, command, args });
  await process.waitReady(() => process.log.includes('"event":"listening"'), {
    what: "the coordinator listens",
    timeoutMs: 30_000,
  });
  return { process, port };
}

/** A stand-in worker process and the HTTP port its grains answer on. */
export interface WorkerProcess {
  id: string;
  process: ServerProcess;
  httpPort: number;
}

/** Starts a stand-in worker heartbeating to the given coordinators. */
export function startWorker(
  id: string,
  coordinatorPorts: number[],
): WorkerProcess {
  const httpPort = freePort();
  const process = spawnServer({
    name: `worker:${id}`,
    command: Deno.execPath(),
    args: [
      "run",
      "--no-prompt",
      "--allow-net=127.0.0.1",
      `${root}tests/cluster/testdata/standin_worker.ts`,
      id,
      String(httpPort),
      ...coordinatorPorts.map(String),
    ],
  });
  return { id, process, httpPort };
}

/** What a grain's worker answers when asked for it. */
export interface GrainAnswer {
  grainId: string;
  workerId: string;
  epoch: number;
  spec: string;
}

/** Asks every worker for the grain; the answer of the one running it. */
export async function askGrain(
  workers: WorkerProcess[],
  grainId: string,
): Promise<GrainAnswer | undefined> {
  for (const worker of workers) {
    if (worker.process.exited) continue;
    try {
      const response = await fetch(
        `http://127.0.0.1:${worker.httpPort}/grains/${grainId}`,
      );
      if (response.ok) return await response.json();
      await response.body?.cancel();
    } catch {
      // That worker is gone or not yet listening.
    }
  }
  return undefined;
}

/** An RPC client of one coordinator. */
export class CoordinatorClient {
  readonly #connection: rpc.RpcConnection;
  readonly #coordinator: Coordinator$Client;

  private constructor(connection: rpc.RpcConnection) {
    this.#connection = connection;
    this.#coordinator = rpc.bootstrap(connection, Coordinator);
  }

  static async connect(
    port: number,
    hostname = "127.0.0.1",
  ): Promise<CoordinatorClient> {
    const transport = await rpc.connectTcp({ hostname, port });
    return new CoordinatorClient(new rpc.RpcConnection(transport));
  }

  async openGrain(
    grainId: string,
    spec: string | Uint8Array,
    memoryBytes = 256 << 20,
  ): Promise<{ workerId: string; epoch: number }> {
    const result = await this.#coordinator.openGrain((params) => {
      params.grainId = grainId;
      params._initNeeds().memoryBytes = BigInt(memoryBytes);
      const bytes = typeof spec === "string"
        ? new TextEncoder().encode(spec)
        : spec;
      params._initSpec(bytes.length).copyBuffer(bytes);
    }).promise();
    return {
      workerId: result.placement.workerId,
      epoch: Number(result.placement.epoch),
    };
  }

  async listGrains(): Promise<
    { grainId: string; workerId: string; epoch: number }[]
  > {
    const result = await this.#coordinator.listGrains().promise();
    return result.grains.map((g) => ({
      grainId: g.grainId,
      workerId: g.workerId,
      epoch: Number(g.epoch),
    }));
  }

  async drainWorker(workerId: string): Promise<number> {
    const result = await this.#coordinator.drainWorker((params) => {
      params.workerId = workerId;
    }).promise();
    return result.moved;
  }

  close(): void {
    rpc.release(this.#coordinator);
    this.#connection.close();
  }
}

/** Polls until `probe` gives a value, or fails naming `what`. */
export async function eventually<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`timed out waiting until ${what}`);
}

/** Kills every process of a group at once, as a machine dying would. */
export function killGroup(process: ServerProcess): void {
  try {
    Deno.kill(-process.pid, "SIGKILL");
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}

/** A real worker role process (services/worker/main.ts). */
export interface RealWorkerProcess {
  id: string;
  process: ServerProcess;
  port: number;
  stateDir: string;
  /** Its memory cgroup, to remove with removeCgroups after a SIGKILL. */
  cgroupName: string;
}

/**
 * Starts the real worker role on loopback under the permissions its main
 * documents, heartbeating to the given coordinators with `id` as its
 * worker ID. Needs root and the memory cgroup controller.
 */
export async function startRealWorker(options: {
  id: string;
  index: number;
  stateDir: string;
  coordinatorPorts: number[];
}): Promise<RealWorkerProcess> {
  const port = freePort();
  const { stateDir } = options;
  await Deno.mkdir(stateDir, { recursive: true });
  const [command, ...args] = roleCommand({
    deno: Deno.execPath(),
    entry: `${root}services/worker/main.ts`,
    permissions: {
      net: ["127.0.0.1", `unix:${stateDir}/api.sock`],
      read: [stateDir],
      write: [stateDir],
      run: ["bash", "chown", "sync", "xz"],
      ffi: ["/lib/x86_64-linux-gnu/libc.so.6"],
      sys: ["systemMemoryInfo", "loadavg"],
    },
    overrides: [
      `stateDir=${stateDir}`,
      "listen.hostname=127.0.0.1",
      `listen.port=${port}`,
      `cgroupName=blackrock-cluster-${Deno.pid}-${options.index}`,
      `uidFirst=${70_000 + (Deno.pid % 100) * 200 + options.index * 20}`,
      "uidCount=20",
      `workerId=${options.id}`,
      "heartbeatIntervalMs=300",
      `coordinators=${
        JSON.stringify(
          options.coordinatorPorts.map((p) => ({
            hostname: "127.0.0.1",
            port: p,
          })),
        )
      }`,
    ],
  });
  const process = spawnServer({
    name: `worker:${options.id}`,
    command,
    args,
    env: { BLACKROCK_LOG_LEVEL: "info" },
    stopGraceMs: 15_000,
  });
  await process.waitReady(() => process.log.includes('"event":"started"'), {
    what: `worker ${options.id} starts`,
    timeoutMs: 60_000,
  });
  return {
    id: options.id,
    process,
    port,
    stateDir,
    cgroupName: `blackrock-cluster-${Deno.pid}-${options.index}`,
  };
}

/** Asks a worker for a grain's view info: the app itself answering. */
export async function grainAnswers(
  port: number,
  grainId: string,
): Promise<boolean> {
  let connection: rpc.RpcConnection | undefined;
  try {
    connection = new rpc.RpcConnection(
      await rpc.connectTcp({ hostname: "127.0.0.1", port }),
    );
    const worker = rpc.bootstrap(connection, Worker);
    const view = worker.getView((p) => {
      p.grainId = grainId;
    }).getView();
    await view.getViewInfo().promise();
    return true;
  } catch {
    return false;
  } finally {
    connection?.close();
  }
}

/** Installs a package on a real worker; returns its package ID. */
export async function installPackage(
  port: number,
  spk: Uint8Array,
): Promise<string> {
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port }),
  );
  try {
    const worker = rpc.bootstrap(connection, Worker);
    const installed = await worker.installPackage((p) => {
      p._initSpk(spk.length).copyBuffer(spk);
    }).promise();
    return installed.packageId;
  } finally {
    connection.close();
  }
}
