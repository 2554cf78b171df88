/**
 * The worker role as a process with its scoped permissions, driven over
 * the cluster RPC by a client: install a package, start, use, stop,
 * restore, list and delete grains.
 */
import assert from "node:assert/strict";
import * as rpc from "../rpc/mod.ts";
import { GrainHost } from "../../proto/gen/coordinator.ts";
import { GrainState, Worker } from "../../proto/gen/worker.ts";
import { buildTestApps } from "../../tests/apps/build.ts";
import { encodeGrainSpec } from "./service.ts";
import { openWebSession, relayRequest } from "../web_session/mod.ts";

const apps = await buildTestApps();

async function startWorker(stateDir: string) {
  const deno = Deno.execPath();
  const child = new Deno.Command(deno, {
    args: [
      "run",
      "--no-prompt",
      `--allow-net=127.0.0.1,unix:${stateDir}/api.sock`,
      `--allow-read=${stateDir}`,
      `--allow-write=${stateDir}`,
      "--allow-run=bash,chown,sync,xz",
      "--allow-ffi=/lib/x86_64-linux-gnu/libc.so.6",
      "--allow-sys=systemMemoryInfo,loadavg",
      new URL("./main.ts", import.meta.url).pathname,
      "--set",
      `stateDir=${stateDir}`,
      "--set",
      "listen.port=0",
      "--set",
      `cgroupName=blackrock-worker-test-${Deno.pid}`,
      "--set",
      `uidFirst=${64000 + (Deno.pid % 50) * 10}`,
      "--set",
      "uidCount=10",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream())
    .getReader();
  let buffer = "";
  let port: number | undefined;
  const seen: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const parts = buffer.split("\n");
    buffer = parts.pop()!;
    for (const line of parts) {
      seen.push(line);
      const event = JSON.parse(line);
      if (event.event === "listening") port = event.port;
      // "started" comes once the role handles SIGTERM: stopping it before
      // that would kill it without its clean-up.
      if (event.event === "started" && port !== undefined) {
        // Keep reading stderr so the worker never blocks on it; the lines
        // explain a failed stop.
        (async () => {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) return;
            seen.push(value);
          }
        })();
        return { child, port, log: seen };
      }
    }
  }
  throw new Error(`worker did not start:\n${seen.join("\n")}${buffer}`);
}

Deno.test("the worker process installs, starts, stops, restores, lists and deletes grains over RPC", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "worker-test-" });
  const { child, port, log } = await startWorker(stateDir);
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port }),
  );
  const worker = rpc.bootstrap(connection, Worker);
  try {
    const installed = await worker.installPackage((p) => {
      const spk = Deno.readFileSync(apps.filesSpk);
      p._initSpk(spk.length).copyBuffer(spk);
    }).promise();
    assert.equal(installed.appTitle, "Files");
    assert.match(installed.packageId, /^[0-9a-f]{32}$/);

    await assert.rejects(
      worker.installPackage((p) => {
        p._initSpk(4).copyBuffer(new Uint8Array([1, 2, 3, 4]));
      }).promise(),
      /bad-magic/,
    );

    // The app's UiView comes back through the worker: sessions and
    // requests cross two connections.
    const started = await worker.newGrain((p) => {
      p.grainId = "grain-1";
      p._initSpec().packageId = installed.packageId;
    }).promise();
    let view = rpc.retain(started.view);
    let session = await openWebSession(view, { displayName: "Ann" });
    let response = await relayRequest(
      session,
      new Request("http://grain.test/files/a", { method: "PUT", body: "kept" }),
    );
    assert.equal(response.status, 204);

    const listed = await worker.listGrains().promise();
    assert.equal(listed.grains.length, 1);
    const usage = listed.grains.get(0);
    assert.equal(usage.grainId, "grain-1");
    assert.equal(usage.state, GrainState.RUNNING);
    assert.ok(usage.hostUid >= 64000);
    assert.ok(usage.memoryBytes > 0n);
    assert.ok(usage.cpuNanoseconds > 0n);
    const machine = await worker.machineUsage().promise();
    assert.equal(machine.usage.runningGrains, 1);
    assert.ok(machine.usage.memoryTotalBytes > 0n);

    rpc.release(session);
    rpc.release(view);
    await worker.stopGrain((p) => p.grainId = "grain-1").promise();
    const stopped = await worker.grainUsage((p) => p.grainId = "grain-1")
      .promise();
    assert.equal(stopped.usage.state, GrainState.STOPPED);

    const restored = await worker.restoreGrain((p) => {
      p.grainId = "grain-1";
      p._initSpec().packageId = installed.packageId;
    }).promise();
    view = rpc.retain(restored.view);
    session = await openWebSession(view, { displayName: "Ann" });
    response = await relayRequest(
      session,
      new Request("http://grain.test/files/a"),
    );
    assert.equal(await response.text(), "kept");
    rpc.release(session);
    rpc.release(view);

    // The coordinators' contract, on the same capability: startGrain with
    // a "new" spec on a volume that holds data restores it instead.
    const host = new GrainHost.Client(rpc.retain(worker).client);
    await worker.stopGrain((p) => p.grainId = "grain-1").promise();
    await host.startGrain((p) => {
      p.grainId = "grain-1";
      p.epoch = 7n;
      p._initNeeds().memoryBytes = 64n << 20n;
      const spec = encodeGrainSpec({
        packageId: installed.packageId,
        isNew: true,
      });
      p._initSpec(spec.length).copyBuffer(spec);
    }).promise();
    view = rpc.retain(
      (await worker.getView((p) => p.grainId = "grain-1").promise()).view,
    );
    session = await openWebSession(view, { displayName: "Ann" });
    response = await relayRequest(
      session,
      new Request("http://grain.test/files/a"),
    );
    assert.equal(await response.text(), "kept");
    rpc.release(session);
    rpc.release(view);
    await host.stopGrain((p) => p.grainId = "grain-1").promise();
    assert.equal(
      (await worker.grainUsage((p) => p.grainId = "grain-1").promise()).usage
        .state,
      GrainState.STOPPED,
    );
    rpc.release(host);

    await worker.deleteGrain((p) => p.grainId = "grain-1").promise();
    assert.equal((await worker.listGrains().promise()).grains.length, 0);
    await assert.rejects(
      worker.getView((p) => p.grainId = "grain-1").promise(),
      /not running/,
    );
  } finally {
    rpc.release(worker);
    connection.close();
    child.kill("SIGTERM");
    const status = await child.status;
    await Deno.remove(stateDir, { recursive: true });
    assert.equal(status.code, 0, `worker stop failed:\n${log.join("")}`);
  }
});

Deno.test("a worker restarted after being killed clears its predecessor's sandboxes, mounts and cgroups", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "worker-crash-test-" });
  const cgroupDir = `/sys/fs/cgroup/memory/blackrock-worker-test-${Deno.pid}`;
  let { child, port, log } = await startWorker(stateDir);
  try {
    const connection = new rpc.RpcConnection(
      await rpc.connectTcp({ hostname: "127.0.0.1", port }),
    );
    const worker = rpc.bootstrap(connection, Worker);
    const spk = Deno.readFileSync(apps.notesSpk);
    const installed = await worker.installPackage((p) => {
      p._initSpk(spk.length).copyBuffer(spk);
    }).promise();
    const started = await worker.newGrain((p) => {
      p.grainId = "left-behind";
      p._initSpec().packageId = installed.packageId;
    }).promise();
    rpc.release(started.view);
    // The worker keeps a warm sandbox per started package: wait for it.
    for (let i = 0; i < 500; i++) {
      if ([...Deno.readDirSync(`${stateDir}/slots`)].length > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.ok(
      (await Deno.readTextFile("/proc/self/mountinfo")).includes(
        `${stateDir}/slots/`,
      ),
    );
    rpc.release(worker);
    connection.close();

    child.kill("SIGKILL");
    await child.status;
    assert.ok(Deno.statSync(`${cgroupDir}/grain-left-behind`).isDirectory);

    ({ child, port, log } = await startWorker(stateDir));
    const mounts = await Deno.readTextFile("/proc/self/mountinfo");
    assert.ok(!mounts.includes(`${stateDir}/slots/`), "slots unmounted");
    assert.deepEqual([...Deno.readDirSync(`${stateDir}/slots`)], []);
    const groups = [...Deno.readDirSync(cgroupDir)]
      .filter((entry) => entry.isDirectory).map((entry) => entry.name);
    assert.deepEqual(groups, []);
  } finally {
    child.kill("SIGTERM");
    const status = await child.status;
    await Deno.remove(stateDir, { recursive: true });
    assert.equal(status.code, 0, `worker stop failed:\n${log.join("")}`);
  }
});
