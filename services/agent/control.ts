/**
 * The agent's `Agent` capability (proto/agent.capnp): how the master reads
 * a machine's report and sends it assignments and vat directories.
 *
 * It is served as the bootstrap of a TCP listener on the machine's
 * address. Anything that reaches the port may call it, so the port must be
 * reachable only from the cluster's own network (the simulated cluster's
 * bridge, or the machines' private network).
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import {
  Agent as AgentSchema,
  type AgentReport as AgentReportStruct,
  type Assignment as AssignmentStruct,
  type Directory as DirectoryStruct,
} from "../../proto/gen/agent.ts";
import type { Logger } from "../runtime/log.ts";
import { type Agent, type AgentReport, ROLE_NAMES } from "./agent.ts";

const ZONE_NAMES = [
  "vat",
  "storage",
  "coordinators",
  "gateways",
  "shells",
] as const;

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

function roleName(value: number): string {
  // An unknown enum value stays unknown, and the agent's validation names
  // it in the error the master gets.
  return ROLE_NAMES[value] ?? `role#${value}`;
}

/** The plain form of an Assignment struct, for {@link Agent.assign}. */
export function readAssignment(assignment: AssignmentStruct): unknown {
  return {
    version: Number(assignment.version),
    roles: assignment.roles.map((r) => ({
      role: roleName(r.role),
      settings: Object.fromEntries(
        r.settings.map((s) => [s.path, s.value]),
      ),
    })),
  };
}

/** The plain form of a Directory struct, for {@link Agent.setDirectory}. */
export function readDirectory(directory: DirectoryStruct): unknown {
  return {
    version: Number(directory.version),
    vats: directory.vats.map((v) => ({
      role: roleName(v.role),
      machine: v.machine,
      vatId: hexOf(v.path.id.publicKey.toUint8Array()),
      address: v.path.address,
      zones: v.zones.map((z) => ZONE_NAMES[z] ?? `zone#${z}`),
    })),
  };
}

/** Fills an AgentReport struct. */
export function writeReport(report: AgentReport, out: AgentReportStruct) {
  out.machine = report.machine;
  out._initVatId()._initPublicKey(32).copyBuffer(bytesOf(report.vatId));
  out.address = report.address;
  const specs = out._initSpecs();
  specs.cores = report.specs.cores;
  specs.memoryBytes = BigInt(report.specs.memoryBytes);
  specs.diskBytes = BigInt(report.specs.diskBytes);
  out.assignmentVersion = BigInt(report.assignmentVersion);
  out.directoryVersion = BigInt(report.directoryVersion);
  const roles = out._initRoles(report.roles.length);
  report.roles.forEach((role, i) => {
    const item = roles.get(i);
    item.role = ROLE_NAMES.indexOf(role.role) as 0;
    if (role.vatId !== "") {
      item._initVatId()._initPublicKey(32).copyBuffer(bytesOf(role.vatId));
    }
    item.running = role.process?.state === "running";
    item.restarts = role.process?.restarts ?? 0;
    item.failed = role.process?.state === "failed";
    item.address = role.address;
  });
}

/** The agent as an `Agent` capability. */
export function agentCapability(agent: Agent): rpc.Cap {
  return rpc.serve(AgentSchema, {
    report(_params, results) {
      writeReport(agent.report(), results._initReport());
      return Promise.resolve();
    },
    async assign(params) {
      await agent.assign(readAssignment(params.assignment));
    },
    async setDirectory(params, results) {
      results.applied = await agent.setDirectory(
        readDirectory(params.directory),
      );
    },
  });
}

/** A running control listener. */
export interface ControlListener {
  port: number;
  close(): void;
}

/**
 * Serves the agent's capability on the address. When `masterHosts` is not
 * empty, a connection from any other host is closed before a byte is read:
 * whoever can call the agent decides which roles run and which peers the
 * machine's vats trust.
 */
export function listenControl(
  agent: Agent,
  address: rpc.TcpAddress,
  log: Logger,
  masterHosts: string[] = [],
): ControlListener {
  const listener = Deno.listen({ ...address, transport: "tcp" });
  const cap = agentCapability(agent);
  const connections = new Set<rpc.RpcConnection>();
  const allowed = new Set(masterHosts);
  let closed = false;
  (async () => {
    while (!closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (!closed) log.error("control-accept-failed", { error });
        return;
      }
      const peer = conn.remoteAddr.hostname;
      if (allowed.size > 0 && !allowed.has(peer)) {
        log.warn("control-refused", { peer });
        conn.close();
        continue;
      }
      conn.setNoDelay(true);
      const connection = new rpc.RpcConnection(new rpc.StreamConnection(conn), {
        bootstrap: cap.addRef(),
      });
      connections.add(connection);
      connection.closed.then(() => connections.delete(connection));
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close() {
      closed = true;
      try {
        listener.close();
      } catch {
        // Closed already.
      }
      for (const connection of connections) connection.close();
      cap.close();
    },
  };
}
