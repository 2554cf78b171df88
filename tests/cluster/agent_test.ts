// The machine agent with real role processes: each test role is a Deno
// process started under the permissions the catalogue grants, killed with
// real signals, and restarted by the agent's supervisor.
import assert from "node:assert/strict";
import fc from "fast-check";
import { Logger } from "../../services/runtime/log.ts";
import {
  Agent,
  AgentRequestError,
  type RoleCatalogue,
  type RoleDefinition,
} from "../../services/agent/agent.ts";
import { loadOrCreateVatKey } from "../../services/agent/vat_key.ts";
import { roleCommand } from "../../services/runtime/permissions.ts";
import { VatIdentity, vatIdHex } from "../../services/rpc/vat_id.ts";

const quiet = new Logger({ role: "agent", level: "error" });
const testRole = new URL("./testdata/test_role.ts", import.meta.url).pathname;

interface Started {
  pid: number;
  color: string;
  vatKeyReadable: boolean;
  forbiddenReadable: boolean;
}

function catalogue(forbiddenFile: string): RoleCatalogue {
  const definition: RoleDefinition = {
    entry: testRole,
    permissions: (c) => ({ read: [c.roleDir], write: [c.roleDir] }),
    overrides: (c) => [
      `roleDir=${c.roleDir}`,
      `vatKeyFile=${c.vatKeyFile}`,
      `directoryFile=${c.directoryFile}`,
      `forbiddenFile=${forbiddenFile}`,
    ],
  };
  return { worker: definition, storage: definition };
}

async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting until ${what}`);
}

/** Every start a role recorded in its folder, oldest first by pid order. */
async function starts(stateDir: string, role: string): Promise<Started[]> {
  const out: Started[] = [];
  try {
    for await (const entry of Deno.readDir(`${stateDir}/roles/${role}`)) {
      if (!entry.name.startsWith("started-")) continue;
      const path = `${stateDir}/roles/${role}/${entry.name}`;
      try {
        out.push(JSON.parse(await Deno.readTextFile(path)));
      } catch {
        // Being written right now; the next poll reads it.
      }
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

async function withMachine(
  body: (
    context: { stateDir: string; boot(): Promise<Agent>; forbidden: string },
  ) => Promise<void>,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "agent-test-" });
  const forbidden = `${root}/secret.txt`;
  await Deno.writeTextFile(forbidden, "not for roles");
  const agents: Agent[] = [];
  try {
    await body({
      stateDir: `${root}/machine`,
      forbidden,
      boot: async () => {
        const agent = await Agent.start({
          machine: "m1",
          stateDir: `${root}/machine`,
          address: "127.0.0.1",
          catalogue: catalogue(forbidden),
          log: quiet,
          backoff: { initialMs: 50, maxMs: 400, stableMs: 60_000 },
          stopGraceMs: 5_000,
          roleOutput: "null",
        });
        agents.push(agent);
        return agent;
      },
    });
  } finally {
    for (const agent of agents) await agent.stop();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("runs an assigned role as its own process with scoped permissions", async () => {
  await withMachine(async ({ stateDir, boot }) => {
    const agent = await boot();
    await agent.assign({ version: 1, roles: [{ role: "worker" }] });
    const [started] = await waitUntil("the role starts", async () => {
      const s = await starts(stateDir, "worker");
      return s.length > 0 ? s : undefined;
    });
    assert.notEqual(started.pid, Deno.pid);
    assert.equal(started.vatKeyReadable, true);
    assert.equal(started.forbiddenReadable, false, "read outside its folder");
    const report = agent.report();
    assert.equal(report.roles[0].role, "worker");
    assert.match(report.roles[0].vatId, /^[0-9a-f]{64}$/);
    assert.notEqual(report.roles[0].vatId, report.vatId, "a vat per process");
    assert.ok(report.specs.cores > 0 && report.specs.diskBytes > 0);
  });
});

Deno.test("restarts a role killed with SIGKILL", async () => {
  await withMachine(async ({ stateDir, boot }) => {
    const agent = await boot();
    await agent.assign({ version: 1, roles: [{ role: "worker" }] });
    const first = await waitUntil("the role starts", async () => {
      return (await starts(stateDir, "worker"))[0];
    });
    Deno.kill(first.pid, "SIGKILL");
    const second = await waitUntil("the role starts again", async () => {
      return (await starts(stateDir, "worker")).find((s) =>
        s.pid !== first.pid
      );
    });
    assert.ok(alive(second.pid));
    const status = agent.report().roles[0].process!;
    assert.equal(status.restarts, 1);
    assert.equal(status.lastExit?.signal, "SIGKILL");
  });
});

Deno.test("backs off more and more when a role keeps crashing", async () => {
  await withMachine(async ({ boot }) => {
    const agent = await boot();
    await agent.assign({
      version: 1,
      roles: [{ role: "worker", settings: { crash: "true" } }],
    });
    const status = await waitUntil("three restarts", () => {
      const s = agent.report().roles[0].process!;
      return s.restarts >= 3 ? s : undefined;
    });
    assert.equal(status.lastExit?.code, 3);
    // 50, 100, 200, 400 (the cap), 400...
    assert.ok(status.nextDelayMs >= 400, `next delay ${status.nextDelayMs}`);
    assert.ok(status.nextDelayMs <= 400);
  });
});

Deno.test("after a reboot without a master, runs its last assignment", async () => {
  await withMachine(async ({ stateDir, boot }) => {
    const before = await boot();
    await before.assign({
      version: 4,
      roles: [{ role: "worker", settings: { color: "blue" } }],
    });
    await waitUntil("the role starts", async () => {
      return (await starts(stateDir, "worker"))[0];
    });
    const vatId = before.report().vatId;
    const roleVatId = before.report().roles[0].vatId;
    await before.stop();
    for (const s of await starts(stateDir, "worker")) {
      await waitUntil("the old role exits", () => alive(s.pid) ? undefined : 1);
    }

    const after = await boot();
    const restarted = await waitUntil(
      "the role starts after boot",
      async () => {
        const all = await starts(stateDir, "worker");
        return all.find((s) => alive(s.pid));
      },
    );
    assert.equal(restarted.color, "blue");
    // Settings may hold secrets: they reach the role in a file only root
    // reads, not on its command line.
    const cmdline = await Deno.readTextFile(`/proc/${restarted.pid}/cmdline`);
    assert.doesNotMatch(cmdline, /blue/);
    const settings = `${stateDir}/roles/worker/settings.json`;
    assert.equal((await Deno.stat(settings)).mode! & 0o777, 0o600);
    assert.equal(after.report().assignmentVersion, 4);
    assert.equal(after.report().vatId, vatId, "same machine, same vat key");
    assert.equal(after.report().roles[0].vatId, roleVatId);
  });
});

Deno.test("a wiped machine boots as a new vat", async () => {
  await withMachine(async ({ stateDir, boot }) => {
    const first = (await boot()).report().vatId;
    assert.equal((await boot()).report().vatId, first);
    await Agent.wipe(stateDir);
    const fresh = await boot();
    assert.notEqual(fresh.report().vatId, first);
    assert.equal(fresh.report().assignmentVersion, 0);
  });
});

Deno.test("a role left out of a new assignment is stopped", async () => {
  await withMachine(async ({ stateDir, boot }) => {
    const agent = await boot();
    await agent.assign({
      version: 1,
      roles: [{ role: "worker" }, { role: "storage" }],
    });
    const worker = await waitUntil("worker starts", async () => {
      return (await starts(stateDir, "worker"))[0];
    });
    await waitUntil("storage starts", async () => {
      return (await starts(stateDir, "storage"))[0];
    });
    await agent.assign({ version: 2, roles: [{ role: "storage" }] });
    assert.equal(alive(worker.pid), false);
    assert.deepEqual(agent.report().roles.map((r) => r.role), ["storage"]);
  });
});

Deno.test("stale or malformed assignments and directories are refused", async () => {
  await withMachine(async ({ boot }) => {
    const agent = await boot();
    await agent.assign({ version: 5, roles: [] });
    await assert.rejects(
      agent.assign({ version: 4, roles: [] }),
      (e: Error) => e instanceof AgentRequestError && /older/.test(e.message),
    );
    await assert.rejects(
      agent.assign({ version: 6, roles: [{ role: "root-shell" }] }),
      /roles\.0\.role/,
    );
    await assert.rejects(
      agent.assign({
        version: 6,
        roles: [{ role: "worker", settings: { "../x": "1" } }],
      }),
      AgentRequestError,
    );
    await assert.rejects(agent.assign("nonsense"), AgentRequestError);
    const directory = {
      version: 2,
      vats: [{
        role: "coordinator",
        machine: "m2",
        vatId: "ab".repeat(32),
        address: "10.77.0.2:7000",
        zones: ["coordinators"],
      }],
    };
    assert.equal(await agent.setDirectory(directory), true);
    assert.equal(await agent.setDirectory({ ...directory, version: 1 }), false);
    await assert.rejects(
      agent.setDirectory({ version: 3, vats: [{ vatId: "zz" }] }),
      AgentRequestError,
    );
    const kept = JSON.parse(await Deno.readTextFile(agent.directoryFile));
    assert.equal(kept.version, 2);
  });
});

Deno.test("the vat keys the agent makes load as RPC vat identities", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vat-key-test-" });
  try {
    const vatId = await loadOrCreateVatKey(`${dir}/vat.key`);
    assert.equal(await loadOrCreateVatKey(`${dir}/vat.key`), vatId);
    const identity = await VatIdentity.load(`${dir}/vat.key`);
    assert.equal(vatIdHex(identity.vatId), vatId);
    await Deno.chmod(`${dir}/vat.key`, 0o644);
    await assert.rejects(loadOrCreateVatKey(`${dir}/vat.key`), /mode 644/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("arbitrary assignments and directories get a typed error, never a crash", async () => {
  await withMachine(async ({ boot }) => {
    const agent = await boot();
    const roleish = fc.oneof(
      fc.constantFrom("worker", "storage", "coordinator", "nope"),
      fc.string(),
    );
    const assignmentish = fc.oneof(
      fc.anything(),
      fc.record({
        version: fc.oneof(fc.integer(), fc.double(), fc.string()),
        roles: fc.array(
          fc.record({
            role: roleish,
            settings: fc.dictionary(fc.string(), fc.anything()),
          }),
          { maxLength: 3 },
        ),
      }),
    );
    await fc.assert(
      fc.asyncProperty(assignmentish, fc.anything(), async (a, d) => {
        // Only refusals: version -1 can never be accepted, so no role runs.
        const bad = typeof a === "object" && a !== null && "version" in a
          ? { ...a, version: -1 }
          : a;
        await assert.rejects(agent.assign(bad), AgentRequestError);
        try {
          await agent.setDirectory(d);
        } catch (error) {
          assert.ok(error instanceof AgentRequestError, String(error));
        }
      }),
      { numRuns: 300, seed: 8 },
    );
    assert.deepEqual(agent.report().roles, []);
  });
});

Deno.test("an agent restarted after SIGKILL replaces the roles it left behind", async () => {
  const dir = await Deno.makeTempDir({ prefix: "agent-crash-test-" });
  const script = new URL("./testdata/agent_process.ts", import.meta.url);
  const spawn = () =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", script.pathname, `${dir}/machine`],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
  const agents: Deno.ChildProcess[] = [];
  try {
    agents.push(spawn());
    const first = await waitUntil("the role starts", async () => {
      return (await starts(`${dir}/machine`, "worker"))[0];
    });
    Deno.kill(agents[0].pid, "SIGKILL");
    await agents[0].status;
    assert.ok(alive(first.pid), "the role outlived its agent");

    agents.push(spawn());
    const second = await waitUntil("a new role starts", async () => {
      return (await starts(`${dir}/machine`, "worker")).find((s) =>
        s.pid !== first.pid
      );
    });
    await waitUntil(
      "the old role is gone",
      () => alive(first.pid) ? undefined : true,
    );
    assert.ok(alive(second.pid));
  } finally {
    for (const agent of agents) {
      try {
        agent.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      await agent.status;
      await agent.stdout.cancel();
    }
    for (const s of await starts(`${dir}/machine`, "worker")) {
      if (alive(s.pid)) Deno.kill(s.pid, "SIGKILL");
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the agent's process boots under the permissions its unit grants", async () => {
  const dir = await Deno.makeTempDir({ prefix: "agent-main-test-" });
  const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  // The same grants as image/units/blackrock-agent.service.
  const [command, ...args] = roleCommand({
    deno: Deno.execPath(),
    entry: `${root}/services/agent/main.ts`,
    permissions: {
      net: [`127.0.0.1:${port}`],
      read: [root, dir],
      write: [dir],
      run: [Deno.execPath()],
      sys: ["systemMemoryInfo", "statfs"],
    },
    overrides: [
      "machine=m1",
      `stateDir=${dir}`,
      `controlPort=${port}`,
      `codeRoot=${root}`,
    ],
  });
  const child = new Deno.Command(command, {
    args,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const reading = (async () => {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of child.stderr) {
      buffered += decoder.decode(chunk, { stream: true });
      const parts = buffered.split("\n");
      buffered = parts.pop()!;
      lines.push(...parts);
    }
  })();
  try {
    const listening = await waitUntil(
      "the agent listens",
      () =>
        lines.find((l) =>
          l.includes('"event":"listening"') || l.includes('"level":"error"')
        ),
    );
    assert.match(listening, /"event":"listening"/);
    const booted = JSON.parse(
      lines.find((l) => l.includes('"event":"agent-booted"'))!,
    );
    assert.ok(booted.specs.diskBytes > 0 && booted.specs.memoryBytes > 0);
    assert.equal((await Deno.stat(`${dir}/vat.key`)).mode! & 0o777, 0o600);
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await reading;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a role waiting for a peer starts once the directory names one, and stays up as it changes", async () => {
  await withMachine(async ({ stateDir, forbidden }) => {
    const base = catalogue(forbidden);
    const agent = await Agent.start({
      machine: "m1",
      stateDir,
      address: "127.0.0.1",
      catalogue: { worker: { ...base.worker!, waitFor: "coordinator" } },
      log: quiet,
      roleOutput: "null",
    });
    try {
      await agent.assign({ version: 1, roles: [{ role: "worker" }] });
      assert.equal(agent.report().roles[0].process, undefined);
      const vat = (machine: string, fill: string) => ({
        role: "coordinator",
        machine,
        vatId: fill.repeat(64),
        address: `10.0.0.${machine.length}:7101`,
        zones: ["coordinators"],
      });
      await agent.setDirectory({ version: 1, vats: [vat("m2", "a")] });
      const first = await waitUntil("the worker starts", async () => {
        return (await starts(stateDir, "worker"))[0];
      });
      await agent.setDirectory({ version: 2, vats: [vat("m33", "b")] });
      await agent.assign({ version: 2, roles: [{ role: "worker" }] });
      assert.equal(agent.report().roles[0].process?.pid, first.pid);
      assert.equal(agent.report().roles[0].process?.restarts, 0);
      assert.equal((await starts(stateDir, "worker")).length, 1);
    } finally {
      await agent.stop();
    }
  });
});

Deno.test("a role that follows the directory restarts only when its peers move", async () => {
  await withMachine(async ({ stateDir, forbidden }) => {
    const base = catalogue(forbidden).worker!;
    const agent = await Agent.start({
      machine: "m1",
      stateDir,
      address: "127.0.0.1",
      catalogue: {
        shell: {
          ...base,
          followsDirectory: true,
          // Its "peer" is the first coordinator's machine.
          overrides: (c) => [
            ...base.overrides(c),
            `color=${
              c.directory?.vats.find((v) => v.role === "coordinator")
                ?.machine ?? "none"
            }`,
          ],
        },
      },
      log: quiet,
      roleOutput: "null",
    });
    const vat = (role: string, machine: string, fill: string) => ({
      role,
      machine,
      vatId: fill.repeat(64),
      address: `10.0.0.1:7101`,
      zones: [],
    });
    try {
      await agent.setDirectory({
        version: 1,
        vats: [vat("coordinator", "m2", "a")],
      });
      await agent.assign({ version: 1, roles: [{ role: "shell" }] });
      const first = await waitUntil("the role starts", async () => {
        return (await starts(stateDir, "shell"))[0];
      });
      assert.equal(first.color, "m2");
      // A vat that is not its peer joins: it keeps running.
      await agent.setDirectory({
        version: 2,
        vats: [vat("coordinator", "m2", "a"), vat("worker", "m3", "b")],
      });
      assert.equal(agent.report().roles[0].process?.pid, first.pid);
      // Its peer moves to m4: it starts again, told so.
      await agent.setDirectory({
        version: 3,
        vats: [vat("coordinator", "m4", "c")],
      });
      const second = await waitUntil("the role starts again", async () => {
        return (await starts(stateDir, "shell")).find((s) =>
          s.pid !== first.pid && alive(s.pid)
        );
      });
      assert.equal(second.color, "m4");
      assert.ok(!alive(first.pid));
    } finally {
      await agent.stop();
    }
  });
});

Deno.test("a role that exits on invalid configuration stays failed until new settings arrive", async () => {
  await withMachine(async ({ stateDir, boot }) => {
    const agent = await boot();
    // An unknown setting: the role's strict config refuses it and the
    // process exits with status 2 before it starts.
    await agent.assign({
      version: 1,
      roles: [{ role: "worker", settings: { misspelled: "1" } }],
    });
    const failed = await waitUntil("the role is reported failed", () => {
      const s = agent.report().roles[0].process;
      return s?.state === "failed" ? s : undefined;
    });
    assert.equal(failed.lastExit?.code, 2);
    assert.equal(failed.restarts, 0);
    // Many backoff periods (50 ms each at first) later, still no restart.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    assert.equal(agent.report().roles[0].process?.state, "failed");
    assert.equal(agent.report().roles[0].process?.restarts, 0);
    assert.equal((await starts(stateDir, "worker")).length, 0);

    // The same settings again (a new assignment version): one more try,
    // which fails the same way.
    await agent.assign({
      version: 2,
      roles: [{ role: "worker", settings: { misspelled: "1" } }],
    });
    await waitUntil("the retried role fails again", () => {
      const s = agent.report().roles[0].process;
      return s?.state === "failed" && s.lastExit?.code === 2 ? s : undefined;
    });

    // Fixed settings: the role runs.
    await agent.assign({
      version: 3,
      roles: [{ role: "worker", settings: { color: "green" } }],
    });
    const started = await waitUntil("the fixed role starts", async () => {
      return (await starts(stateDir, "worker"))[0];
    });
    assert.equal(started.color, "green");
    assert.ok(alive(started.pid));
    assert.equal(agent.report().roles[0].process?.state, "running");
  });
});

Deno.test("what a role prints goes to a 0600 file in its folder, not to the agent's output", async () => {
  const dir = await Deno.makeTempDir({ prefix: "agent-output-test-" });
  const script = new URL("./testdata/agent_process.ts", import.meta.url);
  const secret = `password-${crypto.randomUUID()}`;
  const agent = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", script.pathname, `${dir}/machine`, secret],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const outputFile = `${dir}/machine/roles/worker/output`;
  try {
    await waitUntil("the role's printed line reaches its file", async () => {
      try {
        return (await Deno.readTextFile(outputFile)).includes(secret)
          ? true
          : undefined;
      } catch {
        return undefined;
      }
    });
    assert.equal((await Deno.stat(outputFile)).mode! & 0o777, 0o600);
  } finally {
    // The role holds the agent's standard error: it goes first.
    for (const s of await starts(`${dir}/machine`, "worker")) {
      if (alive(s.pid)) Deno.kill(s.pid, "SIGKILL");
    }
    agent.kill("SIGKILL");
    const output = await agent.output();
    const seen = new TextDecoder().decode(output.stdout) +
      new TextDecoder().decode(output.stderr);
    await Deno.remove(dir, { recursive: true });
    assert.match(seen, /ready/, "the agent's own output is captured");
    assert.ok(!seen.includes(secret), "the printed secret is in the log");
  }
});
