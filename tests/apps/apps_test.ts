/**
 * The test apps as real grains: built from source, packed with the packer,
 * installed and run by the worker's grain manager in their sandboxes, and
 * driven through the supervisor's WebSession relay.
 */
import assert from "node:assert/strict";
import { Logger } from "../../services/runtime/log.ts";
import {
  assembleSpk,
  encodeArchive,
  encodeManifest,
  generateKey,
  joinPayload,
  type PackNode,
  signArchive,
  SpkError,
} from "../../services/spk/mod.ts";
import { GrainManager } from "../../services/worker/grains.ts";
import type { GrainSupervisor } from "../../services/worker/supervisor.ts";
import { buildTestApps } from "./build.ts";

const apps = await buildTestApps();

async function withManager(
  name: string,
  body: (manager: GrainManager, stateDir: string) => Promise<void>,
) {
  const stateDir = await Deno.makeTempDir({ prefix: `apps-test-${name}-` });
  const manager = await GrainManager.open({
    stateDir,
    uidFirst: 63000 + (Deno.pid % 40) * 20,
    uidCount: 20,
    cgroupName: `blackrock-apps-test-${name}-${Deno.pid}`,
    defaultMemoryBytes: 128 << 20,
    tmpBytes: 8 << 20,
  }, new Logger({ role: "worker", level: "error" }));
  try {
    await body(manager, stateDir);
  } finally {
    await manager.close();
    await Deno.remove(stateDir, { recursive: true });
  }
}

async function call(
  supervisor: GrainSupervisor,
  session: Awaited<ReturnType<GrainSupervisor["newWebSession"]>>,
  method: string,
  path: string,
  body?: string,
): Promise<{ status: number; text: string; type: string | null }> {
  const response = await supervisor.fetch(
    session,
    new Request(`http://grain.test${path}`, {
      method,
      body,
      headers: body === undefined ? {} : { "content-type": "text/plain" },
    }),
  );
  return {
    status: response.status,
    text: await response.text(),
    type: response.headers.get("content-type"),
  };
}

/** A masked client frame with one text message. */
function clientTextFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const mask = [0x12, 0x34, 0x56, 0x78];
  return new Uint8Array([
    0x81,
    0x80 | payload.length,
    ...mask,
    ...payload.map((byte, i) => byte ^ mask[i % 4]),
  ]);
}

Deno.test("the raw Cap'n Proto app serves files, streams, echoes WebSockets and keeps data across a restart", async () => {
  await withManager("files", async (manager) => {
    const pkg = await manager.installPackage(
      await Deno.readFile(apps.filesSpk),
    );
    assert.equal(pkg.manifest.appTitle, "Files");

    let supervisor = await manager.start({
      grainId: "files-1",
      packageId: pkg.packageId,
      isNew: true,
    });
    assert.equal(await supervisor.appTitle(), "Files");
    let session = await supervisor.newWebSession({ displayName: "Ann" });

    assert.equal(
      (await call(supervisor, session, "PUT", "/files/note", "hello")).status,
      204,
    );
    assert.deepEqual(
      await call(supervisor, session, "POST", "/files/note", " world"),
      { status: 200, text: "11", type: "text/plain" },
    );
    assert.equal(
      (await call(supervisor, session, "PATCH", "/files/note", "!")).text,
      "patched 12",
    );
    assert.equal(
      (await call(supervisor, session, "GET", "/files/note")).text,
      "hello world!",
    );
    assert.equal(
      (await call(supervisor, session, "GET", "/static/hello.txt")).text,
      "hello from the package\n",
    );
    assert.equal(
      (await call(supervisor, session, "GET", "/files/missing")).status,
      404,
    );
    assert.equal(
      (await call(supervisor, session, "PUT", "/files/gone", "x")).status,
      204,
    );
    assert.equal(
      (await call(supervisor, session, "DELETE", "/files/gone")).status,
      204,
    );
    assert.equal(
      (await call(supervisor, session, "GET", "/files/gone")).status,
      404,
    );

    // A body larger than one chunk comes back through the response stream.
    const big = "0123456789abcdef".repeat(20_000);
    await call(supervisor, session, "PUT", "/files/big", big);
    const streamed = await call(supervisor, session, "GET", "/files/big");
    assert.equal(streamed.text.length, big.length);
    assert.equal(streamed.text, big);

    const socket = await supervisor.openWebSocket(session, "/echo");
    const reader = socket.frames.getReader();
    await socket.send(clientTextFrame("ping over capnp"));
    const echoed = await reader.read();
    assert.deepEqual(
      echoed.value,
      new Uint8Array([
        0x81,
        15,
        ...new TextEncoder().encode("ping over capnp"),
      ]),
    );
    reader.releaseLock();
    socket.close();

    // Stop (syncing the volume) and restore with the continue command.
    await manager.stop("files-1");
    assert.equal((await manager.status("files-1"))?.state, "stopped");
    supervisor = await manager.start({
      grainId: "files-1",
      packageId: pkg.packageId,
      isNew: false,
    });
    session = await supervisor.newWebSession({ displayName: "Ann" });
    assert.equal(
      (await call(supervisor, session, "GET", "/files/note")).text,
      "hello world!",
    );
    assert.equal(
      (await call(supervisor, session, "GET", "/")).text,
      "big\nnote\n",
    );
  });
});

Deno.test("the HTTP app behind the bridge answers every method, streams, relays a WebSocket, and keeps data across a restart", async () => {
  await withManager("notes", async (manager) => {
    const pkg = await manager.installPackage(
      await Deno.readFile(apps.notesSpk),
    );
    let supervisor = await manager.start({
      grainId: "notes-1",
      packageId: pkg.packageId,
      isNew: true,
    });
    let session = await supervisor.newWebSession({ displayName: "Bob" });

    assert.deepEqual(
      await call(supervisor, session, "PUT", "/notes/todo", "milk"),
      { status: 201, text: "4\n", type: "text/plain" },
    );
    assert.equal(
      (await call(supervisor, session, "POST", "/notes/todo", ", eggs")).text,
      "10\n",
    );
    assert.equal(
      (await call(supervisor, session, "PATCH", "/notes/todo", ".")).text,
      "patched 11\n",
    );
    assert.equal(
      (await call(supervisor, session, "GET", "/notes/todo")).text,
      "milk, eggs.",
    );
    await call(supervisor, session, "PUT", "/notes/tmp", "x");
    assert.equal(
      (await call(supervisor, session, "DELETE", "/notes/tmp")).status,
      204,
    );
    const missing = await call(supervisor, session, "GET", "/notes/tmp");
    assert.equal(missing.status, 404);
    assert.equal(missing.text, "no such note\n");

    // A chunked response of unknown length is streamed by the bridge.
    const big = await supervisor.fetch(
      session,
      new Request("http://grain.test/big?kb=300"),
    );
    assert.equal(big.status, 200);
    const bytes = new Uint8Array(await big.arrayBuffer());
    assert.equal(bytes.length, 300 * 1024);
    assert.equal(bytes[0], 0x61);
    assert.equal(bytes[bytes.length - 1], 0x61 + (299 % 26));

    // A WebSocket through the bridge: raw frames both ways.
    const socket = await supervisor.openWebSocket(session, "/ws", ["chat"]);
    const reader = socket.frames.getReader();
    await socket.send(clientTextFrame("hi"));
    let echoed = new Uint8Array();
    while (echoed.length < 10) {
      const { value, done } = await reader.read();
      assert.ok(!done, "the app closed the WebSocket");
      echoed = new Uint8Array([...echoed, ...value]);
    }
    assert.deepEqual(
      echoed,
      new Uint8Array([0x81, 8, ...new TextEncoder().encode("echo: hi")]),
    );
    reader.releaseLock();
    socket.close();

    await manager.stop("notes-1");
    supervisor = await manager.start({
      grainId: "notes-1",
      packageId: pkg.packageId,
      isNew: false,
    });
    session = await supervisor.newWebSession({ displayName: "Bob" });
    assert.equal(
      (await call(supervisor, session, "GET", "/notes/todo")).text,
      "milk, eggs.",
    );
    assert.equal((await call(supervisor, session, "GET", "/")).text, "todo\n");
  });
});

Deno.test("a grain started in a warm sandbox gets its own volume and keeps its data", async () => {
  await withManager("warm", async (manager, stateDir) => {
    const pkg = await manager.installPackage(
      await Deno.readFile(apps.notesSpk),
    );
    await manager.warm(pkg.packageId, { isNew: true, count: 2 });
    assert.equal(manager.warmCount(pkg.packageId, true), 2);

    const first = await manager.start({
      grainId: "warm-a",
      packageId: pkg.packageId,
      isNew: true,
    });
    const second = await manager.start({
      grainId: "warm-b",
      packageId: pkg.packageId,
      isNew: true,
    });
    assert.equal(manager.warmCount(pkg.packageId, true), 0);
    const a = await first.newWebSession({ displayName: "Ann" });
    const b = await second.newWebSession({ displayName: "Bob" });
    await call(first, a, "PUT", "/notes/mine", "Ann's");
    await call(second, b, "PUT", "/notes/mine", "Bob's");
    assert.equal((await call(first, a, "GET", "/notes/mine")).text, "Ann's");
    assert.equal((await call(second, b, "GET", "/notes/mine")).text, "Bob's");
    assert.equal(
      await Deno.readTextFile(
        `${stateDir}/grains/warm-a/volume/notes/mine`,
      ),
      "Ann's",
    );

    // Restored without a warm sandbox, the data is there; the slots are
    // unmounted and gone.
    await manager.stop("warm-a");
    await manager.stop("warm-b");
    const mounts = await Deno.readTextFile("/proc/self/mountinfo");
    assert.ok(!mounts.includes(`${stateDir}/slots`));
    assert.deepEqual([...Deno.readDirSync(`${stateDir}/slots`)], []);
    const again = await manager.start({
      grainId: "warm-a",
      packageId: pkg.packageId,
      isNew: false,
    });
    const session = await again.newWebSession({ displayName: "Ann" });
    assert.equal(
      (await call(again, session, "GET", "/notes/mine")).text,
      "Ann's",
    );
  });
});

Deno.test("a grain past its memory limit is killed and reported; the worker keeps serving others", async () => {
  await withManager("memory", async (manager) => {
    const files = await manager.installPackage(
      await Deno.readFile(apps.filesSpk),
    );
    const supervisor = await manager.start({
      grainId: "steady",
      packageId: files.packageId,
      isNew: true,
    });
    const session = await supervisor.newWebSession({ displayName: "Ann" });
    await call(supervisor, session, "PUT", "/files/a", "still here");

    // The probe package's argv allocates 512 MiB against a 48 MiB limit.
    const probe = await manager.installPackage(
      await probeSpk(["/probe", "alloc=512", "sleep"]),
    );
    await manager.start({
      grainId: "greedy",
      packageId: probe.packageId,
      isNew: true,
      memoryBytes: 48 << 20,
    });
    let status;
    for (let i = 0; i < 500; i++) {
      status = await manager.status("greedy");
      if (status?.state !== "running") break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(status?.state, "out-of-memory");
    assert.equal(status?.exit?.outOfMemory, true);

    const steady = await manager.status("steady");
    assert.equal(steady?.state, "running");
    assert.ok(steady!.memoryBytes > 0);
    assert.ok(steady!.cpuNanoseconds > 0);
    assert.equal(
      (await call(supervisor, session, "GET", "/files/a")).text,
      "still here",
    );
    const machine = await manager.machineUsage();
    assert.equal(machine.runningGrains, 1);
    assert.ok(machine.memoryTotalBytes > 0);
    assert.ok(machine.grainMemoryBytes > 0);
  });
});

/** A probe package whose continue command is `argv`. */
async function probeSpk(argv: string[]): Promise<Uint8Array> {
  const binary = await Deno.readFile(`${apps.dir}/probe-pkg/probe`);
  const root = new Map<string, PackNode>([
    ["probe", { kind: "executable", data: binary }],
    ["sandstorm-manifest", {
      kind: "regular",
      data: encodeManifest({
        appTitle: "Probe",
        appVersion: 1,
        actions: [],
        continueCommand: { argv, environ: [] },
      }),
    }],
  ]);
  const archive = encodeArchive(root);
  return await assembleSpk(
    joinPayload(signArchive(archive, generateKey()), archive),
    { xzPreset: 0 },
  );
}

Deno.test("bad packages are refused by the worker and leave nothing on disk", async () => {
  await withManager("refuse", async (manager, stateDir) => {
    const good = await Deno.readFile(apps.probeSpk);
    const corrupt = good.slice();
    corrupt.fill(0, 100, 200);
    const archive = encodeArchive(
      new Map<string, PackNode>([
        ["sandstorm-manifest", {
          kind: "regular",
          data: encodeManifest({
            appTitle: "Evil",
            appVersion: 1,
            actions: [],
            continueCommand: { argv: ["/x"], environ: [] },
          }),
        }],
        ["..", { kind: "regular", data: new Uint8Array(1) }],
      ]),
    );
    const escaping = await assembleSpk(
      joinPayload(signArchive(archive, generateKey()), archive),
      { xzPreset: 0 },
    );
    const unsigned = await assembleSpk(archive, { xzPreset: 0 });
    const other = generateKey();
    const wronglySigned = await assembleSpk(
      joinPayload(
        signArchive(archive, {
          publicKey: other.publicKey,
          privateKey: generateKey().privateKey,
        }),
        archive,
      ),
      { xzPreset: 0 },
    );
    const cases: [string, Uint8Array][] = [
      ["corrupt", corrupt],
      ["escaping", escaping],
      ["unsigned", unsigned],
      ["wrongly signed", wronglySigned],
    ];
    for (const [name, spk] of cases) {
      await assert.rejects(
        manager.installPackage(spk),
        (error) => error instanceof SpkError,
        name,
      );
    }
    assert.deepEqual([...Deno.readDirSync(`${stateDir}/packages`)], []);
  });
});
