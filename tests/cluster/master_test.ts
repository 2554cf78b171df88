// The master driving real agents, each supervising real role processes.
// The agents live in this process and the master reaches them through an
// in-process link (the cluster reaches them over RPC); everything below the
// link is the real thing.
import assert from "node:assert/strict";
import { Logger } from "../../services/runtime/log.ts";
import { Agent, type RoleCatalogue } from "../../services/agent/agent.ts";
import {
  type AgentLink,
  type MachineEntry,
  type MachineReport,
  Master,
} from "../../services/master/master.ts";

const quiet = (role: string) => new Logger({ role, level: "error" });
const testRole = new URL("./testdata/test_role.ts", import.meta.url).pathname;
const GiB = 2 ** 30;

const catalogue: RoleCatalogue = Object.fromEntries(
  (["coordinator", "storage", "worker", "gateway", "shell"] as const).map((
    role,
    i,
  ) => [role, {
    entry: testRole,
    port: 7100 + i,
    permissions: (c) => ({ read: [c.roleDir], write: [c.roleDir] }),
    overrides: (c) => [
      `roleDir=${c.roleDir}`,
      `vatKeyFile=${c.vatKeyFile}`,
      `directoryFile=${c.directoryFile}`,
    ],
  }]),
);

/** Turns an agent's report into the master's view of it. */
function toMachineReport(agent: Agent): MachineReport {
  const report = agent.report();
  return {
    ...report,
    roles: report.roles.map((r) => ({
      role: r.role,
      vatId: r.vatId,
      address: r.address,
      running: r.process?.state === "running",
      restarts: r.process?.restarts ?? 0,
    })),
  };
}

class LocalLink implements AgentLink {
  readonly agents = new Map<string, Agent>();
  readonly unreachable = new Set<string>();
  assignments = 0;

  #agent(machine: MachineEntry): Agent {
    const agent = this.agents.get(machine.name);
    if (agent === undefined || this.unreachable.has(machine.name)) {
      throw new Error(`${machine.name} does not answer`);
    }
    return agent;
  }
  report(machine: MachineEntry) {
    return Promise.resolve().then(() => toMachineReport(this.#agent(machine)));
  }
  async assign(machine: MachineEntry, assignment: unknown) {
    this.assignments++;
    await this.#agent(machine).assign(assignment);
  }
  async setDirectory(machine: MachineEntry, directory: unknown) {
    return await this.#agent(machine).setDirectory(directory);
  }
}

interface Cluster {
  link: LocalLink;
  clock: { ms: number };
  master(): Master;
  boot(name: string, memoryGiB: number, diskGiB: number): Promise<Agent>;
  directory(name: string): Promise<{ version: number; vats: unknown[] }>;
}

async function withCluster(body: (c: Cluster) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "master-test-" });
  const link = new LocalLink();
  const clock = { ms: 0 };
  try {
    await body({
      link,
      clock,
      master: () =>
        new Master({
          link,
          log: quiet("master"),
          deadAfterMs: 1000,
          now: () => clock.ms,
        }),
      async boot(name, memoryGiB, diskGiB) {
        const agent = await Agent.start({
          machine: name,
          stateDir: `${root}/${name}`,
          address: `10.0.0.${link.agents.size + 1}`,
          catalogue,
          log: quiet("agent"),
          claimedSpecs: {
            cores: 4,
            memoryBytes: memoryGiB * GiB,
            diskBytes: diskGiB * GiB,
          },
          roleOutput: "null",
          stopGraceMs: 5000,
        });
        link.agents.set(name, agent);
        return agent;
      },
      async directory(name) {
        return JSON.parse(
          await Deno.readTextFile(`${root}/${name}/directory.json`),
        );
      },
    });
  } finally {
    for (const agent of link.agents.values()) await agent.stop();
    await Deno.remove(root, { recursive: true });
  }
}

function rolesOf(agent: Agent): string[] {
  return agent.report().roles.map((r) => r.role);
}

async function fiveMachines(c: Cluster, master: Master) {
  await c.boot("disk", 8, 4000);
  await c.boot("small", 8, 100);
  for (const name of ["w1", "w2", "w3"]) await c.boot(name, 64, 100);
  for (const name of c.link.agents.keys()) {
    master.addMachine({ name, agentAddress: `${name}:7000` });
  }
  await master.tick();
}

Deno.test("gives five machines roles by their specs and each vat its peers", async () => {
  await withCluster(async (c) => {
    const master = c.master();
    await fiveMachines(c, master);
    const agents = c.link.agents;
    assert.deepEqual(rolesOf(agents.get("disk")!), ["storage", "coordinator"]);
    assert.deepEqual(rolesOf(agents.get("small")!), [
      "coordinator",
      "gateway",
      "shell",
    ]);
    for (const w of ["w1", "w2", "w3"]) {
      assert.deepEqual(rolesOf(agents.get(w)!), ["worker"]);
    }
    const directory = await c.directory("w1");
    assert.equal(directory.vats.length, 8);
    assert.deepEqual(await c.directory("disk"), directory);
    const coordinators = directory.vats.filter((v) =>
      (v as { zones: string[] }).zones.includes("coordinators")
    );
    assert.equal(coordinators.length, 2);
    // Roles run as their own processes, each with its own vat.
    for (const agent of agents.values()) {
      for (const role of agent.report().roles) {
        assert.equal(role.process?.state, "running");
      }
    }
  });
});

Deno.test("a dead machine's control roles move and its vats leave the directory", async () => {
  await withCluster(async (c) => {
    const master = c.master();
    await fiveMachines(c, master);
    const before = (await c.directory("w1")).version;
    c.link.unreachable.add("small");
    await c.link.agents.get("small")!.stop();
    await master.tick();
    c.clock.ms += 2000;
    await master.tick();
    const coordinators = [...c.link.agents].filter(([name, agent]) =>
      name !== "small" && rolesOf(agent).includes("coordinator")
    );
    assert.equal(coordinators.length, 2);
    const directory = await c.directory("w1");
    assert.ok(directory.version > before);
    assert.ok(
      !directory.vats.some((v) =>
        (v as { machine: string }).machine === "small"
      ),
    );
    const status = master.status().machines.find((m) => m.name === "small")!;
    assert.equal(status.alive, false);
  });
});

Deno.test("a new master carries on without moving anything", async () => {
  await withCluster(async (c) => {
    await fiveMachines(c, c.master());
    const assignments = c.link.assignments;
    const version = (await c.directory("w2")).version;
    const successor = c.master();
    for (const name of c.link.agents.keys()) {
      successor.addMachine({ name, agentAddress: `${name}:7000` });
    }
    assert.deepEqual(await successor.tick(), []);
    assert.equal(c.link.assignments, assignments);
    assert.ok((await c.directory("w2")).version > version);
  });
});

Deno.test("a machine added while running becomes a worker and a known vat", async () => {
  await withCluster(async (c) => {
    const master = c.master();
    await fiveMachines(c, master);
    const fresh = await c.boot("w4", 64, 100);
    master.addMachine({ name: "w4", agentAddress: "w4:7000" });
    assert.deepEqual(await master.tick(), ["w4"]);
    assert.deepEqual(rolesOf(fresh), ["worker"]);
    const directory = await c.directory("disk");
    assert.ok(
      directory.vats.some((v) => (v as { machine: string }).machine === "w4"),
    );
  });
});

Deno.test("removing a machine drains its worker before its roles stop", async () => {
  await withCluster(async (c) => {
    const events: string[] = [];
    const master = new Master({
      link: c.link,
      log: quiet("master"),
      drain: {
        drainWorker(vatId) {
          const w3 = c.link.agents.get("w3")!.report();
          assert.equal(vatId, w3.roles[0].vatId);
          assert.equal(w3.roles[0].process?.state, "running");
          events.push("drained");
          return Promise.resolve(4);
        },
      },
    });
    await fiveMachines(c, master);
    await master.removeMachine("w3");
    events.push("removed");
    assert.deepEqual(events, ["drained", "removed"]);
    assert.deepEqual(rolesOf(c.link.agents.get("w3")!), []);
    assert.equal(master.status().machines.length, 4);
    const directory = await c.directory("w1");
    assert.ok(
      !directory.vats.some((v) => (v as { machine: string }).machine === "w3"),
    );
  });
});
