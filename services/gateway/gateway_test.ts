// The gateway with a real nginx in front: shells registering and leaving
// (nginx's configuration follows, and nginx is reloaded), requests spread
// over shells, grain hostnames routed by what a shell answers, viewer
// sessions refused writes. Shells register over the control port's RPC
// (proto/gateway.capnp) and answer route lookups through their Shell
// capability.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as rpc from "../rpc/mod.ts";
import { Logger } from "../runtime/log.ts";
import {
  type Gateway$Client,
  GatewayLogin,
  Shell,
} from "../../proto/gen/gateway.ts";
import { gatewayLogin, listenControl } from "./control.ts";
import { ensureCertificate, NginxProcess, renderNginxConf } from "./nginx.ts";
import {
  Gateway,
  type GrainRoute,
  limitBody,
  ShellRegistrationError,
} from "./proxy.ts";

const TOKEN = "test-token-0123456789";
const quiet = new Logger({ role: "gateway", level: "error" });

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

const baseSettings = {
  dir: "/tmp/x",
  listenHostname: "127.0.0.1",
  listenPort: 8443,
  mainHostname: "localhost",
  grainHostname: "localhost",
  certFile: "/tmp/x/c.pem",
  keyFile: "/tmp/x/k.pem",
  gateway: "127.0.0.1:7000",
  shells: ["127.0.0.1:7001", "127.0.0.1:7002"],
  maxBodyBytes: 1000,
};

Deno.test("nginx configuration lists the shells and refuses injected values", () => {
  const conf = renderNginxConf(baseSettings);
  assert.match(
    conf,
    /upstream blackrock_shells \{\n\s+server 127\.0\.0\.1:7001;\n\s+server 127\.0\.0\.1:7002;/,
  );
  assert.match(conf, /server_name \*\.localhost;/);
  assert.throws(
    () => renderNginxConf({ ...baseSettings, shells: ["1.2.3.4:5; evil"] }),
    /bad upstream address/,
  );
  assert.throws(
    () => renderNginxConf({ ...baseSettings, mainHostname: "a b" }),
    /bad hostname/,
  );
});

/** A stand-in shell: its web server answers pages with its name (the
 * gateway treats a shell as any HTTP upstream). */
function fakeShell(name: string) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (r) => {
    return new Response(`${name} ${r.headers.get("x-forwarded-host")}`);
  });
}

/** A Shell capability answering route lookups from a table. */
function routeTable(routes: Map<string, GrainRoute>): rpc.Cap {
  return rpc.serve(Shell, {
    route(params, results) {
      const route = routes.get(params.hostLabel);
      results.found = route !== undefined;
      if (route !== undefined) {
        const out = results._initRoute();
        out.backend = route.backend;
        out.grainId = route.grainId;
        out.canWrite = route.canWrite;
        out.expiresAtMs = BigInt(route.expiresAt);
        out.userId = route.userId;
        out.userName = route.userName;
        out.sessionKeyHash = route.sessionKeyHash;
      }
      return Promise.resolve();
    },
  });
}

/** Logs in on a gateway's control port over TCP, as a shell does. */
async function controlClient(port: number, token: string) {
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port }),
  );
  const login = rpc.bootstrap(connection, GatewayLogin);
  const gateway: Gateway$Client = login.login((p) => p.token = token)
    .getGateway();
  rpc.release(login);
  return {
    gateway,
    close() {
      rpc.release(gateway);
      connection.close();
    },
  };
}

Deno.test({
  name:
    "the gateway follows shells coming and going and routes grain hostnames",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "gateway-test-" });
    const port = freePort();
    const host = `localhost:${port}`;
    const label = "a".repeat(26);
    const viewerLabel = "b".repeat(26);
    const routes = new Map<string, GrainRoute>();
    const shellA = fakeShell("shell-a");
    const shellB = fakeShell("shell-b");
    const shellRoutes = routeTable(routes);
    const backend = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      async (r) => {
        const body = r.body ? await r.text() : "";
        return new Response(
          `grain ${r.method} ${new URL(r.url).pathname} ${body} ${
            r.headers.get("x-sandstorm-permissions")
          }`,
        );
      },
    );
    const base = `http://127.0.0.1:${backend.addr.port}/g1`;
    const far = Date.now() + 3600_000;
    const route = {
      backend: base,
      grainId: "g1",
      expiresAt: far,
      userId: "u1",
      userName: "Alice",
    };
    const keyHash = (key: string) =>
      createHash("sha256").update(key).digest("hex");
    routes.set(label, {
      ...route,
      canWrite: true,
      sessionKeyHash: keyHash("writer-key"),
    });
    routes.set(viewerLabel, {
      ...route,
      canWrite: false,
      sessionKeyHash: keyHash("viewer-key"),
    });

    // Assigned below, once the gateway service has its port.
    // deno-lint-ignore prefer-const
    let nginx: NginxProcess | undefined;
    let updates = Promise.resolve();
    const reloads: string[][] = [];
    const gateway = new Gateway({
      mainHost: host,
      grainHostSuffix: host,
      shellOrigin: `https://${host}`,
      log: quiet,
      shellTimeoutMs: 1000,
      routeCacheMs: 0,
      onShellsChanged(shells) {
        updates = updates.then(async () => {
          if (await nginx!.update(shells)) reloads.push(shells);
        });
      },
    });
    const proxy = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (r) => gateway.handle(r),
    );
    await ensureCertificate(
      `${dir}/server.pem`,
      `${dir}/server.key`,
      "localhost",
      "localhost",
    );
    nginx = new NginxProcess({
      dir,
      listenHostname: "127.0.0.1",
      listenPort: port,
      mainHostname: "localhost",
      grainHostname: "localhost",
      certFile: `${dir}/server.pem`,
      keyFile: `${dir}/server.key`,
      gateway: `127.0.0.1:${proxy.addr.port}`,
      shells: [],
      maxBodyBytes: 1 << 20,
      maxFormBytes: 4096,
    });
    const client = Deno.createHttpClient({
      caCerts: [await Deno.readTextFile(`${dir}/server.pem`)],
    });
    // Host names resolve through the client's own resolver; every name
    // here is *.localhost, which resolves to loopback.
    const get = async (url: string, init: RequestInit = {}) => {
      const response = await fetch(url, { ...init, client });
      return { status: response.status, text: await response.text() };
    };
    const login = gatewayLogin(gateway, TOKEN);
    const control = listenControl(
      login,
      { hostname: "127.0.0.1", port: 0 },
      quiet,
    );
    const shellLink = await controlClient(control.port, TOKEN);
    const register = (id: string, address: string) =>
      shellLink.gateway.registerShell((p) => {
        p.shellId = id;
        p.httpAddress = address;
        p.shell = new Shell.Client(shellRoutes);
      }).promise();
    const unregister = (id: string) =>
      shellLink.gateway.unregisterShell((p) => p.shellId = id).promise();
    try {
      await nginx.start([]);
      const url = `https://${host}`;
      for (
        let i = 0;
        (await get(url).catch(() => undefined)) === undefined;
        i++
      ) {
        assert.ok(i < 100, "nginx did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal((await get(`${url}/`)).status, 503, "no shell yet");

      // A bad token is refused; two shells register and share the load.
      const stranger = await controlClient(control.port, "wrong-token-0123");
      await assert.rejects(
        stranger.gateway.registerShell((p) => {
          p.shellId = "x";
          p.httpAddress = "127.0.0.1:9";
          p.shell = new Shell.Client(shellRoutes);
        }).promise(),
        /wrong gateway token/,
      );
      stranger.close();
      assert.deepEqual(gateway.shells(), []);
      await assert.rejects(register("a", "not an address"), /host:port/);
      const a = `127.0.0.1:${shellA.addr.port}`;
      const b = `127.0.0.1:${shellB.addr.port}`;
      await register("a", a);
      await register("b", b);
      const { status } = await shellLink.gateway.status().promise();
      assert.deepEqual([...status.shells], [a, b].sort());
      await updates;
      const conf = await Deno.readTextFile(nginx.confPath);
      assert.ok(conf.includes(`server ${a};`) && conf.includes(`server ${b};`));
      const seen = new Set<string>();
      for (let i = 0; i < 4; i++) {
        const page = await get(`${url}/`);
        assert.equal(page.status, 200);
        seen.add(page.text.split(" ")[0]);
        assert.equal(
          page.text.split(" ")[1],
          host,
          "the shell learns the host",
        );
      }
      assert.deepEqual([...seen].sort(), ["shell-a", "shell-b"]);
      // The shells' internal route lookup is not reachable from outside.
      const internal = await get(`${url}/_blackrock/route?host=${label}`);
      assert.equal(internal.status, 404);

      // Forms are held to the small limit by nginx, package uploads to the
      // package limit; neither reaches the shell when too large.
      const post = (path: string, sizeBytes: number) =>
        get(`${url}${path}`, {
          method: "POST",
          body: new Uint8Array(sizeBytes),
        });
      assert.equal((await post("/login", 8192)).status, 413);
      assert.equal((await post("/upload", 8192)).status, 200);
      assert.equal((await post("/upload", 2 << 20)).status, 413);
      // Share-link tokens and query strings stay out of the access log.
      await get(`${url}/shared/sharetoken0123456789?t=querysecret`);
      const accessLog = await Deno.readTextFile(`${dir}/access.log`);
      assert.match(accessLog, /GET \/shared\/- /);
      assert.ok(!accessLog.includes("sharetoken0123456789"), accessLog);
      assert.ok(!accessLog.includes("querysecret"), accessLog);
      for (const path of ["", "/access.log", "/error.log", "/server.key"]) {
        const { mode } = await Deno.stat(`${dir}${path}`);
        assert.equal((mode ?? 0o777) & 0o077, 0, `${dir}${path} is private`);
      }

      // Shell b leaves: requests go to a only, and nginx is reloaded
      // with a configuration that no longer names b.
      await unregister("b");
      await updates;
      for (let i = 0; i < 3; i++) {
        assert.match((await get(`${url}/`)).text, /^shell-a /);
      }
      assert.ok(!(await Deno.readTextFile(nginx.confPath)).includes(b));
      // Shell a stops calling in: it is dropped after the timeout.
      await new Promise((r) => setTimeout(r, 1200));
      gateway.sweep();
      await updates;
      assert.deepEqual(gateway.shells(), []);
      assert.deepEqual(reloads.at(-1), []);
      await register("a", a);
      await updates;

      // Grain hostnames go to the session's backend with its permissions.
      // Deno's fetch cannot send a Host other than the URL's, and the
      // resolver here does not map *.localhost, so these requests enter
      // the gateway service directly (the Chromium tests in tests/e2e/
      // cover grain hostnames and WebSockets through nginx).
      const exchange = async (name: string, key: string) => {
        const response = await gateway.handle(
          new Request(`http://gateway/_blackrock/session?token=${key}`, {
            headers: { host: `${name}.${host}` },
          }),
        );
        await response.body?.cancel();
        return response;
      };
      const cookies = new Map<string, string>();
      const call = async (
        name: string,
        path: string,
        init: RequestInit = {},
      ) => {
        const headers = new Headers(init.headers);
        headers.set("host", `${name}.${host}`);
        const cookie = cookies.get(name);
        if (cookie !== undefined) {
          headers.set("cookie", `${cookie}; app=kept`);
        }
        const response = await gateway.handle(
          new Request(`http://gateway${path}`, { ...init, headers }),
        );
        return { status: response.status, text: await response.text() };
      };

      // The hostname alone opens nothing: the session's key, sent once by
      // the shell's frame, becomes a host-only cookie, and only requests
      // with that cookie reach the grain.
      assert.equal((await call(label, "/doc")).status, 403);
      assert.equal((await exchange(label, "viewer-key")).status, 403);
      const opened = await exchange(label, "writer-key");
      assert.equal(opened.status, 303);
      assert.equal(opened.headers.get("location"), "/");
      const setCookie = opened.headers.get("set-cookie")!;
      assert.match(setCookie, /^__Host-blackrock-grain=writer-key; Path=\//);
      for (
        const flag of ["HttpOnly", "Secure", "SameSite=None", "Partitioned"]
      ) {
        assert.ok(setCookie.includes(flag), `${flag} in ${setCookie}`);
      }
      assert.ok(!/domain=/i.test(setCookie), "host-only");
      assert.equal(
        (await exchange(label, "writer-key")).status,
        403,
        "a key works once",
      );
      cookies.set(label, setCookie.split(";")[0]);
      assert.equal((await exchange(viewerLabel, "viewer-key")).status, 303);
      cookies.set(viewerLabel, "__Host-blackrock-grain=writer-key");
      assert.equal(
        (await call(viewerLabel, "/doc")).status,
        403,
        "another session's cookie does not open this one",
      );
      cookies.set(viewerLabel, "__Host-blackrock-grain=viewer-key");
      const read = await call(label, "/doc?x=1");
      assert.equal(read.text, "grain GET /g1/doc  write,view");
      const write = await call(label, "/save", { method: "POST", body: "hi" });
      assert.equal(write.text, "grain POST /g1/save hi write,view");
      assert.equal(
        (await call(viewerLabel, "/doc")).text,
        "grain GET /g1/doc  view",
      );
      const denied = await call(viewerLabel, "/save", {
        method: "POST",
        body: "x",
      });
      assert.equal(denied.status, 403);
      assert.equal((await call("c".repeat(26), "/")).status, 404);
      assert.equal((await call("nope", "/")).status, 404);
      // Forged permission headers from the browser are replaced.
      const forged = await call(viewerLabel, "/doc", {
        headers: { "x-sandstorm-permissions": "write,view" },
      });
      assert.equal(forged.text, "grain GET /g1/doc  view");

      // With the gateway service down, nginx still reaches a shell for the
      // main hostname through the fallback upstream it was configured with.
      // nginx applies a reload asynchronously (new workers take over), so
      // the fallback is polled until the reload with shell a has landed.
      await proxy.shutdown();
      let fallback = "";
      for (let i = 0; i < 50 && !fallback.startsWith("shell-a "); i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 100));
        fallback = (await get(`${url}/`)).text;
      }
      assert.match(fallback, /^shell-a /);
    } finally {
      client.close();
      shellLink.close();
      control.close();
      login.close();
      gateway.close();
      shellRoutes.close();
      await nginx.stop();
      await Promise.all([
        proxy.shutdown().catch(() => {}),
        shellA.shutdown(),
        shellB.shutdown(),
        backend.shutdown(),
      ]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("random hosts, paths and control requests never make the gateway fail", async () => {
  const fc = (await import("fast-check")).default;
  const gateway = new Gateway({
    mainHost: "localhost:8443",
    grainHostSuffix: "localhost:8443",
    shellOrigin: "https://localhost:8443",
    log: quiet,
  });
  const shell = rpc.serve(Shell, {});
  await fc.assert(
    fc.asyncProperty(
      fc.string(),
      fc.string(),
      fc.string(),
      fc.constantFrom("GET", "PUT", "DELETE", "POST"),
      async (host, path, body, method) => {
        const headers = new Headers();
        try {
          headers.set("host", host);
        } catch {
          // Not a valid header value; nothing to send.
        }
        const url = `http://gateway/${encodeURI(path)}`;
        const response = await gateway.handle(new Request(url, { headers }));
        assert.ok(
          [404, 503].includes(response.status),
          String(response.status),
        );
        await response.body?.cancel();
        // A registration with random values is refused with a typed error
        // or, when the values happen to be well formed, taken.
        try {
          gateway.registerShell(path, body, new Shell.Client(shell));
        } catch (error) {
          assert.ok(error instanceof ShellRegistrationError, String(error));
        }
        if (method === "DELETE") gateway.unregisterShell(path);
      },
    ),
    { numRuns: 300, seed: 11 },
  );
  for (const address of gateway.shells()) {
    assert.match(address, /^[0-9A-Za-z.\-]+:\d{1,5}$/);
  }
  gateway.close();
  shell.close();
});

Deno.test({
  name: "an nginx left behind by a killed gateway is stopped by the next one",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "gateway-orphan-" });
    const backend = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response("ok"),
    );
    await ensureCertificate(
      `${dir}/server.pem`,
      `${dir}/server.key`,
      "localhost",
      "localhost",
    );
    const settings = {
      dir,
      listenHostname: "127.0.0.1",
      listenPort: freePort(),
      mainHostname: "localhost",
      grainHostname: "localhost",
      certFile: `${dir}/server.pem`,
      keyFile: `${dir}/server.key`,
      gateway: `127.0.0.1:${backend.addr.port}`,
      shells: [],
      maxBodyBytes: 1024,
    };
    const orphan = new NginxProcess(settings);
    const next = new NginxProcess(settings);
    const client = Deno.createHttpClient({
      caCerts: [await Deno.readTextFile(`${dir}/server.pem`)],
    });
    try {
      await orphan.start([]);
      const url = `https://localhost:${settings.listenPort}/`;
      const answer = async () => {
        for (let i = 0; i < 100; i++) {
          const response = await fetch(url, { client }).catch(() => undefined);
          if (response !== undefined) return await response.text();
          await new Promise((r) => setTimeout(r, 50));
        }
        throw new Error("nginx never answered");
      };
      assert.equal(await answer(), "ok");
      // The first gateway "dies" without stopping its nginx; the next one
      // starts on the same folder and port.
      await next.start([]);
      const orphanStatus = await orphan.status!;
      assert.equal(orphanStatus.success, true, "the orphan quit cleanly");
      assert.equal(await answer(), "ok");
    } finally {
      client.close();
      await next.stop();
      await orphan.stop();
      await backend.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("bodies relayed to grains on workers stop at the limit", async () => {
  let pulledBytes = 0;
  const chunk = new Uint8Array(64 * 1024);
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulledBytes += chunk.length;
      if (pulledBytes > 64 << 20) controller.close();
      else controller.enqueue(chunk);
    },
  });
  const request = new Request("http://grain/upload", {
    method: "POST",
    body,
    // @ts-ignore: Deno's Request accepts half-duplex streaming bodies.
    duplex: "half",
  });
  const limited = limitBody(request, 1 << 20)!;
  await assert.rejects(limited.request.arrayBuffer());
  assert.ok(limited.exceeded());
  assert.ok(pulledBytes < 4 << 20, `read ${pulledBytes} bytes`);
  const declared = new Request("http://grain/upload", {
    method: "POST",
    headers: { "content-length": "100" },
    body: "x".repeat(100),
  });
  assert.equal(limitBody(declared, 10), undefined);
  const small = limitBody(
    new Request("http://grain/", { method: "POST", body: "hello" }),
    10,
  )!;
  assert.equal(await small.request.text(), "hello");
  assert.ok(!small.exceeded());
});
