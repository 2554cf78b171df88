import assert from "node:assert/strict";
import fc from "fast-check";
import { Logger } from "../runtime/log.ts";
import { LogShipper } from "../runtime/log_shipper.ts";
import { roleCommand } from "../runtime/permissions.ts";
import {
  LogSink,
  type LogSinkConfig,
  logSinkConfig,
  parseLogLine,
} from "./sink.ts";

const encoder = new TextEncoder();
/** The sink's own log lines, kept out of the test output. */
const quiet = () => new Logger({ role: "logsink", writer: () => {} });

async function withSink(
  overrides: Partial<LogSinkConfig>,
  body: (sink: LogSink, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "blackrock-logsink-" });
  try {
    const config = logSinkConfig.parse({
      listen: { hostname: "127.0.0.1", port: 0 },
      outputDir: dir,
      ...overrides,
    });
    const sink = await LogSink.start(config, quiet());
    try {
      await body(sink, dir);
    } finally {
      await sink.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function waitFor(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function readLines(path: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(path);
  return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
}

async function sendRaw(port: number, datagrams: Uint8Array[]): Promise<void> {
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  try {
    for (const datagram of datagrams) {
      await socket.send(datagram, {
        transport: "udp",
        hostname: "127.0.0.1",
        port,
      });
    }
  } finally {
    socket.close();
  }
}

Deno.test("log sink: lines shipped by each role land in that role's file", async () => {
  await withSink({}, async (sink, dir) => {
    const shipper = new LogShipper({ port: sink.address.port, stderr: false });
    const storage = new Logger({ role: "storage", writer: shipper.writer });
    const worker = new Logger({ role: "worker", writer: shipper.writer });
    for (let i = 0; i < 20; i++) {
      storage.info("block-written", { blockIndex: i });
      worker.warn("grain-slow", { grain: `g${i}`, secretKey: "never" });
    }
    await shipper.close();
    assert.equal(shipper.stats.shipped, 40);
    await waitFor("40 lines", () => sink.stats.lines === 40);
    await sink.flush();

    const storageLines = await readLines(`${dir}/storage.log`);
    const workerLines = await readLines(`${dir}/worker.log`);
    assert.deepEqual(
      storageLines.map((l) => l.blockIndex),
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.ok(storageLines.every((l) => l.event === "block-written"));
    assert.ok(workerLines.every((l) => l.role === "worker"));
    assert.equal(workerLines[3].grain, "g3");
    assert.equal(workerLines[3].secretKey, "[redacted]");
    assert.equal(sink.stats.written, 40);
  });
});

Deno.test("log sink: garbage datagrams are dropped and counted, good lines still land", async () => {
  await withSink({}, async (sink, dir) => {
    const good = (event: string) =>
      JSON.stringify({ role: "shell", event, level: "info" });
    await sendRaw(sink.address.port, [
      encoder.encode("not json at all"),
      encoder.encode("[1, 2, 3]"),
      encoder.encode("null"),
      encoder.encode(JSON.stringify({ role: "../../etc/passwd", event: "x" })),
      encoder.encode(JSON.stringify({ role: "Shell", event: "x" })),
      encoder.encode(JSON.stringify({ role: "shell" })),
      encoder.encode(JSON.stringify({ role: "shell", event: 5 })),
      encoder.encode(
        JSON.stringify({ role: "shell", event: "x".repeat(61_000) }),
      ),
      new Uint8Array([0xff, 0xfe, 0x00, 0x80, 0x7b]),
      encoder.encode(`${good("one")}\n{broken\n${good("two")}\n`),
    ]);
    await waitFor("every datagram", () => sink.stats.datagrams === 10);
    await sendRaw(sink.address.port, [encoder.encode(good("three"))]);
    await waitFor("the good line", () => sink.stats.lines === 3);
    await sink.flush();

    assert.deepEqual(sink.stats.dropped, {
      "not-json": 3,
      "not-object": 2,
      "bad-role": 2,
      "bad-event": 2,
      "too-long": 1,
      "too-many-roles": 0,
      "write-failed": 0,
    });
    const lines = await readLines(`${dir}/shell.log`);
    assert.deepEqual(lines.map((l) => l.event), ["one", "two", "three"]);
    const files = [...Deno.readDirSync(dir)].map((entry) => entry.name);
    assert.deepEqual(files, ["shell.log"]);
  });
});

Deno.test("log sink: line validation never throws on arbitrary input", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.string(),
        fc.json(),
        fc.record({ role: fc.string(), event: fc.anything() }).map((v) =>
          JSON.stringify(v) ?? ""
        ),
      ),
      (text) => {
        const result = parseLogLine(text);
        if (result.ok) {
          assert.match(result.entry.role, /^[a-z0-9][a-z0-9_-]*$/);
          assert.equal(result.entry.text, text);
        }
      },
    ),
    { numRuns: 2_000, seed: 42 },
  );
});

Deno.test("log sink: files rotate by size and keep only the newest ones", async () => {
  await withSink(
    { maxFileBytes: 1024, maxRotatedFiles: 2 },
    async (sink, dir) => {
      const shipper = new LogShipper({
        port: sink.address.port,
        stderr: false,
      });
      const log = new Logger({ role: "storage", writer: shipper.writer });
      for (let i = 0; i < 100; i++) log.info("tick", { index: i });
      await shipper.close();
      await waitFor("100 lines", () => sink.stats.lines === 100);
      await sink.flush();

      const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      assert.deepEqual(names, [
        "storage.log",
        "storage.log.1",
        "storage.log.2",
      ]);
      let previousFirst = Infinity;
      for (const name of names) {
        assert.ok(Deno.statSync(`${dir}/${name}`).size <= 1024, name);
        const indexes = (await readLines(`${dir}/${name}`)).map((l) =>
          Number(l.index)
        );
        // Newest file holds the newest lines, each file in order.
        assert.ok(indexes.at(-1)! < previousFirst, name);
        assert.deepEqual(indexes, [...indexes].sort((a, b) => a - b));
        previousFirst = indexes[0];
      }
      const newest = await readLines(`${dir}/storage.log`);
      assert.equal(newest.at(-1)!.index, 99);
      assert.ok(sink.stats.rotations >= 3, String(sink.stats.rotations));
    },
  );
});

Deno.test("log sink: the role process writes every received line on SIGTERM", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blackrock-logsink-" });
  try {
    const probe = Deno.listenDatagram({
      transport: "udp",
      hostname: "127.0.0.1",
      port: 0,
    });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const outputDir = `${dir}/logs`;
    const configFile = `${dir}/logsink.json`;
    await Deno.writeTextFile(
      configFile,
      JSON.stringify({
        listen: { hostname: "127.0.0.1", port },
        outputDir,
        // Only the shutdown writes: the test proves SIGTERM flushes.
        flushIntervalMs: 600_000,
      }),
    );
    const [command, ...args] = roleCommand({
      deno: Deno.execPath(),
      entry: new URL("./main.ts", import.meta.url).pathname,
      permissions: {
        net: [`127.0.0.1:${port}`],
        read: [configFile, outputDir],
        write: [outputDir],
      },
      configFile,
    });
    const child = new Deno.Command(command, {
      args,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr: Record<string, unknown>[] = [];
    const reading = (async () => {
      let buffered = "";
      for await (
        const chunk of child.stderr.pipeThrough(new TextDecoderStream())
      ) {
        buffered += chunk;
        const parts = buffered.split("\n");
        buffered = parts.pop()!;
        for (const part of parts) {
          if (part.trim()) stderr.push(JSON.parse(part));
        }
      }
    })();
    try {
      await waitFor(
        "the sink listens",
        () => stderr.some((l) => l.event === "started"),
      );
      const shipper = new LogShipper({ port, stderr: false });
      const log = new Logger({ role: "gateway", writer: shipper.writer });
      for (let i = 0; i < 50; i++) log.info("request", { index: i });
      await shipper.close();
      // Loopback delivers a datagram into the sink's socket buffer before
      // send returns, so all 50 lines are queued there now.
      child.kill("SIGTERM");
      assert.equal((await child.status).code, 0);
      await reading;
      const flushed = stderr.find((l) => l.event === "flushed");
      assert.equal(flushed?.written, 50);
      const lines = await readLines(`${outputDir}/gateway.log`);
      assert.deepEqual(
        lines.map((l) => l.index),
        Array.from({ length: 50 }, (_, i) => i),
      );
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already exited.
      }
      await child.status;
      await reading.catch(() => {});
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the sink redacts secrets that a sender did not", () => {
  const line = JSON.stringify({
    role: "shell",
    event: "forged",
    password: "FORGED-SECRET",
    nested: { a: { b: { c: { d: { e: "unchecked-value" } } } } },
    bytes: "fine",
  });
  const parsed = parseLogLine(line);
  assert.ok(parsed.ok);
  if (!parsed.ok) return;
  assert.ok(!parsed.entry.text.includes("FORGED-SECRET"), parsed.entry.text);
  assert.ok(!parsed.entry.text.includes("unchecked-value"), parsed.entry.text);
  assert.equal(JSON.parse(parsed.entry.text).bytes, "fine");
  const plain = JSON.stringify({ role: "shell", event: "ok", n: 1 });
  const kept = parseLogLine(plain);
  assert.ok(kept.ok && kept.entry.text === plain);
});
