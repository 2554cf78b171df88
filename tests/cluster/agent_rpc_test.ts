// The master and agents talking over real RPC on loopback TCP
// (proto/agent.capnp), with agents supervising real role processes.
import assert from "node:assert/strict";
import fc from "fast-check";
import { Logger } from "../../services/runtime/log.ts";
import { Agent, type RoleCatalogue } from "../../services/agent/agent.ts";
import { listenControl } from "../../services/agent/control.ts";
import { Master } from "../../services/master/master.ts";
import {
  parseAddress,
  RpcAgentLink,
} from "../../services/master/agent_client.ts";

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

Deno.test("the master assigns roles and spreads the directory over RPC", async () => {
  const root = await Deno.makeTempDir({ prefix: "agent-rpc-test-" });
  const agents: Agent[] = [];
  const listeners: { close(): void }[] = [];
  const link = new RpcAgentLink();
  try {
    const master = new Master({ link, log: quiet("master") });
    for (const [name, memory, disk] of [["a", 8, 4000], ["b", 64, 100]]) {
      const agent = await Agent.start({
        machine: name as string,
        stateDir: `${root}/${name}`,
        address: "127.0.0.1",
        catalogue,
        log: quiet("agent"),
        claimedSpecs: {
          memoryBytes: (memory as number) * GiB,
          diskBytes: (disk as number) * GiB,
        },
        roleOutput: "null",
      });
      agents.push(agent);
      const control = listenControl(
        agent,
        { hostname: "127.0.0.1", port: 0 },
        quiet("agent"),
      );
      listeners.push(control);
      master.addMachine({
        name: name as string,
        agentAddress: `127.0.0.1:${control.port}`,
      });
    }
    assert.deepEqual((await master.tick()).sort(), ["a", "b"]);
    const roles = agents.map((a) => a.report().roles.map((r) => r.role));
    assert.deepEqual(roles[0], ["storage", "coordinator"]);
    assert.deepEqual(roles[1], ["coordinator", "gateway", "shell", "worker"]);

    const status = master.status().machines;
    assert.equal(status[0].report!.specs.diskBytes, 4000 * GiB);
    assert.equal(status[0].report!.vatId, agents[0].vatId);

    const directory = JSON.parse(
      await Deno.readTextFile(agents[1].directoryFile),
    );
    assert.equal(directory.vats.length, 6, JSON.stringify(directory));
    const storage = directory.vats.find((v: { role: string }) =>
      v.role === "storage"
    );
    assert.equal(storage.machine, "a");
    assert.deepEqual(storage.zones, ["storage"]);
    assert.equal(storage.address, "127.0.0.1:7101");
    assert.equal(storage.vatId, agents[0].report().roles[0].vatId);

    // An assignment the agent refuses comes back as an RPC error.
    await assert.rejects(
      link.assign(
        { name: "a", agentAddress: master.status().machines[0].agentAddress },
        { version: 0, roles: [] },
      ),
      /older/,
    );
    // The connection survives a refused call.
    assert.deepEqual(await master.tick(), []);
  } finally {
    link.close();
    for (const listener of listeners) listener.close();
    for (const agent of agents) await agent.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("agent addresses are parsed or refused", () => {
  assert.deepEqual(parseAddress("10.77.0.3:7000"), {
    hostname: "10.77.0.3",
    port: 7000,
  });
  assert.deepEqual(parseAddress("[::1]:7000"), { hostname: "::1", port: 7000 });
  assert.throws(() => parseAddress("10.77.0.3"), /host:port/);
  assert.throws(() => parseAddress("h:99999"), /host:port/);
});

Deno.test("any text is parsed as an address or refused with a RangeError", () => {
  fc.assert(
    fc.property(fc.string(), (text) => {
      try {
        const { hostname, port } = parseAddress(text);
        assert.ok(hostname.length > 0 && port >= 1 && port <= 65535);
      } catch (error) {
        assert.ok(error instanceof RangeError, String(error));
      }
    }),
    { numRuns: 2000, seed: 8 },
  );
});

Deno.test("an agent answers only the master's hosts", async () => {
  const root = await Deno.makeTempDir({ prefix: "agent-hosts-test-" });
  const agent = await Agent.start({
    machine: "a",
    stateDir: `${root}/a`,
    address: "127.0.0.1",
    catalogue,
    log: quiet("agent"),
    roleOutput: "null",
  });
  const listeners = [
    listenControl(agent, { hostname: "127.0.0.1", port: 0 }, quiet("agent"), [
      "127.0.0.9",
    ]),
    listenControl(agent, { hostname: "127.0.0.1", port: 0 }, quiet("agent"), [
      "127.0.0.1",
    ]),
  ];
  const link = new RpcAgentLink();
  try {
    const [refusing, accepting] = listeners.map((l) => ({
      name: `port${l.port}`,
      agentAddress: `127.0.0.1:${l.port}`,
    }));
    await assert.rejects(link.report(refusing));
    await assert.rejects(link.assign(refusing, { version: 9, roles: [] }));
    assert.equal(agent.report().assignmentVersion, 0);
    assert.equal((await link.report(accepting)).vatId, agent.vatId);
  } finally {
    link.close();
    for (const l of listeners) l.close();
    await agent.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a role failed on invalid configuration is reported failed over RPC", async () => {
  const root = await Deno.makeTempDir({ prefix: "agent-rpc-failed-" });
  const link = new RpcAgentLink();
  let agent: Agent | undefined;
  let control: { port: number; close(): void } | undefined;
  try {
    agent = await Agent.start({
      machine: "a",
      stateDir: `${root}/a`,
      address: "127.0.0.1",
      catalogue,
      log: quiet("agent"),
      roleOutput: "null",
    });
    control = listenControl(
      agent,
      { hostname: "127.0.0.1", port: 0 },
      quiet("agent"),
    );
    const machine = { name: "a", agentAddress: `127.0.0.1:${control.port}` };
    await agent.assign({
      version: 1,
      roles: [{ role: "worker", settings: { misspelled: "1" } }],
    });
    const deadline = Date.now() + 20_000;
    let role = (await link.report(machine)).roles[0];
    while (!role.failed && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      role = (await link.report(machine)).roles[0];
    }
    assert.equal(role.role, "worker");
    assert.equal(role.failed, true);
    assert.equal(role.running, false);
  } finally {
    link.close();
    control?.close();
    await agent?.stop();
    await Deno.remove(root, { recursive: true });
  }
});
