import assert from "node:assert/strict";
import { Logger } from "../services/runtime/log.ts";
import { LogShipper } from "../services/runtime/log_shipper.ts";

const root = new URL("..", import.meta.url).pathname;

/** A UDP port on loopback that was free a moment ago. */
function freeUdpPort(): number {
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  const port = (socket.addr as Deno.NetAddr).port;
  socket.close();
  return port;
}

async function waitFor<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  describe: () => string,
): Promise<T> {
  const deadline = Date.now() + 30_000;
  while (true) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}\n${describe()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function processExists(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // A zombie (state Z) has exited and only waits to be reaped.
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

async function shipOne(port: number, event: string): Promise<void> {
  const shipper = new LogShipper({ port, stderr: false });
  new Logger({ role: "tester", writer: shipper.writer }).info(event);
  await shipper.close();
}

Deno.test("start.ts runs the log sink, restarts it after a crash, and stops everything on SIGTERM", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "blackrock-start-" });
  const basePort = freeUdpPort();
  // The permissions of the `start` task in deno.json, with the data folder
  // moved to a temporary one.
  const launcher = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-read",
      `--allow-write=${dataDir}`,
      "--allow-run",
      "--allow-env",
      "--allow-net=127.0.0.1",
      "tasks/start.ts",
      "--data-dir",
      dataDir,
      "--base-port",
      String(basePort),
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stdout = "";
  let stderr = "";
  const collect = async (
    stream: ReadableStream<Uint8Array>,
    append: (text: string) => void,
  ) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      append(chunk);
    }
  };
  const reading = Promise.all([
    collect(launcher.stdout, (t) => stdout += t),
    collect(launcher.stderr, (t) => stderr += t),
  ]);
  const describe = () => `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`;
  const logFile = `${dataDir}/logsink/logs/tester.log`;
  const fileHas = async (event: string) => {
    try {
      return (await Deno.readTextFile(logFile)).includes(`"${event}"`)
        ? true
        : undefined;
    } catch {
      return undefined;
    }
  };
  const sinkPids = () =>
    [...stdout.matchAll(/logsink\s+(?:restarted, )?pid (\d+)/g)].map((m) =>
      Number(m[1])
    );

  try {
    await waitFor(
      "all roles started",
      () => stdout.includes("all roles started") || undefined,
      describe,
    );
    assert.match(stdout, new RegExp(`udp 127\\.0\\.0\\.1:${basePort}`));
    const config = JSON.parse(
      await Deno.readTextFile(`${dataDir}/logsink/config.json`),
    );
    assert.equal(config.listen.port, basePort);

    await shipOne(basePort, "first-line");
    await waitFor(
      "the first line in its file",
      () => fileHas("first-line"),
      describe,
    );

    // A crash: the launcher restarts the role, which takes lines again.
    const [firstPid] = sinkPids();
    Deno.kill(firstPid, "SIGKILL");
    const secondPid = await waitFor(
      "the restarted sink",
      () => sinkPids()[1],
      describe,
    );
    assert.notEqual(secondPid, firstPid);
    assert.match(stderr, /"event":"role-crashed"/);
    await shipOne(basePort, "after-restart");
    await waitFor(
      "the line after the restart",
      () => fileHas("after-restart"),
      describe,
    );

    launcher.kill("SIGTERM");
    const status = await launcher.status;
    await reading;
    assert.equal(status.code, 0, describe());
    assert.match(stdout, /blackrock: stopped/);
    assert.ok(
      stderr.includes('"role":"logsink"') &&
        stderr.includes('"event":"flushed"'),
    );
    assert.ok(!processExists(secondPid), `logsink pid ${secondPid} survived`);
  } finally {
    try {
      launcher.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await launcher.status;
    await reading.catch(() => {});
    for (const pid of sinkPids()) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // Gone, as it should be.
      }
    }
    await Deno.remove(dataDir, { recursive: true });
  }
});
