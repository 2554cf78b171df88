// The simulated cluster of tasks/cluster.ts: five network namespaces, each
// running the real machine agent under scoped permissions, and the real
// master on machine 1 reaching them over RPC. What each machine runs is
// read from the assignment its agent saved. Every assigned role runs and
// answers: storage over sealed UDP RPC, the shell through the gateway's
// port. From the first step to the last, a user (testdata/web_user.ts)
// keeps using a grain through the gateway; each phase must end with it
// answering again (the errors of each phase are printed), and a machine's
// clean removal must cost it none.
import assert from "node:assert/strict";
import { startSimulatedCluster } from "../../tasks/cluster.ts";
import { eventually } from "./harness.ts";
import { buildTestApps } from "../apps/build.ts";
import { PUBLIC_HOST } from "../../tasks/cluster.ts";
import { CommandError, type ServerProcess } from "../fixtures/process.ts";

const statusTool = new URL("../../tasks/cluster_status.ts", import.meta.url)
  .pathname;
const clientScript = new URL("./testdata/cluster_client.ts", import.meta.url)
  .pathname;
const userScript = new URL("./testdata/web_user.ts", import.meta.url)
  .pathname;

/** One request of the web user, as it recorded it. */
interface UserRecord {
  atMs: number;
  ok: boolean;
  /** The grain page the user opened (first record only). */
  opened?: string;
  status?: number;
  error?: string;
}

async function userRecords(file: string): Promise<UserRecord[]> {
  try {
    return (await Deno.readTextFile(file)).split("\n").filter((l) => l)
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

/** Lines of `cluster:status` that show a restarted or down role among
 * `roles`. */
function restartedRoles(status: string, roles: string[]): string[] {
  return status.split("\n").filter((line) => /^m\d+ /.test(line))
    .flatMap((line) =>
      line.replace(/^.*?G\s+\S+G\s+/, "").split(", ").filter((entry) =>
        roles.includes(entry.split(" ")[0]) && entry.includes(" ")
      ).map((entry) => `${line.split(" ")[0]}: ${entry}`)
    );
}

async function rolesOf(dir: string, machine: number): Promise<string[]> {
  try {
    const text = await Deno.readTextFile(`${dir}/m${machine}/assignment.json`);
    return JSON.parse(text).roles.map((r: { role: string }) => r.role);
  } catch {
    return [];
  }
}

async function directoryOf(
  dir: string,
  machine: number,
): Promise<{ version: number; vats: { machine: string }[] } | undefined> {
  try {
    return JSON.parse(
      await Deno.readTextFile(`${dir}/m${machine}/directory.json`),
    );
  } catch {
    return undefined;
  }
}

async function pidsOf(namespace: string): Promise<number[]> {
  const output = await new Deno.Command("ip", {
    args: ["netns", "pids", namespace],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(output.stdout).split("\n")
    .filter((l) => l.trim() !== "").map(Number);
}

function commandLine(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).replaceAll("\0", " ");
  } catch {
    return "";
  }
}

Deno.test({
  name: "a simulated five-machine cluster assigns, heals, grows and shrinks",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "simulated-cluster-" });
    const cluster = await startSimulatedCluster({
      machines: 5,
      spares: 1,
      dir,
    });
    await Deno.chmod(dir, 0o755); // grains run as their own uids
    const client = (...args: string[]) =>
      cluster.network.exec(1, Deno.execPath(), [
        "run",
        "--allow-all",
        clientScript,
        ...args,
      ]);
    const retried = (what: string, ...args: string[]) =>
      eventually(what, async () => {
        try {
          return JSON.parse(await client(...args));
        } catch {
          return undefined;
        }
      }, 60_000);
    let packageId = "";
    /** The coordinator address of machine `m`. */
    const coordinatorOn = async (m: string) => {
      const vats = (await directoryOf(dir, 1))!.vats as unknown as {
        role: string;
        machine: string;
        address: string;
      }[];
      return vats.find((v) => v.role === "coordinator" && v.machine === m)!
        .address;
    };
    /** Every grain answers from a worker; a new one starts and answers. */
    const grainsWork = async (coordinator: string, fresh: string) => {
      const directoryFile = `${dir}/m1/directory.json`;
      await retried(
        `${fresh} opens`,
        "open-one",
        coordinator,
        packageId,
        fresh,
      );
      await eventually("every grain answers", async () => {
        const now = await client("check", coordinator, directoryFile);
        const answers = Object.values(JSON.parse(now));
        return answers.length > 0 && answers.every((w) => w !== null)
          ? true
          : undefined;
      }, 60_000);
    };
    const tool = (...args: string[]) =>
      cluster.network.exec(1, Deno.execPath(), [
        "run",
        "--allow-all",
        statusTool,
        "--inside",
        "--dir",
        dir,
        ...args,
      ]);
    try {
      await t.step("every machine gets roles from its specs", async () => {
        await eventually("all five machines have roles", async () => {
          for (let m = 1; m <= 5; m++) {
            if ((await rolesOf(dir, m)).length === 0) return undefined;
          }
          return true;
        }, 60_000);
        assert.deepEqual(await rolesOf(dir, 1), ["storage", "coordinator"]);
        assert.deepEqual(await rolesOf(dir, 2), [
          "coordinator",
          "gateway",
          "shell",
        ]);
        for (const m of [3, 4, 5]) {
          assert.deepEqual(await rolesOf(dir, m), ["worker"]);
        }
        const directories = await eventually(
          "every machine knows every vat",
          async () => {
            const all = await Promise.all(
              [1, 2, 3, 4, 5].map((m) => directoryOf(dir, m)),
            );
            return all.every((d) => d?.vats.length === 8) ? all : undefined;
          },
        );
        for (const d of directories) assert.deepEqual(d, directories[0]);

        // Storage answers RPC from a vat of its zone (m1's coordinator),
        // and the shell answers through the gateway's port.
        const directoryFile = `${dir}/m1/directory.json`;
        const usage = await retried(
          "storage answers",
          "storage",
          directoryFile,
          `${dir}/m1/roles/coordinator/vat.key`,
        );
        assert.equal(usage.usedBytes, 0);
        assert.equal(
          await retried("the shell answers", "web", directoryFile, "/login"),
          200,
        );

        // The first admin's password is shown by the status tool, from the
        // shell's 0600 output file, and is in no agent's log.
        const shown = await eventually(
          "the admin password is shown",
          () =>
            new Deno.Command(Deno.execPath(), {
              args: ["run", "-A", statusTool, "--dir", dir, "--admin-password"],
              stdout: "piped",
              stderr: "null",
            }).output().then((output) => {
              const text = new TextDecoder().decode(output.stdout);
              return output.success ? text : undefined;
            }),
        );
        const password = /Password: (\S+)/.exec(shown)?.[1];
        assert.ok(password, shown);
        for (let m = 1; m <= 5; m++) {
          const log = await Deno.readTextFile(`${dir}/agent-m${m}.log`);
          assert.ok(!log.includes(password), `the password is in m${m}'s log`);
        }
        const outputFile = `${dir}/m2/roles/shell/output`;
        assert.equal((await Deno.stat(outputFile)).mode! & 0o777, 0o600);
      });

      // The user signs in with the admin password the shell printed (kept
      // by m2's agent in the shell's output file, as the status tool reads
      // it) and keeps using one grain until told to stop.
      const userOut = `${dir}/web-user.jsonl`;
      const userStop = `${dir}/web-user.stop`;
      const password = await eventually(
        "the shell made its admin",
        async () =>
          /Password: (\S+)/.exec(
            await Deno.readTextFile(`${dir}/m2/roles/shell/output`),
          )?.[1],
      );
      const user: ServerProcess = cluster.network.spawn(1, {
        name: "web-user",
        command: Deno.execPath(),
        args: [
          "run",
          "--allow-all",
          userScript,
          `${dir}/m1/directory.json`,
          PUBLIC_HOST,
          password,
          (await buildTestApps()).notesSpk,
          userOut,
          userStop,
        ],
      });
      /** Waits until the user answers again after `sinceMs`; the errors
       * it saw from then on. */
      const userAnswers = async (phase: string, sinceMs: number) => {
        await eventually(
          `the user's grain answers after ${phase}`,
          async () => {
            assert.ok(!user.exited, `the web user died: ${user.log}`);
            const records = await userRecords(userOut);
            return records.some((r) => r.ok && r.atMs > Date.now() - 2000) &&
                records.at(-1)!.ok && records.at(-1)!.atMs > sinceMs
              ? true
              : undefined;
          },
          90_000,
        );
        const seen = (await userRecords(userOut)).filter((r) =>
          r.atMs >= sinceMs
        );
        const errors = seen.filter((r) => !r.ok);
        console.log(
          `web user during ${phase}: ${seen.length} requests, ` +
            `${errors.length} errors` +
            (errors.length > 0 ? ` (first: ${JSON.stringify(errors[0])})` : ""),
        );
        return seen;
      };
      let phaseStart = Date.now();
      await t.step("a user opens a grain through the gateway", async () => {
        const seen = await userAnswers("its start", 0);
        assert.ok(seen.filter((r) => r.ok).length > 0);
      });

      await t.step(
        "a killed worker machine's grains answer from other workers",
        async () => {
          // Real workers run the notes app in their sandboxes; no storage
          // role yet, so a grain restarts on its new worker's own volume.
          const apps = await buildTestApps();
          const directoryFile = `${dir}/m1/directory.json`;
          const vats = (await directoryOf(dir, 1))!.vats as unknown as {
            role: string;
            machine: string;
            vatId: string;
            address: string;
          }[];
          const coordinator = vats.find((v) => v.role === "coordinator")!;
          // Workers start once the directory names a coordinator, and take
          // grains once their first heartbeats arrived: both are retried.
          packageId = await retried(
            "every worker installs the package",
            "install",
            directoryFile,
            apps.notesSpk,
            "3",
          );
          const placements: { grainId: string; workerId: string }[] =
            await retried(
              "grains open",
              "open",
              coordinator.address,
              packageId,
              "6",
            );
          const answers = JSON.parse(
            await client("check", coordinator.address, directoryFile),
          );
          for (const p of placements) {
            assert.equal(answers[p.grainId], p.workerId, p.grainId);
          }

          // The victim is the worker of the user's grain, which the shell
          // had a coordinator place.
          const opened = (await userRecords(userOut))[0].opened!;
          const userGrain = opened.slice(opened.lastIndexOf("/") + 1);
          const victimVat = answers[userGrain];
          assert.ok(victimVat, `the user's grain ${userGrain} answers`);
          const victim = vats.find((v) => v.vatId === victimVat)!.machine;
          const moved = placements.filter((p) => p.workerId === victimVat);
          await cluster.killMachine(Number(victim.slice(1)));
          await eventually("the victim's grains answer elsewhere", async () => {
            const now = JSON.parse(
              await client("check", coordinator.address, directoryFile),
            );
            return [...moved, { grainId: userGrain }].every((p) =>
                now[p.grainId] !== null && now[p.grainId] !== victimVat
              )
              ? true
              : undefined;
          }, 90_000);
          // The machine comes back under its saved assignment.
          await cluster.bootMachine(Number(victim.slice(1)));
          await userAnswers("the worker kill", phaseStart);
          phaseStart = Date.now();
          // Storage, the gateway and the shell have been up since the
          // start, without one restart.
          assert.deepEqual(
            restartedRoles(await tool(), ["storage", "gateway", "shell"]),
            [],
          );
        },
      );

      await t.step(
        "with the master dead, grains answer and start, and a killed role restarts",
        async () => {
          await cluster.master.stop();
          // Without the master, open grains keep working and new ones start.
          await grainsWork(await coordinatorOn("m1"), "nomaster");
          const namespace = cluster.state.namespaces[0];
          const coordinator = await eventually(
            "m1 runs a coordinator",
            async () =>
              (await pidsOf(namespace)).find((pid) =>
                commandLine(pid).includes("services/coordinator/main.ts")
              ),
          );
          Deno.kill(coordinator, "SIGKILL");
          const replacement = await eventually(
            "the coordinator is back",
            async () =>
              (await pidsOf(namespace)).find((pid) =>
                pid !== coordinator &&
                commandLine(pid).includes("services/coordinator/main.ts")
              ),
          );
          assert.notEqual(replacement, coordinator);
          assert.deepEqual(await rolesOf(dir, 1), ["storage", "coordinator"]);
          await userAnswers("the master's death", phaseStart);
          phaseStart = Date.now();
        },
      );

      await t.step(
        "with a coordinator machine dead, grains start through the other and its roles move",
        async () => {
          const before = (await directoryOf(dir, 3))!.version;
          await cluster.restartMaster();
          // The new master has done a round once it sent a newer directory;
          // only then is m2 a machine it saw alive, and then saw die.
          await eventually(
            "the new master sends a directory",
            async () =>
              (await directoryOf(dir, 3))!.version > before ? true : undefined,
          );
          // m2 runs the only gateway and shell: both start again on other
          // machines (the shells share their database, as they would share
          // MongoDB), and the user, signed in, carries on.
          await userAnswers("the master's return", phaseStart);
          phaseStart = Date.now();
          await cluster.killMachine(2);
          const holders = await eventually(
            "two coordinators run again",
            async () => {
              const found: number[] = [];
              for (const m of [1, 3, 4, 5]) {
                if ((await rolesOf(dir, m)).includes("coordinator")) {
                  found.push(m);
                }
              }
              return found.length === 2 ? found : undefined;
            },
            60_000,
          );
          assert.ok(holders.includes(1));
          // With m2's coordinator gone, grains start through m1's.
          await grainsWork(await coordinatorOn("m1"), "afterm2");
          await eventually("m2 leaves the directory", async () => {
            const d = await directoryOf(dir, 3);
            return d!.vats.some((v) => v.machine === "m2") ? undefined : true;
          });
          const everyRole = new Set<string>();
          for (const m of [1, 3, 4, 5]) {
            for (const role of await rolesOf(dir, m)) everyRole.add(role);
          }
          assert.deepEqual([...everyRole].sort(), [
            "coordinator",
            "gateway",
            "shell",
            "storage",
            "worker",
          ]);
          await userAnswers("m2's death", phaseStart);
          phaseStart = Date.now();
        },
      );

      let newWorker = "";
      await t.step(
        "an added machine becomes a worker and gets grains",
        async () => {
          await cluster.bootMachine(6);
          const address = `${cluster.state.addresses[5]}:7000`;
          await tool("--add", "m6", address);
          await eventually(
            "m6 gets a role",
            async () => (await rolesOf(dir, 6)).length > 0 ? true : undefined,
          );
          assert.deepEqual(await rolesOf(dir, 6), ["worker"]);
          // m3, m4, m5 and now m6 run workers; the new one is the least
          // loaded, so the next grain goes there.
          const directoryFile = `${dir}/m1/directory.json`;
          await retried(
            "m6's worker has the package",
            "install",
            directoryFile,
            (await buildTestApps()).notesSpk,
            "4",
          );
          const vats = (await directoryOf(dir, 1))!.vats as unknown as {
            role: string;
            machine: string;
            vatId: string;
          }[];
          newWorker = vats.find((v) => v.machine === "m6")!.vatId;
          const coordinator = await coordinatorOn("m1");
          // Until the coordinators hear m6's first heartbeat, grains go to
          // the others; after it, the next grain goes to m6.
          let opened = 0;
          await eventually("a new grain lands on m6", async () => {
            try {
              const placement = JSON.parse(
                await client(
                  "open-one",
                  coordinator,
                  packageId,
                  `onm6x${opened++}`,
                ),
              );
              return placement.workerId === newWorker ? true : undefined;
            } catch {
              return undefined;
            }
          }, 60_000);
          await grainsWork(coordinator, `onm6x${opened}`);
        },
      );

      await t.step(
        "a removed machine's grains move first, then its roles stop",
        async () => {
          const output = await tool("--remove", "m6");
          assert.match(output, /removed m6/);
          assert.doesNotMatch(output, /^m6 /m);
          assert.deepEqual(await rolesOf(dir, 6), []);
          // Removing it again: the master no longer knows it, and the tool
          // says so in one line with status 2.
          const again = await tool("--remove", "m6").then(
            () => undefined,
            (error) => error,
          );
          assert.ok(again instanceof CommandError, "a second removal fails");
          assert.equal(again.code, 2);
          assert.match(again.output, /cannot remove "m6".*not in the cluster/);
          assert.doesNotMatch(again.output, /\n\s+at /, "no stack trace");
          // Right after the removal, without waiting: every grain answers,
          // and none from m6.
          const coordinator = await coordinatorOn("m1");
          const answers = JSON.parse(
            await client("check", coordinator, `${dir}/m1/directory.json`),
          );
          for (const [grain, worker] of Object.entries(answers)) {
            assert.ok(worker !== null, `${grain} does not answer`);
            assert.notEqual(worker, newWorker, `${grain} still on m6`);
          }
          const seen = await userAnswers(
            "the additions and removal",
            phaseStart,
          );
          assert.deepEqual(seen.filter((r) => !r.ok), []);
          await Deno.writeTextFile(userStop, "");
          await user.stop();
        },
      );
    } finally {
      await cluster.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
