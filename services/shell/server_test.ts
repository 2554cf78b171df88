// The shell's handler in process, over a real SQLite repository and real
// package verification: the security rules that the browser tests do not
// reach directly (CSRF, cross-origin posts, route lookups, cookie flags,
// quotas).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as rpc from "../rpc/mod.ts";
import { Logger } from "../runtime/log.ts";
import { Shell } from "../../proto/gen/gateway.ts";
import { serveShell } from "./gateway_link.ts";
import { buildSpk, generateKey } from "../spk/write.ts";
import {
  type GrainRunner,
  GrainUnavailableError,
  HttpGrainRunner,
} from "./grain_runner.ts";
import {
  PackageStore,
  spkVerifier,
  spkVerifierWith,
  uploadLimits,
} from "./packages.ts";
import { hashPassword, verifyPassword } from "./password.ts";
import { SqliteRepository } from "./repo/sqlite.ts";
import {
  createShellHandler,
  createUser,
  lookupRoute,
  type ShellOptions,
} from "./server.ts";
import { SignInThrottle } from "./sign_in_throttle.ts";

const BASE = "https://shell.test:8443";

/** A runner that records calls and serves nothing: these tests stop at
 * the shell and never follow a grain's session. */
function recordingRunner(): GrainRunner & { opened: string[] } {
  const opened: string[] = [];
  return {
    kind: "recording",
    opened,
    open: (grain) => {
      opened.push(grain.id);
      return Promise.resolve("http://127.0.0.1:9/backend");
    },
    sizeOf: () => Promise.resolve(undefined),
    destroy: () => Promise.resolve(),
  };
}

async function setup(extra: Partial<ShellOptions> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "shell-server-" });
  const packageDir = `${dir}/packages`;
  const repo = new SqliteRepository(`${dir}/shell.sqlite`);
  const runner = recordingRunner();
  const handler = createShellHandler({
    repo,
    packages: new PackageStore(packageDir, 1 << 20),
    verifier: spkVerifier,
    runner,
    log: new Logger({ role: "shell", level: "error" }),
    baseUrl: BASE,
    grainHostSuffix: "shell.test:8443",
    defaultQuotaBytes: 1000,
    ...extra,
  });
  await createUser(repo, {
    name: "alice",
    displayName: "Alice",
    password: "alice-password",
    isAdmin: false,
    quotaBytes: 1000,
  });
  const call = (path: string, init: RequestInit = {}) =>
    handler(new Request(`${BASE}${path}`, init));
  return {
    repo,
    runner,
    call,
    packageDir,
    async done() {
      await repo.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

type World = Awaited<ReturnType<typeof setup>>;

async function signIn(world: World) {
  const response = await world.call("/login", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "name=Alice&password=alice-password",
  });
  assert.equal(response.status, 303);
  const cookie = response.headers.get("set-cookie")!;
  const session = cookie.split(";")[0];
  const home = await world.call("/", { headers: { cookie: session } });
  const csrf = /name="csrf"\s+value="([^"]+)"/.exec(await home.text())![1];
  return { cookie, session, csrf };
}

Deno.test("passwords are salted scrypt hashes", async () => {
  const a = await hashPassword("same");
  const b = await hashPassword("same");
  assert.notEqual(a, b);
  assert.match(a, /^scrypt\$16384\$8\$1\$/);
  assert.ok(await verifyPassword("same", a));
  assert.ok(!(await verifyPassword("other", a)));
  assert.ok(!(await verifyPassword("same", "scrypt$1$2$3$bad$bad")));
  assert.ok(!(await verifyPassword("same", "plain")));
});

Deno.test("sign-in sets a secure HttpOnly cookie; wrong passwords are refused", async () => {
  const world = await setup();
  try {
    const wrong = await world.call("/login", {
      method: "POST",
      body: new URLSearchParams({ name: "alice", password: "nope" }),
    });
    assert.equal(wrong.status, 401);
    assert.match(await wrong.text(), /Wrong user name or password/);
    const { cookie } = await signIn(world);
    assert.match(cookie, /^__Host-blackrock=/);
    for (const flag of ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"]) {
      assert.ok(cookie.includes(flag), `${flag} in ${cookie}`);
    }
    const anonymous = await world.call("/");
    assert.equal(anonymous.status, 303);
    assert.equal(anonymous.headers.get("location"), "/login?next=%2F");
  } finally {
    await world.done();
  }
});

Deno.test("forms without the CSRF token or from another origin are refused", async () => {
  const world = await setup();
  try {
    const { session, csrf } = await signIn(world);
    const post = (body: string, headers: Record<string, string> = {}) =>
      world.call("/logout", {
        method: "POST",
        headers: {
          cookie: session,
          "content-type": "application/x-www-form-urlencoded",
          ...headers,
        },
        body,
      });
    const missing = await post("");
    assert.equal(missing.status, 403);
    await missing.body?.cancel();
    const wrong = await post("csrf=forged");
    assert.equal(wrong.status, 403);
    await wrong.body?.cancel();
    const foreign = await post(`csrf=${csrf}`, { origin: "https://evil.test" });
    assert.equal(foreign.status, 403);
    await foreign.body?.cancel();
    const upload = await world.call("/upload", {
      method: "POST",
      headers: { cookie: session },
      body: "x",
    });
    assert.equal(upload.status, 403);
    await upload.body?.cancel();
    // The session still works, then signs out with the right token.
    const ok = await post(`csrf=${csrf}`, { origin: BASE });
    assert.equal(ok.status, 303);
    const after = await world.call("/", { headers: { cookie: session } });
    assert.equal(after.status, 303, "signed out");
  } finally {
    await world.done();
  }
});

Deno.test("route lookups over RPC name a live session's backend and rights", async () => {
  const world = await setup();
  try {
    const { session, csrf } = await signIn(world);
    const spk = await buildSpk(new Map(), {
      appTitle: "Tiny",
      appVersion: 1,
      actions: [],
      continueCommand: { argv: ["/x"], environ: [] },
    }, generateKey());
    const upload = await world.call("/upload", {
      method: "POST",
      headers: { cookie: session, "x-csrf-token": csrf },
      body: new Blob([spk as Uint8Array<ArrayBuffer>]),
    });
    const { packageId } = await upload.json();
    const created = await world.call(`/apps/${packageId}/new`, {
      method: "POST",
      headers: { cookie: session },
      body: new URLSearchParams({ csrf }),
    });
    assert.equal(created.status, 303);
    const grainPath = created.headers.get("location")!;
    const page = await (await world.call(grainPath, {
      headers: { cookie: session },
    })).text();
    const host =
      /src="https:\/\/([0-9a-v]{26})\.shell\.test:8443\/_blackrock\/session\?token=([\w-]{32})"/
        .exec(page);
    assert.ok(host, "the grain frame is on a random hostname");
    assert.equal(world.runner.opened.length, 1);

    // A gateway asks through the Shell capability, across a connection.
    const served = serveShell((label) => lookupRoute(world.repo, label));
    const [a, b] = rpc.memoryPipe();
    const shellSide = new rpc.RpcConnection(a, { bootstrap: served });
    const gatewaySide = new rpc.RpcConnection(b);
    const shell = rpc.bootstrap(gatewaySide, Shell);
    try {
      const answer = await shell.route((p) => p.hostLabel = host[1])
        .promise();
      assert.equal(answer.found, true);
      assert.equal(answer.route.backend, "http://127.0.0.1:9/backend");
      assert.equal(answer.route.canWrite, true);
      assert.equal(answer.route.userName, "Alice");
      assert.equal(
        answer.route.sessionKeyHash,
        createHash("sha256").update(host[2]).digest("hex"),
        "the gateway learns only the hash of the frame's session key",
      );
      assert.ok(Number(answer.route.expiresAtMs) > Date.now());
      const unknown = await shell.route((p) => p.hostLabel = "a".repeat(26))
        .promise();
      assert.equal(unknown.found, false);
    } finally {
      rpc.release(shell);
      gatewaySide.close();
      shellSide.close();
      served.close();
    }
    // The old HTTP route lookup is gone from the shell's web server.
    const old = await world.call(`/_blackrock/route?host=${host[1]}`);
    assert.equal(old.status, 404);
    await old.body?.cancel();

    // Titles are escaped wherever they appear.
    const renamed = await world.call(`${grainPath}/rename`, {
      method: "POST",
      headers: { cookie: session },
      body: new URLSearchParams({ csrf, title: "<script>alert(1)</script>" }),
    });
    assert.equal(renamed.status, 303);
    for (const path of ["/", grainPath]) {
      const html = await (await world.call(path, {
        headers: { cookie: session },
      })).text();
      assert.ok(!html.includes("<script>alert(1)"), path);
      assert.ok(html.includes("&lt;script&gt;alert(1)&lt;/script&gt;"), path);
    }

    // Over quota, no new grain is created.
    await world.repo.setGrainSize(grainPath.split("/").pop()!, 5000);
    const over = await world.call(`/apps/${packageId}/new`, {
      method: "POST",
      headers: { cookie: session },
      body: new URLSearchParams({ csrf }),
    });
    assert.equal(over.status, 403);
    assert.match(await over.text(), /quota/);
    assert.equal((await world.repo.listAllGrains()).length, 1);
  } finally {
    await world.done();
  }
});

Deno.test("random paths, cookies and forms never make the shell fail", async () => {
  const fc = (await import("fast-check")).default;
  const world = await setup();
  try {
    const { session, csrf } = await signIn(world);
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("GET", "POST", "PUT", "DELETE"),
        fc.oneof(
          fc.string(),
          fc.constantFrom(
            "/",
            "/admin",
            "/admin/users",
            "/grain/x",
            "/grain/x/share",
            "/grain/x/shares/" + "a".repeat(64) + "/revoke",
            "/apps/" + "0".repeat(32) + "/new",
            "/shared/abc",
            "/_blackrock/route",
            "/upload",
          ),
        ),
        fc.oneof(fc.string(), fc.constant(session)),
        fc.oneof(fc.string(), fc.constant(`csrf=${csrf}&title=x&role=7`)),
        async (method, path, cookie, body) => {
          const safePath = "/" + encodeURI(path.replace(/^\/+/, ""));
          const response = await world.call(safePath, {
            method,
            headers: { cookie: cookie.replace(/[\r\n\0]/g, "") },
            body: method === "GET" ? undefined : body,
          });
          await response.body?.cancel();
          assert.ok(
            response.status < 500,
            `${method} ${safePath}: ${response.status}`,
          );
        },
      ),
      { numRuns: 300, seed: 7 },
    );
  } finally {
    await world.done();
  }
});

Deno.test("a grain runner that does not answer gives a clear message", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const runner = new HttpGrainRunner(`http://127.0.0.1:${port}`);
  await assert.rejects(
    runner.open({
      id: "g1",
      ownerId: "u1",
      packageId: "p",
      appId: "a",
      title: "t",
      sizeBytes: 0,
      createdAt: 0,
      lastUsedAt: 0,
      firstStartedAt: 0,
    }, "/nowhere.spk"),
    (e) =>
      e instanceof GrainUnavailableError &&
      /No worker is running on this Blackrock yet/.test(e.message),
  );
  assert.equal(await runner.sizeOf("g1"), undefined);
});

Deno.test("sign-in only redirects to paths on the shell's own origin", async () => {
  const world = await setup();
  try {
    const cases: [string, string][] = [
      ["/%5Cevil.example/x", "/"],
      ["/%09/evil.example", "/"],
      ["//evil.example", "/"],
      ["https://evil.example/", "/"],
      ["%2F%2Fevil.example", "/"],
      ["/grain/abc?x=1", "/grain/abc?x=1"],
      ["/", "/"],
    ];
    for (const [next, expected] of cases) {
      const response = await world.call(`/login?next=${next}`, {
        method: "POST",
        body: new URLSearchParams({
          name: "alice",
          password: "alice-password",
        }),
      });
      assert.equal(response.status, 303, next);
      assert.equal(response.headers.get("location"), expected, next);
    }
  } finally {
    await world.done();
  }
});

Deno.test("a chunked sign-in form is cut off with 413 once it passes the limit", async () => {
  const world = await setup();
  try {
    let pulledBytes = 0;
    const chunk = new Uint8Array(64 * 1024).fill(0x61);
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulledBytes += chunk.length;
        if (pulledBytes > 64 * 1024 * 1024) controller.close();
        else controller.enqueue(chunk);
      },
    });
    const response = await world.call("/login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body,
    });
    assert.equal(response.status, 413);
    assert.ok(pulledBytes < 1024 * 1024, `read ${pulledBytes} bytes`);
  } finally {
    await world.done();
  }
});

Deno.test("failed sign-ins lock the account, then the address, for a doubling time", async () => {
  let nowMs = 1_000_000;
  const world = await setup({
    signInThrottle: new SignInThrottle(
      { freeAccountFailures: 3, freeAddressFailures: 6, firstLockMs: 1000 },
      () => nowMs,
    ),
  });
  const attempt = (name: string, password: string, address: string) =>
    world.call("/login", {
      method: "POST",
      headers: { "x-forwarded-for": address },
      body: new URLSearchParams({ name, password }),
    });
  try {
    for (let i = 0; i < 3; i++) {
      const wrong = await attempt("alice", "guess", "10.0.0.1");
      assert.equal(wrong.status, 401);
    }
    // Locked for 1 s: even the right password, from anywhere, must wait.
    for (const address of ["10.0.0.1", "10.0.0.2"]) {
      const locked = await attempt("alice", "alice-password", address);
      assert.equal(locked.status, 429);
      assert.equal(locked.headers.get("retry-after"), "1");
      assert.match(await locked.text(), /Too many failed sign-ins.*1 second/);
    }
    nowMs += 1000;
    assert.equal((await attempt("alice", "guess", "10.0.0.1")).status, 401);
    const longer = await attempt("alice", "alice-password", "10.0.0.2");
    assert.equal(longer.status, 429);
    assert.equal(longer.headers.get("retry-after"), "2");
    nowMs += 2000;
    assert.equal(
      (await attempt("alice", "alice-password", "10.0.0.2")).status,
      303,
    );
    // The address that guessed four times may guess twice more at other
    // accounts, then it is locked for every account.
    for (const name of ["bob", "carol"]) {
      assert.equal((await attempt(name, "x", "10.0.0.1")).status, 401);
    }
    assert.equal(
      (await attempt("alice", "alice-password", "10.0.0.1")).status,
      429,
    );
    assert.equal(
      (await attempt("alice", "alice-password", "10.0.0.3")).status,
      303,
    );
  } finally {
    await world.done();
  }
});

Deno.test("a small upload that unpacks past the limit is refused and leaves nothing", async () => {
  const world = await setup({
    verifier: spkVerifierWith(uploadLimits(1024 * 1024)),
  });
  try {
    const { session, csrf } = await signIn(world);
    const manifest = {
      appTitle: "Zeros",
      appVersion: 1,
      actions: [],
      continueCommand: { argv: ["/x"], environ: [] },
    };
    const bomb = await buildSpk(
      new Map([["zeros", {
        kind: "regular" as const,
        data: new Uint8Array(24 * 1024 * 1024),
      }]]),
      manifest,
      generateKey(),
    );
    assert.ok(bomb.length < 1 << 20, "fits the upload limit when packed");
    const upload = await world.call("/upload", {
      method: "POST",
      headers: { cookie: session, "x-csrf-token": csrf },
      body: new Blob([bomb as Uint8Array<ArrayBuffer>]),
    });
    assert.equal(upload.status, 400);
    const answer = await upload.json();
    assert.match(answer.error, /too large.*decompresses past/);
    assert.deepEqual([...Deno.readDirSync(world.packageDir)], []);
    assert.deepEqual(await world.repo.listPackages(), []);
  } finally {
    await world.done();
  }
});
