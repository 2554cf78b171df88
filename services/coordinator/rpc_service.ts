/**
 * The `Coordinator` capability of proto/coordinator.capnp, served over
 * RPC: shells open grains through it, workers send heartbeats carrying
 * their `GrainHost`, and the master drains workers before removing them.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import {
  Coordinator as CoordinatorSchema,
  type GrainHost$Client,
  type GrainNeeds as GrainNeedsStruct,
  type GrainPlacement as GrainPlacementStruct,
} from "../../proto/gen/coordinator.ts";
import type { Logger } from "../runtime/log.ts";
import type { Coordinator, GrainRecord, WorkerHandle } from "./coordinator.ts";
import type { GrainNeeds } from "./placement.ts";

function readNeeds(needs: GrainNeedsStruct): GrainNeeds {
  return {
    memoryBytes: Number(needs.memoryBytes),
    suspicious: needs.suspicious,
    highValue: needs.highValue,
  };
}

function writePlacement(record: GrainRecord, out: GrainPlacementStruct) {
  out.grainId = record.grainId;
  out.workerId = record.workerId ?? "";
  out.epoch = BigInt(record.epoch);
}

/** A worker's GrainHost as the coordinator's WorkerHandle; `broken` turns
 * true once a call finds the worker's connection gone. */
function hostHandle(
  host: GrainHost$Client,
): WorkerHandle & { broken: boolean } {
  const handle = {
    broken: false,
    async startGrain(
      grainId: string,
      epoch: number,
      needs: GrainNeeds,
      spec: Uint8Array,
    ) {
      await watch(
        host.startGrain((params) => {
          params.grainId = grainId;
          params.epoch = BigInt(epoch);
          const n = params._initNeeds();
          n.memoryBytes = BigInt(needs.memoryBytes);
          n.suspicious = needs.suspicious ?? false;
          n.highValue = needs.highValue ?? false;
          params._initSpec(spec.length).copyBuffer(spec);
        }).promise(),
      );
    },
    async stopGrain(grainId: string) {
      await watch(
        host.stopGrain((params) => {
          params.grainId = grainId;
        }).promise(),
      );
    },
    close() {
      rpc.release(host);
    },
  };
  const watch = async (call: Promise<unknown>) => {
    try {
      await call;
    } catch (error) {
      if (error instanceof rpc.RpcError && error.type === "disconnected") {
        handle.broken = true;
      }
      throw error;
    }
  };
  return handle;
}

/** The coordinator as a `Coordinator` capability. */
export function coordinatorCapability(coordinator: Coordinator): rpc.Cap {
  const handles = new Map<string, ReturnType<typeof hostHandle>>();
  return rpc.serve(CoordinatorSchema, {
    async openGrain(params, results) {
      const record = await coordinator.openGrain(
        params.grainId,
        readNeeds(params.needs),
        params.spec.toUint8Array().slice(),
      );
      writePlacement(record, results._initPlacement());
    },
    heartbeat(params) {
      const load = params.load;
      const beat = {
        workerId: params.workerId,
        capacity: {
          memoryBytes: Number(load.memoryBytes),
          cores: load.cores,
          maxGrains: load.maxGrains,
        },
        load: {
          memoryUsedBytes: Number(load.memoryUsedBytes),
          cpuLoad: load.cpuLoad,
          grains: load.grains,
          highValueGrains: load.highValueGrains,
          suspiciousGrains: load.suspiciousGrains,
        },
      };
      // The host of a worker's first heartbeat is kept; a later one replaces
      // it only when the kept one broke (the worker's process restarted)
      // or the worker had been declared dead.
      const kept = handles.get(beat.workerId);
      if (
        kept === undefined || kept.broken ||
        !coordinator.hasWorker(beat.workerId)
      ) {
        const handle = hostHandle(rpc.retain(params.host));
        handles.set(beat.workerId, handle);
        coordinator.heartbeat(beat, handle);
      } else {
        coordinator.heartbeat(beat);
      }
      return Promise.resolve();
    },
    async drainWorker(params, results) {
      results.moved = (await coordinator.drainWorker(params.workerId)).length;
    },
    async listGrains(_params, results) {
      const grains = await coordinator.grains();
      const list = results._initGrains(grains.length);
      grains.forEach((record, i) => writePlacement(record, list.get(i)));
    },
  });
}

/** A TCP listener serving one capability as every connection's bootstrap. */
export interface CapabilityListener {
  port: number;
  close(): void;
}

/** Serves `cap` to every connection on the address. */
export function listenCapability(
  cap: rpc.Cap,
  address: rpc.TcpAddress,
  log: Logger,
): CapabilityListener {
  const server = rpc.serveTcp(cap, address, {
    onAcceptError: (error) => log.error("accept-failed", { error }),
  });
  return {
    port: server.port,
    close() {
      server.close();
      cap.close();
    },
  };
}
