// Roles an app declares reach share links and sessions: the shell asks the
// grain's UiView for its view info through the worker interface, offers
// the app's roles (not the defaults) when sharing, and each session opened
// through the gateway carries the chosen role's permission flags to the
// app's newSession.
//
// The worker here is a FAKE served in this process over real RPC on
// loopback: none of the test apps declares roles, so a fake UiView that
// does stands in for such an app. The shell and the gateway are the real
// handlers, talking to it over TCP exactly as they talk to the worker
// role.
import assert from "node:assert/strict";
import * as rpc from "../../services/rpc/mod.ts";
import { Logger } from "../../services/runtime/log.ts";
import { readSpk } from "../../services/spk/read.ts";
import { buildSpk, generateKey } from "../../services/spk/write.ts";
import { Gateway } from "../../services/gateway/proxy.ts";
import { PackageStore, spkVerifier } from "../../services/shell/packages.ts";
import { SqliteRepository } from "../../services/shell/repo/sqlite.ts";
import {
  createShellHandler,
  createUser,
  lookupRoute,
} from "../../services/shell/server.ts";
import { serveShell } from "../../services/shell/gateway_link.ts";
import { Shell } from "../../proto/gen/gateway.ts";
import { WorkerGrainRunner } from "../../services/shell/worker_client.ts";
import { Worker, type Worker$Server$Target } from "../../proto/gen/worker.ts";
import {
  UiSession,
  UiView,
  type UiView$Server$Target,
} from "../../proto/gen/sandstorm/grain.ts";
import {
  WebSession,
  type WebSession$Server$Target,
  WebSession_Response_SuccessCode,
} from "../../proto/gen/sandstorm/web-session.ts";

/** A worker whose every grain is an app declaring three roles over two
 * permissions (edit, read); its pages answer with the session's flags. */
function fakeWorker() {
  const sessions: boolean[][] = [];
  const view = () =>
    new UiView.Client(rpc.serve(
      UiView,
      ({
        getViewInfo(_params, info) {
          const permissions = info._initPermissions(2);
          permissions.get(0).name = "edit";
          permissions.get(1).name = "read";
          const roles = info._initRoles(3);
          const define = (i: number, title: string, flags: boolean[]) => {
            roles.get(i)._initTitle().defaultText = title;
            const list = roles.get(i)._initPermissions(flags.length);
            flags.forEach((flag, j) => list.set(j, flag));
          };
          define(0, "editor", [true, true]);
          define(1, "commenter", [false, true]);
          define(2, "ancient", [true, false]);
          roles.get(2).obsolete = true;
          return Promise.resolve();
        },
        newSession(params, results) {
          const flags = [...params.userInfo.permissions];
          sessions.push(flags);
          results.session = new UiSession.Client(rpc.serve(
            WebSession,
            ({
              get(_p, response) {
                const content = response._initContent();
                content.statusCode = WebSession_Response_SuccessCode.OK;
                content.mimeType = "application/json";
                const body = new TextEncoder().encode(JSON.stringify(flags));
                content._initBody()._initBytes(body.length).copyBuffer(body);
                return Promise.resolve();
              },
            } satisfies Partial<
              WebSession$Server$Target
            >) as WebSession$Server$Target,
          ));
          return Promise.resolve();
        },
      } satisfies Partial<UiView$Server$Target>) as UiView$Server$Target,
    ));
  const cap = rpc.serve(
    Worker,
    ({
      async installPackage(params, results) {
        const spk = await readSpk(params.spk.toUint8Array().slice());
        results.packageId = spk.packageId;
        results.appId = spk.appId;
        results.appTitle = spk.manifest.appTitle;
      },
      newGrain(_p, results) {
        results.view = view();
        return Promise.resolve();
      },
      restoreGrain(_p, results) {
        results.view = view();
        return Promise.resolve();
      },
      getView(_p, results) {
        results.view = view();
        return Promise.resolve();
      },
    } satisfies Partial<Worker$Server$Target>) as Worker$Server$Target,
  );
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
  const connections: rpc.RpcConnection[] = [];
  (async () => {
    for (;;) {
      const transport = await listener.accept().catch(() => undefined);
      if (transport === undefined) return;
      connections.push(new rpc.RpcConnection(transport, { bootstrap: cap }));
    }
  })();
  return {
    port: listener.port,
    sessions,
    close() {
      listener.close();
      for (const c of connections) c.close();
      cap.close();
    },
  };
}

Deno.test({
  name:
    "share links offer the roles the app declares and sessions carry that role's permissions",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "app-roles-" });
    const worker = fakeWorker();
    const repo = new SqliteRepository(`${dir}/shell.sqlite`);
    const runner = new WorkerGrainRunner({
      hostname: "127.0.0.1",
      port: worker.port,
    });
    const log = new Logger({ role: "test", level: "error" });
    const host = "shell.test:8443";
    const base = `https://${host}`;
    const handler = createShellHandler({
      repo,
      packages: new PackageStore(`${dir}/packages`, 1 << 20),
      verifier: spkVerifier,
      runner,
      log,
      baseUrl: base,
      grainHostSuffix: host,
      defaultQuotaBytes: 1 << 30,
    });
    const shellRoutes = serveShell((label) => lookupRoute(repo, label));
    const shellServer = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      handler,
    );
    const gateway = new Gateway({
      mainHost: host,
      grainHostSuffix: host,
      shellOrigin: base,
      log,
      routeCacheMs: 0,
    });
    try {
      // The shell's route lookups, as the gateway reaches them over RPC
      // (proto/gateway.capnp's Shell), served in process here.
      gateway.registerShell(
        "s1",
        `127.0.0.1:${shellServer.addr.port}`,
        new Shell.Client(shellRoutes),
      );

      for (const name of ["alice", "bob"]) {
        await createUser(repo, {
          name,
          displayName: name,
          password: `${name}-password`,
          isAdmin: false,
          quotaBytes: 1 << 30,
        });
      }
      const call = (path: string, init: RequestInit = {}) =>
        handler(new Request(`${base}${path}`, init));
      const signIn = async (name: string) => {
        const response = await call("/login", {
          method: "POST",
          body: new URLSearchParams({ name, password: `${name}-password` }),
        });
        const cookie = response.headers.get("set-cookie")!.split(";")[0];
        const home = await (await call("/", { headers: { cookie } })).text();
        const csrf = /name="csrf"\s+value="([^"]+)"/.exec(home)![1];
        return { cookie, csrf };
      };
      /** Opens a grain page and returns its frame's host label, with the
       * grain cookie the frame's first URL is exchanged for. */
      const open = async (path: string, cookie: string) => {
        const page = await (await call(path, { headers: { cookie } })).text();
        const m =
          /src="https:\/\/([0-9a-v]{26})\.shell\.test:8443(\/_blackrock\/session\?token=[\w-]+)"/
            .exec(page);
        assert.ok(m, page);
        const exchanged = await gateway.handle(
          new Request(`http://gateway${m[2]}`, {
            headers: { host: `${m[1]}.${host}` },
          }),
        );
        assert.equal(exchanged.status, 303);
        const grainCookie = exchanged.headers.get("set-cookie")!.split(";")[0];
        return { label: m[1], page, grainCookie };
      };
      /** A page of the grain through the gateway, as the browser asks. */
      const grainPage = async (
        session: { label: string; grainCookie: string },
      ) => {
        const response = await gateway.handle(
          new Request("http://gateway/", {
            headers: {
              host: `${session.label}.${host}`,
              cookie: session.grainCookie,
            },
          }),
        );
        return await response.text();
      };

      const alice = await signIn("alice");
      const spk = await buildSpk(new Map(), {
        appTitle: "Roles",
        appVersion: 1,
        actions: [{
          title: "New",
          nounPhrase: "board",
          command: { argv: ["/x"], environ: [] },
        }],
        continueCommand: { argv: ["/x"], environ: [] },
      }, generateKey());
      const uploaded = await (await call("/upload", {
        method: "POST",
        headers: { cookie: alice.cookie, "x-csrf-token": alice.csrf },
        body: new Blob([spk as Uint8Array<ArrayBuffer>]),
      })).json();
      assert.equal(uploaded.ok, true, JSON.stringify(uploaded));
      const created = await call(`/apps/${uploaded.packageId}/new`, {
        method: "POST",
        headers: { cookie: alice.cookie },
        body: new URLSearchParams({ csrf: alice.csrf }),
      });
      const grainPath = created.headers.get("location")!;

      // The first opening asks the app for its roles.
      const owner = await open(grainPath, alice.cookie);
      assert.equal(await grainPage(owner), "[true,true]");
      const again = await open(grainPath, alice.cookie);
      assert.match(again.page, /<option value="0">editor<\/option>/);
      assert.match(again.page, /<option value="1">commenter<\/option>/);
      assert.doesNotMatch(again.page, /ancient|read only/);

      const shared = await call(`${grainPath}/share`, {
        method: "POST",
        headers: { cookie: alice.cookie },
        body: new URLSearchParams({ csrf: alice.csrf, role: "1" }),
      });
      const secret = /#link=(.+)$/.exec(shared.headers.get("location")!)![1];
      const bob = await signIn("bob");
      const claimed = await call(`/shared/${secret}`, {
        headers: { cookie: bob.cookie },
      });
      assert.equal(claimed.headers.get("location"), grainPath);
      const bobSession = await open(grainPath, bob.cookie);
      assert.equal(await grainPage(bobSession), "[false,true]");
      assert.deepEqual(worker.sessions.at(-1), [false, true]);
      // A commenter's writes are the app's to refuse: the gateway lets
      // them through for app-declared roles.
      const post = await gateway.handle(
        new Request("http://gateway/x", {
          method: "POST",
          body: "hi",
          headers: {
            host: `${bobSession.label}.${host}`,
            cookie: bobSession.grainCookie,
          },
        }),
      );
      assert.notEqual(post.status, 403);
      await post.body?.cancel();
    } finally {
      gateway.close();
      shellRoutes.close();
      runner.close();
      worker.close();
      await shellServer.shutdown();
      await repo.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
