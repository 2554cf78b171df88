/**
 * The master's side of proto/agent.capnp: an {@link AgentLink} that calls
 * each machine's `Agent` capability over RPC, keeping one connection per
 * machine and opening a new one after a failure.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import {
  Agent as AgentSchema,
  type Agent$Client,
  type AgentReport as AgentReportStruct,
} from "../../proto/gen/agent.ts";
import type { RoleName } from "./assign.ts";
import type {
  AgentLink,
  AssignmentMessage,
  DirectoryMessage,
  MachineEntry,
  MachineReport,
} from "./master.ts";

/** Wire order of the Role enum in proto/agent.capnp. */
const ROLES: RoleName[] = [
  "coordinator",
  "storage",
  "worker",
  "gateway",
  "shell",
];
/** Wire order of the TrustZone enum in proto/cluster.capnp. */
const ZONES = ["vat", "storage", "coordinators", "gateways", "shells"];

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function bytesOf(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  return out;
}

/** Splits "host:port" (an IPv6 host in brackets) into a TCP address. */
export function parseAddress(address: string): rpc.TcpAddress {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (match === null || port < 1 || port > 65535) {
    throw new RangeError(
      `address ${JSON.stringify(address)}: expected host:port`,
    );
  }
  return { hostname: match[1] ?? match[2], port };
}

/** The master's view of an AgentReport struct. */
export function readReport(report: AgentReportStruct): MachineReport {
  const role = (value: number) => {
    const name = ROLES[value];
    if (name === undefined) {
      throw new RangeError(`agent reported unknown role ${value}`);
    }
    return name;
  };
  return {
    machine: report.machine,
    vatId: hexOf(report.vatId.publicKey.toUint8Array()),
    address: report.address,
    specs: {
      cores: report.specs.cores,
      memoryBytes: Number(report.specs.memoryBytes),
      diskBytes: Number(report.specs.diskBytes),
    },
    assignmentVersion: Number(report.assignmentVersion),
    directoryVersion: Number(report.directoryVersion),
    roles: report.roles.map((r) => ({
      role: role(r.role),
      vatId: r._hasVatId() ? hexOf(r.vatId.publicKey.toUint8Array()) : "",
      address: r.address,
      running: r.running,
      restarts: r.restarts,
      failed: r.failed,
    })),
  };
}

interface Session {
  connection: rpc.RpcConnection;
  agent: Agent$Client;
}

/** Calls agents over RPC on TCP. */
export class RpcAgentLink implements AgentLink {
  readonly #sessions = new Map<string, Promise<Session>>();

  async report(machine: MachineEntry): Promise<MachineReport> {
    return await this.#call(machine, async (agent) => {
      const result = await agent.report().promise();
      return readReport(result.report);
    });
  }

  async assign(
    machine: MachineEntry,
    assignment: AssignmentMessage,
  ): Promise<void> {
    await this.#call(machine, async (agent) => {
      await agent.assign((params) => {
        const out = params._initAssignment();
        out.version = BigInt(assignment.version);
        const roles = out._initRoles(assignment.roles.length);
        assignment.roles.forEach((r, i) => {
          const item = roles.get(i);
          item.role = ROLES.indexOf(r.role) as 0;
          const entries = Object.entries(r.settings);
          const settings = item._initSettings(entries.length);
          entries.forEach(([path, value], j) => {
            settings.get(j).path = path;
            settings.get(j).value = value;
          });
        });
      }).promise();
    });
  }

  async setDirectory(
    machine: MachineEntry,
    directory: DirectoryMessage,
  ): Promise<boolean> {
    return await this.#call(machine, async (agent) => {
      const result = await agent.setDirectory((params) => {
        const out = params._initDirectory();
        out.version = BigInt(directory.version);
        const vats = out._initVats(directory.vats.length);
        directory.vats.forEach((vat, i) => {
          const item = vats.get(i);
          item.role = ROLES.indexOf(vat.role) as 0;
          item.machine = vat.machine;
          const path = item._initPath();
          path._initId()._initPublicKey(32).copyBuffer(bytesOf(vat.vatId));
          path.address = vat.address;
          const zones = item._initZones(vat.zones.length);
          vat.zones.forEach((zone, j) =>
            zones.set(j, ZONES.indexOf(zone) as 0)
          );
        });
      }).promise();
      return result.applied;
    });
  }

  /** Closes every connection. */
  close(): void {
    for (const session of this.#sessions.values()) {
      session.then((s) => {
        rpc.release(s.agent);
        s.connection.close();
      }, () => {});
    }
    this.#sessions.clear();
  }

  async #call<T>(
    machine: MachineEntry,
    body: (agent: Agent$Client) => Promise<T>,
  ): Promise<T> {
    let session = this.#sessions.get(machine.name);
    if (session === undefined) {
      session = (async () => {
        const transport = await rpc.connectTcp(
          parseAddress(machine.agentAddress),
        );
        const connection = new rpc.RpcConnection(transport);
        return { connection, agent: rpc.bootstrap(connection, AgentSchema) };
      })();
      this.#sessions.set(machine.name, session);
    }
    try {
      return await body((await session).agent);
    } catch (error) {
      // A broken connection is dropped so that the next call dials again;
      // an error the agent answered with leaves it open.
      if (
        !(error instanceof rpc.RpcError) || error.type === "disconnected"
      ) {
        this.#sessions.delete(machine.name);
        session.then((s) => s.connection.close(), () => {});
      }
      throw error;
    }
  }
}
