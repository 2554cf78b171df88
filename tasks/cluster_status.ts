/**
 * Shows a simulated cluster (tasks/cluster.ts): its machines with their
 * specs and roles, as the master sees them, and its grains, as a
 * coordinator records them. Also carries out `cluster add` and
 * `cluster remove` against the master.
 *
 * ```sh
 * deno task cluster:status [--dir DIR]
 * deno task cluster:status --admin-password   # the first admin's password
 * ```
 *
 * The shell prints the first admin's password once, on its standard
 * output, which the machine agent keeps in a 0600 file in the role's
 * folder (never in the agent's log); `--admin-password` reads it there.
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

/** The first-admin lines the shells printed, from the files the agents
 * keep their roles' output in. */
async function adminPasswordLines(
  dir: string,
  machines: number,
): Promise<string[]> {
  const lines: string[] = [];
  for (let index = 1; index <= machines; index++) {
    let text: string;
    try {
      text = await Deno.readTextFile(`${dir}/m${index}/roles/shell/output`);
    } catch {
      continue;
    }
    lines.push(
      ...text.split("\n").filter((line) =>
        line.includes("admin account created")
      ),
    );
  }
  return lines;
}

/** A mistake in the command line: one clear line, status 2. */
function usageError(message: string): never {
  console.error(
    `cluster: ${message}\n` +
      "usage: deno task cluster:status [--dir DIR] " +
      "[--add NAME HOST:PORT | --remove NAME]",
  );
  Deno.exit(2);
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
      const name = args[remove + 1];
      if (name === undefined || name.startsWith("--")) {
        usageError("--remove needs a machine name");
      }
      try {
        await master.removeMachine((p) => {
          p.name = name;
        }).promise();
      } catch (error) {
        // The master refuses an unknown machine with a RangeError, which
        // arrives as the RPC exception's message.
        usageError(
          `cannot remove ${JSON.stringify(name)}: ${
            error instanceof Error ? error.message : String(error)
          }`,
        );
      }
      console.log(`removed ${name}`);
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
  if (args.includes("--admin-password")) {
    const lines = await adminPasswordLines(state.dir, state.addresses.length);
    if (lines.length === 0) {
      console.error(
        "no shell has printed an admin password yet (it does so once, when " +
          "the cluster's first shell starts with no users)",
      );
      Deno.exit(1);
    }
    console.log(lines.join("\n"));
  } else if (args.includes("--inside")) {
    await inside(args, state.masterAddress);
  } else {
    await runInside(state, new URL(import.meta.url).pathname, [
      "--dir",
      dir,
      ...args.filter((a, i) => a !== "--dir" && args[i - 1] !== "--dir"),
    ]);
  }
}
