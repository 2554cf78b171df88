import assert from "node:assert/strict";
import { buildSpk, generateKey, unpackSpk } from "../spk/mod.ts";
import { ApiSocketHub } from "./api_socket.ts";
import { CgroupTree, type GrainCgroup } from "./cgroup.ts";
import { grainFilterBytes } from "./seccomp.ts";
import { prepareVolume, type SandboxProcess, startSandbox } from "./sandbox.ts";

/** Everything a sandbox test needs, removed again by close(). */
async function setUp() {
  const dir = await Deno.makeTempDir({ prefix: "sandbox-test-" });
  await Deno.chmod(dir, 0o711);
  const build = await new Deno.Command("gcc", {
    args: [
      "-O2",
      "-static",
      "-o",
      `${dir}/probe`,
      new URL("../../tests/apps/probe/probe.c", import.meta.url).pathname,
    ],
  }).output();
  assert.ok(build.success, new TextDecoder().decode(build.stderr));
  const spk = await buildSpk(
    new Map([["probe", {
      kind: "executable" as const,
      data: await Deno.readFile(`${dir}/probe`),
    }]]),
    {
      appTitle: "Probe",
      appVersion: 1,
      actions: [],
      continueCommand: { argv: ["/probe"], environ: [] },
    },
    generateKey(),
    { xzPreset: 0 },
  );
  await unpackSpk(spk, `${dir}/package`);
  await Deno.writeFile(`${dir}/seccomp.bpf`, grainFilterBytes());
  const cgroups = await CgroupTree.open(
    `blackrock-sandbox-test-${Deno.pid}`,
  );
  const hub = ApiSocketHub.open(`${dir}/api.sock`);
  const running: SandboxProcess[] = [];
  const groups: GrainCgroup[] = [];
  const track = async (group: Promise<GrainCgroup>) => {
    groups.push(await group);
    return groups[groups.length - 1];
  };

  const start = async (
    name: string,
    hostUid: number,
    argv: string[],
    memoryBytes = 256 << 20,
  ) => {
    const volumeDir = `${dir}/${name}`;
    await prepareVolume(volumeDir, hostUid);
    const { process, connection } = await startSandbox({
      packageDir: `${dir}/package`,
      volumeDir,
      hostUid,
      command: { argv: ["/probe", ...argv], environ: [] },
      tmpBytes: 8 << 20,
      cgroup: await track(cgroups.create(name, memoryBytes)),
      seccompFile: `${dir}/seccomp.bpf`,
    }, hub);
    running.push(process);
    return { process, connection: await connection, volumeDir };
  };

  const close = async () => {
    for (const process of running) await process.kill();
    hub.close();
    for (const group of groups) await group.remove();
    await cgroups.remove();
    await Deno.remove(dir, { recursive: true });
  };
  return { dir, start, close, cgroups };
}

/** The probe's "check: result" lines as a map. */
function results(lines: string[]): Map<string, string> {
  return new Map(lines.map((line) => {
    const at = line.lastIndexOf(": ");
    return [line.slice(0, at), line.slice(at + 2)];
  }));
}

async function waitForLine(process: SandboxProcess, text: string) {
  for (let i = 0; i < 500; i++) {
    if (process.output().includes(text)) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`no "${text}" in ${process.output().join("\n")}`);
}

Deno.test("a grain runs as its own host uid, sees uid 1000, and talks on fd 3", async () => {
  const env = await setUp();
  try {
    const { process, connection } = await env.start("grain-a", 61001, [
      "uid",
      "fd3=hello",
      "sleep",
    ]);
    await waitForLine(process, "sleeping");
    const buffer = new Uint8Array(5);
    let filled = 0;
    while (filled < 5) {
      const n = await connection.read(buffer.subarray(filled));
      assert.notEqual(n, null);
      filled += n!;
    }
    assert.equal(new TextDecoder().decode(buffer), "hello");
    assert.equal(results(process.output()).get("uid"), "1000");

    const cgroup = `${env.cgroups.path}/grain-a`;
    const pids = (await Deno.readTextFile(`${cgroup}/cgroup.procs`)).trim()
      .split("\n").map(Number);
    assert.ok(pids.length >= 2, "bwrap and the app are in the cgroup");
    for (const pid of pids) {
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      const uids = status.match(/^Uid:\s+(.*)$/m)![1].split(/\s+/);
      assert.deepEqual(uids, ["61001", "61001", "61001", "61001"]);
    }
    connection.close();
  } finally {
    await env.close();
  }
});

Deno.test("a grain reaches no network but its own loopback, and the filter holds", async () => {
  const env = await setUp();
  const outside = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const { process, connection } = await env.start("grain-net", 61002, [
      `connect=127.0.0.1:${outside.addr.port}`,
      "connect=10.255.255.1:80",
      "packet",
      "netlink",
      "unix",
      "ptrace",
      "unshare",
    ]);
    const exit = await process.exited;
    connection.close();
    assert.equal(exit.code, 0, process.output().join("\n"));
    const seen = results(process.output());
    // The worker's loopback listener is not the grain's loopback.
    assert.equal(
      seen.get(`127.0.0.1:${outside.addr.port}`),
      "Connection refused",
    );
    assert.equal(seen.get("10.255.255.1:80"), "Network is unreachable");
    assert.equal(
      seen.get("packet"),
      "Address family not supported by protocol",
    );
    assert.equal(
      seen.get("netlink"),
      "Address family not supported by protocol",
    );
    assert.equal(seen.get("unix"), "ok");
    assert.equal(seen.get("ptrace"), "Operation not permitted");
    assert.equal(seen.get("unshare"), "Operation not permitted");
  } finally {
    outside.close();
    await env.close();
  }
});

Deno.test("a grain cannot read another grain's files", async () => {
  const env = await setUp();
  try {
    const a = await env.start("grain-owner", 61003, ["write=/var/secret"]);
    assert.equal((await a.process.exited).code, 0);
    a.connection.close();
    assert.equal(
      await Deno.readTextFile(`${a.volumeDir}/secret`),
      "secret\n",
    );

    // Inside its sandbox the other grain's volume does not exist at all.
    const b = await env.start("grain-other", 61004, [
      `read=${a.volumeDir}/secret`,
      "read=/var/../../" + a.volumeDir + "/secret",
    ]);
    assert.equal((await b.process.exited).code, 0);
    b.connection.close();
    for (const result of results(b.process.output()).values()) {
      assert.equal(result, "No such file or directory");
    }

    // And outside any sandbox, the other grain's host uid is refused.
    const direct = await new Deno.Command("setpriv", {
      args: [
        "--reuid=61004",
        "--regid=61004",
        "--clear-groups",
        "cat",
        `${a.volumeDir}/secret`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(direct.success, false);
    assert.match(new TextDecoder().decode(direct.stderr), /Permission denied/);
  } finally {
    await env.close();
  }
});

Deno.test("a grain past its memory limit is killed and marked; another keeps running", async () => {
  const env = await setUp();
  try {
    const calm = await env.start("grain-calm", 61005, ["sleep"]);
    await waitForLine(calm.process, "sleeping");
    const greedy = await env.start(
      "grain-greedy",
      61006,
      ["alloc=256"],
      64 << 20,
    );
    const exit = await greedy.process.exited;
    greedy.connection.close();
    assert.equal(exit.outOfMemory, true, JSON.stringify(exit));
    assert.notEqual(exit.code, 0);

    // The calm grain is still alive and still answers on fd 3.
    assert.ok(
      (await Deno.readTextFile(
        `${env.cgroups.path}/grain-calm/cgroup.procs`,
      )).trim() !== "",
    );
    await calm.connection.write(new TextEncoder().encode("ping"));
    calm.connection.close();
  } finally {
    await env.close();
  }
});
