/**
 * Shows a simulated cluster (tasks/cluster.ts): its machines with their
 * specs and roles, as the master sees them, and its grains, as a
 * coordinator records them. Also carries out `cluster add` and
 * `cluster remove` against the master.
 *
 * ```sh
 * deno task cluster:status [--dir DIR]
 * ```
 *
 * @module
 */
import * as rpc from "../services/rpc/mod.ts";
import { Master } from "../proto/gen/master.ts";
import { Coordinator } from "../proto/gen/coordinator.ts";
import { readState, runInside } from "./cluster.ts";

const ROLES = ["coordinator", "storage", "worker", "gateway", "shell"];
const GiB = 2 ** 30;

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function hostPort(address: string): rpc.TcpAddress {
  const at = address.lastIndexOf(":");
  return {
    hostname: address.slice(0, at),
    port: Number(address.slice(at + 1)),
  };
}

async function connect(address: string): Promise<rpc.RpcConnection> {
  return new rpc.RpcConnection(await rpc.connectTcp(hostPort(address)));
}

async function inside(args: string[], masterAddress: string): Promise<void> {
  const connection = await connect(masterAddress);
  const master = rpc.bootstrap(connection, Master);
  try {
    const add = args.indexOf("--add");
    if (add >= 0) {
      await master.addMachine((p) => {
        p.name = args[add + 1];
        p.agentAddress = args[add + 2];
      }).promise();
      console.log(`added ${args[add + 1]}; it gets roles at the next round`);
    }
    const remove = args.indexOf("--remove");
    if (remove >= 0) {
      await master.removeMachine((p) => {
        p.name = args[remove + 1];
      }).promise();
      console.log(`removed ${args[remove + 1]}`);
    }
    const status = await master.status().promise();
    const workerMachine = new Map<string, string>();
    const coordinators: string[] = [];
    console.log(`directory version ${status.directoryVersion}`);
    console.log(
      "machine  address            alive  cores  memory  disk     roles",
    );
    for (const m of status.machines) {
      const roles = m.roles.map((r) => {
        const name = ROLES[r.role];
        if (name === "worker" && r._hasVatId()) {
          workerMachine.set(hexOf(r.vatId.publicKey.toUint8Array()), m.name);
        }
        if (name === "coordinator" && m.alive) coordinators.push(r.address);
        const state = r.failed
          ? " (failed: invalid configuration)"
          : r.running
          ? ""
          : " (down)";
        return `${name}${state}${
          r.restarts > 0 ? ` restarts=${r.restarts}` : ""
        }`;
      });
      console.log(
        [
          m.name.padEnd(8),
          m.address.padEnd(18),
          (m.alive ? "yes" : "no").padEnd(6),
          String(m.specs.cores).padEnd(6),
          `${Number(m.specs.memoryBytes) / GiB}G`.padEnd(7),
          `${Number(m.specs.diskBytes) / GiB}G`.padEnd(8),
          roles.join(", ") + (m.draining ? " [draining]" : ""),
        ].join(" "),
      );
    }
    for (const address of coordinators) {
      try {
        const c = await connect(address);
        const coordinator = rpc.bootstrap(c, Coordinator);
        const grains = (await coordinator.listGrains().promise()).grains;
        console.log(`grains (${grains.length}, from coordinator ${address}):`);
        for (const g of grains) {
          const where = workerMachine.get(g.workerId) ?? g.workerId;
          console.log(`  ${g.grainId} on ${where} (epoch ${g.epoch})`);
        }
        rpc.release(coordinator);
        c.close();
        break;
      } catch (error) {
        console.log(`coordinator ${address} does not answer: ${error}`);
      }
    }
  } finally {
    rpc.release(master);
    connection.close();
  }
}

if (import.meta.main) {
  const args = [...Deno.args];
  const at = args.indexOf("--dir");
  const dir = at >= 0
    ? args[at + 1]
    : new URL("../.data/cluster", import.meta.url).pathname;
  const state = await readState(dir);
  if (args.includes("--inside")) {
    await inside(args, state.masterAddress);
  } else {
    await runInside(state, new URL(import.meta.url).pathname, [
      "--dir",
      dir,
      ...args.filter((a, i) => a !== "--dir" && args[i - 1] !== "--dir"),
    ]);
  }
}
