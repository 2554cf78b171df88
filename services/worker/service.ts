/**
 * The worker's face to the cluster: the `Worker` interface of
 * proto/worker.capnp and the coordinators' `GrainHost` contract, served by
 * one capability over the grain manager, and a TCP listener that gives it
 * to every connection as its bootstrap.
 *
 * @module
 */
import * as $ from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import type { Logger } from "../runtime/log.ts";
import { SpkError } from "../spk/mod.ts";
import { GrainHost } from "../../proto/gen/coordinator.ts";
import { UiView } from "../../proto/gen/sandstorm/grain.ts";
import type { VolumeSpec } from "./volumes.ts";
import {
  GrainSpec,
  GrainState,
  type GrainUsage,
  Worker,
} from "../../proto/gen/worker.ts";
import {
  GrainError,
  type GrainManager,
  type GrainState as ManagerState,
  type GrainStatus,
} from "./grains.ts";

const STATES: Record<ManagerState, GrainState> = {
  "running": GrainState.RUNNING,
  "stopped": GrainState.STOPPED,
  "out-of-memory": GrainState.OUT_OF_MEMORY,
  "crashed": GrainState.CRASHED,
};

/** Turns the manager's and the reader's typed errors into RPC errors that
 * carry their message; anything else is a bug and passes as it is. */
async function answer<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof GrainError || error instanceof SpkError) {
      throw new rpc.RpcError("failed", error.message);
    }
    throw error;
  }
}

function writeUsage(status: GrainStatus, usage: GrainUsage) {
  usage.grainId = status.grainId;
  usage.packageId = status.packageId;
  usage.state = STATES[status.state];
  usage.hostUid = status.hostUid ?? 0;
  usage.memoryLimitBytes = BigInt(status.memoryLimitBytes);
  usage.memoryBytes = BigInt(status.memoryBytes);
  usage.memoryPeakBytes = BigInt(status.memoryPeakBytes);
  usage.startedAtMs = BigInt(status.startedAtMs);
  usage.exitCode = status.exit?.code ?? 0;
  usage.cpuNanoseconds = BigInt(status.cpuNanoseconds);
}

/** Reads a GrainSpec message as the coordinator passes it (bytes). */
export function decodeGrainSpec(bytes: Uint8Array): {
  packageId: string;
  isNew: boolean;
  memoryBytes: number;
  volumeDir: string;
  /** The storage Volume's SturdyRef; empty when the spec names none. */
  volumeRef: Uint8Array;
  volumeSizeBytes: number;
} {
  try {
    const spec = new $.Message(bytes, false).getRoot(GrainSpec);
    return {
      packageId: spec.packageId,
      isNew: spec.isNew,
      memoryBytes: Number(spec.memoryBytes),
      volumeDir: spec.volumeDir,
      volumeRef: spec.volumeRef.toUint8Array().slice(),
      volumeSizeBytes: Number(spec.volumeSizeBytes),
    };
  } catch (error) {
    throw new rpc.RpcError("failed", `grain spec is malformed: ${error}`);
  }
}

/** Encodes a GrainSpec for GrainHost.startGrain and Coordinator.openGrain. */
export function encodeGrainSpec(spec: {
  packageId: string;
  isNew: boolean;
  memoryBytes?: number;
  volumeDir?: string;
  volumeRef?: Uint8Array;
  volumeSizeBytes?: number;
}): Uint8Array {
  const message = new $.Message();
  const root = message.initRoot(GrainSpec);
  root.packageId = spec.packageId;
  root.isNew = spec.isNew;
  root.memoryBytes = BigInt(spec.memoryBytes ?? 0);
  root.volumeDir = spec.volumeDir ?? "";
  if (spec.volumeRef?.length) {
    root._initVolumeRef(spec.volumeRef.length).copyBuffer(spec.volumeRef);
  }
  root.volumeSizeBytes = BigInt(spec.volumeSizeBytes ?? 0);
  return new Uint8Array(message.toArrayBuffer());
}

/** The storage volume a spec names, if any. */
function volumeOf(
  ref: Uint8Array,
  sizeBytes: number,
): VolumeSpec | undefined {
  return ref.length > 0 ? { ref, sizeBytes } : undefined;
}

async function isEmptyDirectory(path: string): Promise<boolean> {
  try {
    for await (const _ of Deno.readDir(path)) return false;
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return true;
    throw error;
  }
}

/** The worker as one capability serving Worker and GrainHost. */
export function workerCapability(
  manager: GrainManager,
  log: Logger,
): rpc.Cap {
  const start = async (
    grainId: string,
    spec: GrainSpec,
    isNew: boolean,
  ) => {
    const supervisor = manager.supervisor(grainId) ??
      await manager.start({
        grainId,
        packageId: spec.packageId,
        isNew,
        memoryBytes: Number(spec.memoryBytes) || undefined,
        volumeDir: spec.volumeDir || undefined,
        volume: volumeOf(
          spec.volumeRef.toUint8Array().slice(),
          Number(spec.volumeSizeBytes),
        ),
      });
    // Results own what they carry: hand over a reference of our own.
    return new UiView.Client(rpc.retain(supervisor.uiView).client);
  };

  const worker = new Worker.Server({
    installPackage: (params, results) =>
      answer(async () => {
        const pkg = await manager.installPackage(
          params.spk.toUint8Array().slice(),
        );
        results.packageId = pkg.packageId;
        results.appId = pkg.appId;
        results.appTitle = pkg.manifest.appTitle;
      }),
    newGrain: (params, results) =>
      answer(async () => {
        results.view = await start(params.grainId, params.spec, true);
      }),
    restoreGrain: (params, results) =>
      answer(async () => {
        results.view = await start(params.grainId, params.spec, false);
      }),
    getView: (params, results) =>
      answer(() => {
        const supervisor = manager.supervisor(params.grainId);
        if (!supervisor) {
          throw new GrainError(`grain ${params.grainId} is not running`);
        }
        results.view = new UiView.Client(
          rpc.retain(supervisor.uiView).client,
        );
        return Promise.resolve();
      }),
    stopGrain: (params) => answer(() => manager.stop(params.grainId)),
    deleteGrain: (params) => answer(() => manager.delete(params.grainId)),
    listGrains: (_params, results) =>
      answer(async () => {
        const grains = await manager.list();
        const list = results._initGrains(grains.length);
        grains.forEach((status, i) => writeUsage(status, list.get(i)));
      }),
    grainUsage: (params, results) =>
      answer(async () => {
        const status = await manager.status(params.grainId);
        if (!status) {
          throw new GrainError(`no grain ${params.grainId} on this worker`);
        }
        writeUsage(status, results._initUsage());
      }),
    machineUsage: (_params, results) =>
      answer(async () => {
        const machine = await manager.machineUsage();
        const usage = results._initUsage();
        usage.memoryTotalBytes = BigInt(machine.memoryTotalBytes);
        usage.memoryAvailableBytes = BigInt(machine.memoryAvailableBytes);
        usage.grainMemoryBytes = BigInt(machine.grainMemoryBytes);
        usage.runningGrains = machine.runningGrains;
        usage.load1 = machine.load1;
        usage.freeUids = machine.freeUids;
      }),
  });

  const host = new GrainHost.Server({
    // The coordinator's restart after a failure passes the spec of the
    // grain's first start; a volume that already holds data is never
    // given the "new" action again.
    startGrain: (params) =>
      answer(async () => {
        if (manager.supervisor(params.grainId)) return;
        const spec = decodeGrainSpec(params.spec.toUint8Array().slice());
        const volumeDir = spec.volumeDir ||
          `${manager.options.stateDir}/grains/${params.grainId}/volume`;
        const volume = volumeOf(spec.volumeRef, spec.volumeSizeBytes);
        // A storage volume is checked by the manager once attached.
        const isNew = spec.isNew &&
          (volume !== undefined || await isEmptyDirectory(volumeDir));
        await manager.start({
          grainId: params.grainId,
          packageId: spec.packageId,
          isNew,
          memoryBytes: spec.memoryBytes || undefined,
          volumeDir: spec.volumeDir || undefined,
          volume,
        });
        log.info("grain-host-start", {
          grainId: params.grainId,
          epoch: params.epoch,
          isNew,
        });
      }),
    stopGrain: (params) =>
      answer(async () => {
        if (manager.supervisor(params.grainId)) {
          await manager.stop(params.grainId);
        }
      }),
  });

  return rpc.serveAll([worker, host]);
}

/** Serves `cap` as the bootstrap of every TCP connection. */
export function listenWorker(
  cap: rpc.Cap,
  address: { hostname: string; port: number },
  log: Logger,
): { port: number; close(): void } {
  return rpc.serveTcp(cap, address, {
    onConnectionClosed: (reason) =>
      log.debug("connection-closed", { reason: reason.message }),
  });
}
