import assert from "node:assert/strict";
import { z } from "zod";
import { ConfigError, loadConfig, parseConfigArgs } from "./config.ts";
import { Logger } from "./log.ts";
import { permissionFlags, roleCommand } from "./permissions.ts";

Deno.test("log lines are JSON with time, level, role, vat and event", () => {
  const lines: string[] = [];
  const log = new Logger({
    role: "storage",
    vat: "ab12",
    writer: (l) => lines.push(l),
  });
  log.info("disk-opened", { path: "/srv", sizeBytes: 10n });
  const line = JSON.parse(lines[0]);
  assert.equal(line.level, "info");
  assert.equal(line.role, "storage");
  assert.equal(line.vat, "ab12");
  assert.equal(line.event, "disk-opened");
  assert.equal(line.sizeBytes, "10");
  assert.ok(!Number.isNaN(Date.parse(line.time)));
});

Deno.test("log lines never carry keys, secrets or raw bytes", () => {
  const lines: string[] = [];
  const log = new Logger({ role: "storage", writer: (l) => lines.push(l) });
  const secret = "s3cr3t-value";
  log.warn("leak-attempt", {
    accessKey: secret,
    secretAccessKey: secret,
    password: secret,
    objectKey: new Uint8Array([1, 2, 3]),
    nested: { sessionToken: secret, blob: new Uint8Array(4) },
    list: [{ privateKey: secret }],
    sealSeed: secret,
  });
  assert.ok(!lines[0].includes(secret), lines[0]);
  const line = JSON.parse(lines[0]);
  assert.equal(line.nested.blob, "[4 bytes]");
});

Deno.test("log level filters lower lines and child loggers keep fields", () => {
  const lines: string[] = [];
  const log = new Logger({
    role: "worker",
    level: "warn",
    writer: (l) => lines.push(l),
  });
  log.info("quiet");
  log.with({ grain: "g1" }).error("loud", { code: 3 });
  assert.equal(lines.length, 1);
  assert.equal(JSON.parse(lines[0]).grain, "g1");
});

Deno.test("config errors name the field and what was expected", async () => {
  const schema = z.strictObject({
    listen: z.strictObject({ port: z.number().int().max(65535) }),
    disk: z.enum(["local", "s3"]).default("local"),
  });
  await assert.rejects(
    loadConfig(schema, { overrides: ["listen.port=70000"] }),
    (e: Error) =>
      e instanceof ConfigError && /listen\.port: .*65535/.test(e.message),
  );
  await assert.rejects(
    loadConfig(schema, { overrides: ["listen.port=1", "disk=floppy"] }),
    /disk: .*"local"|disk: .*local/,
  );
  await assert.rejects(
    loadConfig(schema, { overrides: ["listen.port=1", "typo=1"] }),
    /typo/,
  );
  const ok = await loadConfig(schema, { overrides: ["listen.port=8080"] });
  assert.deepEqual(ok, { listen: { port: 8080 }, disk: "local" });
});

Deno.test("config comes from a file, with flags on top", async () => {
  const file = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(file, JSON.stringify({ a: 1, b: { c: "x" } }));
    const schema = z.strictObject({
      a: z.number(),
      b: z.strictObject({ c: z.string() }),
    });
    const config = await loadConfig(
      schema,
      parseConfigArgs(["--config", file, "--set", "b.c=y"]),
    );
    assert.deepEqual(config, { a: 1, b: { c: "y" } });
    await Deno.writeTextFile(file, "{not json");
    await assert.rejects(
      loadConfig(schema, { file, overrides: [] }),
      /not valid JSON/,
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("unknown arguments are refused", () => {
  assert.throws(
    () => parseConfigArgs(["--prot", "1"]),
    /unknown argument "--prot"/,
  );
  assert.throws(() => parseConfigArgs(["--config"]), /needs a value/);
  assert.deepEqual(parseConfigArgs(["--set=a=1", "--config=x.json"]), {
    file: "x.json",
    overrides: ["a=1"],
  });
});

Deno.test("permission flags are exact and refuse commas", () => {
  assert.deepEqual(
    permissionFlags({ net: ["127.0.0.1:1", "unix:/s"], ffi: ["/l.so"] }),
    [
      "--allow-net=127.0.0.1:1,unix:/s",
      "--allow-ffi=/l.so",
    ],
  );
  assert.throws(() => permissionFlags({ read: ["/a,/b"] }), /no comma/);
});

const deno = Deno.execPath();
const role = new URL("./testdata/echo_role.ts", import.meta.url).pathname;
const root = new URL("../..", import.meta.url).pathname;

function startRole(
  permissions: Parameters<typeof permissionFlags>[0],
  overrides: string[],
  logSink?: { hostname: string; port: number },
) {
  const [command, ...args] = roleCommand({
    deno,
    entry: role,
    permissions,
    overrides,
    logSink,
  });
  const child = new Deno.Command(command, {
    args,
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const lines: Record<string, unknown>[] = [];
  let buffered = "";
  const waitFor = async (event: string) => {
    while (true) {
      const found = lines.find((l) => l.event === event);
      if (found) return found;
      const { value, done } = await reader.read();
      if (done) {
        throw new Error(
          `role exited before ${event}: ${JSON.stringify(lines)}`,
        );
      }
      buffered += value;
      const parts = buffered.split("\n");
      buffered = parts.pop()!;
      for (const part of parts) if (part.trim()) lines.push(JSON.parse(part));
    }
  };
  return { child, waitFor, reader };
}

Deno.test("a role stops gracefully on SIGTERM and runs with only its permissions", async () => {
  const secretFile = await Deno.makeTempFile();
  const readable = [root, `${root}node_modules`];
  const { child, waitFor, reader } = startRole({ read: readable }, [
    "greeting=hi",
    `probeRead=${secretFile}`,
  ]);
  try {
    assert.equal((await waitFor("configured")).greeting, "hi");
    assert.equal((await waitFor("probe-read")).allowed, false);
    await waitFor("started");
    child.kill("SIGTERM");
    await waitFor("cleaned-up");
    await waitFor("stopped");
    assert.equal((await child.status).code, 0);
  } finally {
    await reader.cancel();
    await child.stdout.cancel();
    await Deno.remove(secretFile);
  }
});

Deno.test("a role with a bad field exits 2 with a line naming it", async () => {
  const { child, waitFor, reader } = startRole({ read: [root] }, [
    "port=0",
  ]);
  try {
    const line = await waitFor("config-invalid");
    assert.match(String(line.problem), /port: /);
    assert.equal((await child.status).code, 2);
  } finally {
    await reader.cancel();
    await child.stdout.cancel();
  }
});

Deno.test("a role given --log-sink ships its lines there and still logs to stderr", async () => {
  const sink = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  const port = (sink.addr as Deno.NetAddr).port;
  const { child, waitFor, reader } = startRole({ read: [root] }, [
    "greeting=shipped",
  ], {
    hostname: "127.0.0.1",
    port,
  });
  try {
    await waitFor("started");
    const shipped: Record<string, unknown>[] = [];
    const decoder = new TextDecoder();
    while (!shipped.some((l) => l.event === "started")) {
      const [datagram] = await sink.receive();
      for (const line of decoder.decode(datagram).split("\n")) {
        if (line.trim()) shipped.push(JSON.parse(line));
      }
    }
    const configured = shipped.find((l) => l.event === "configured");
    assert.equal(configured?.greeting, "shipped");
    assert.equal(configured?.role, "echo");
    child.kill("SIGTERM");
    await waitFor("stopped");
    assert.equal((await child.status).code, 0);
  } finally {
    sink.close();
    await reader.cancel();
    await child.stdout.cancel();
  }
});

Deno.test("--log-sink must be host:port", () => {
  assert.throws(
    () => parseConfigArgs(["--log-sink", "127.0.0.1"]),
    /host:port/,
  );
  assert.throws(() => parseConfigArgs(["--log-sink", "h:70000"]), /host:port/);
  assert.deepEqual(parseConfigArgs(["--log-sink", "[::1]:9"]).logSink, {
    hostname: "::1",
    port: 9,
  });
});
