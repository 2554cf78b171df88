/**
 * The master over RPC: its `Master` capability (proto/master.capnp) for
 * operators' tools, and the {@link DrainLink} that asks a coordinator
 * (proto/coordinator.capnp) to move a leaving worker's grains.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import { Master as MasterSchema } from "../../proto/gen/master.ts";
import { Coordinator as CoordinatorSchema } from "../../proto/gen/coordinator.ts";
import type { Logger } from "../runtime/log.ts";
import { parseAddress } from "./agent_client.ts";
import type { DrainLink, Master } from "./master.ts";

const ROLES = ["coordinator", "storage", "worker", "gateway", "shell"];

function bytesOf(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  return out;
}

/** The master as a `Master` capability. `onChange` runs after a machine
 * is added or removed (to save the cluster description). */
export function masterCapability(
  master: Master,
  onChange: () => Promise<void>,
): rpc.Cap {
  return rpc.serve(MasterSchema, {
    status(_params, results) {
      const status = master.status();
      results.directoryVersion = BigInt(status.directoryVersion);
      const list = results._initMachines(status.machines.length);
      status.machines.forEach((machine, i) => {
        const out = list.get(i);
        out.name = machine.name;
        out.address = machine.agentAddress;
        out.alive = machine.alive;
        out.draining = machine.draining;
        const report = machine.report;
        if (report === undefined) return;
        const specs = out._initSpecs();
        specs.cores = report.specs.cores;
        specs.memoryBytes = BigInt(report.specs.memoryBytes);
        specs.diskBytes = BigInt(report.specs.diskBytes);
        const roles = out._initRoles(report.roles.length);
        report.roles.forEach((role, j) => {
          const item = roles.get(j);
          item.role = ROLES.indexOf(role.role) as 0;
          if (role.vatId !== "") {
            item._initVatId()._initPublicKey(32).copyBuffer(
              bytesOf(role.vatId),
            );
          }
          item.running = role.running;
          item.restarts = role.restarts;
          item.failed = role.failed ?? false;
          item.address = role.address;
        });
      });
      return Promise.resolve();
    },
    async addMachine(params) {
      parseAddress(params.agentAddress);
      master.addMachine({
        name: params.name,
        agentAddress: params.agentAddress,
      });
      await onChange();
    },
    async removeMachine(params) {
      await master.removeMachine(params.name);
      await onChange();
    },
  });
}

/**
 * Drains workers through whichever coordinator answers first, from the
 * coordinator addresses `coordinators()` gives at the time of the call.
 */
export class RpcDrainLink implements DrainLink {
  readonly #coordinators: () => string[];
  readonly #log: Logger;

  constructor(coordinators: () => string[], log: Logger) {
    this.#coordinators = coordinators;
    this.#log = log;
  }

  async drainWorker(workerVatId: string): Promise<number> {
    const errors: unknown[] = [];
    for (const address of this.#coordinators()) {
      let connection: rpc.RpcConnection | undefined;
      try {
        connection = new rpc.RpcConnection(
          await rpc.connectTcp(parseAddress(address)),
        );
        const coordinator = rpc.bootstrap(connection, CoordinatorSchema);
        const result = await coordinator.drainWorker((params) => {
          params.workerId = workerVatId;
        }).promise();
        rpc.release(coordinator);
        return result.moved;
      } catch (error) {
        this.#log.warn("drain-through-coordinator-failed", { address, error });
        errors.push(error);
      } finally {
        connection?.close();
      }
    }
    throw new AggregateError(
      errors,
      `no coordinator could drain worker ${workerVatId}`,
    );
  }
}
