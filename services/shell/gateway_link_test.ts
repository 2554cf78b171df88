// A shell's link to a gateway over TCP RPC (proto/gateway.capnp). The
// gateway here is a stand-in written against the schema in this test (a
// role may not import another role's code; the real gateway's side is
// tested in services/gateway/ and both together in tests/e2e/): it checks
// the token, records registrations and calls the shell's capability back.
import assert from "node:assert/strict";
import * as rpc from "../rpc/mod.ts";
import {
  Gateway,
  GatewayLogin,
  type Shell$Client,
} from "../../proto/gen/gateway.ts";
import { GatewayLink } from "./gateway_link.ts";
import type { SessionRoute } from "./server.ts";

const TOKEN = "link-token-0123456789";

function standInGateway(port = 0) {
  const shells = new Map<string, { address: string; shell: Shell$Client }>();
  let registrations = 0;
  const gateway = rpc.serve(Gateway, {
    registerShell(params) {
      registrations++;
      const previous = shells.get(params.shellId);
      shells.set(params.shellId, {
        address: params.httpAddress,
        shell: rpc.retain(params.shell),
      });
      if (previous !== undefined) rpc.release(previous.shell);
      return Promise.resolve();
    },
    unregisterShell(params) {
      const known = shells.get(params.shellId);
      if (known !== undefined) rpc.release(known.shell);
      shells.delete(params.shellId);
      return Promise.resolve();
    },
    status(_params, results) {
      const status = results._initStatus();
      status.pid = 4242;
      status.hostname = "gw";
      status.address = "127.0.0.1:8443";
      const list = status._initShells(shells.size);
      [...shells.values()].forEach((s, i) => list.set(i, s.address));
      return Promise.resolve();
    },
  });
  const login = rpc.serve(GatewayLogin, {
    login(params, results) {
      if (params.token !== TOKEN) {
        return Promise.reject(new rpc.RpcError("failed", "wrong token"));
      }
      results.gateway = new Gateway.Client(gateway.addRef());
      return Promise.resolve();
    },
  });
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port });
  const connections: rpc.RpcConnection[] = [];
  (async () => {
    while (true) {
      const transport = await listener.accept().catch(() => undefined);
      if (transport === undefined) return;
      connections.push(
        new rpc.RpcConnection(transport, { bootstrap: login }),
      );
    }
  })();
  return {
    port: listener.port,
    shells,
    get registrations() {
      return registrations;
    },
    /** Drops every connection, as a restarting gateway would. */
    disconnect() {
      for (const connection of connections.splice(0)) connection.close();
    },
    close() {
      listener.close();
      this.disconnect();
      for (const { shell } of shells.values()) rpc.release(shell);
      login.close();
      gateway.close();
    },
  };
}

Deno.test("a shell registers, answers route lookups, calls in again after a lost connection and leaves", async () => {
  const gateway = standInGateway();
  const route: SessionRoute = {
    backend: "worker://127.0.0.1:7301/g1",
    grainId: "g1",
    canWrite: false,
    expiresAt: 1_900_000_000_000,
    userId: "u1",
    userName: "Ann",
    permissions: [false, true],
    sessionKeyHash: "ab".repeat(32),
  };
  const link = new GatewayLink({
    address: { hostname: "127.0.0.1", port: gateway.port },
    token: TOKEN,
    shellId: "shell-1",
    httpAddress: "127.0.0.1:6080",
    lookup: (label) =>
      Promise.resolve(label === "a".repeat(26) ? route : undefined),
  });
  try {
    await link.heartbeat();
    await link.heartbeat();
    assert.equal(gateway.registrations, 2);
    const registered = gateway.shells.get("shell-1")!;
    assert.equal(registered.address, "127.0.0.1:6080");

    // The gateway calls the shell back over the shell's own connection.
    const answer = await registered.shell.route((p) =>
      p.hostLabel = "a".repeat(26)
    ).promise();
    assert.equal(answer.found, true);
    assert.equal(answer.route.backend, route.backend);
    assert.equal(answer.route.canWrite, false);
    assert.equal(answer.route.expiresAtMs, BigInt(route.expiresAt));
    assert.deepEqual([...answer.route.permissions], [false, true]);
    assert.equal(answer.route.sessionKeyHash, route.sessionKeyHash);
    const missing = await registered.shell.route((p) => p.hostLabel = "zz")
      .promise();
    assert.equal(missing.found, false);

    const status = await link.status();
    assert.equal(status?.pid, 4242);
    assert.deepEqual(status?.shells, ["127.0.0.1:6080"]);

    // A gateway that drops the connection gets the shell back on its next
    // heartbeat.
    gateway.disconnect();
    await assert.rejects(
      registered.shell.route((p) => p.hostLabel = "x").promise(),
    );
    await link.heartbeat().catch(() => link.heartbeat());
    const again = await gateway.shells.get("shell-1")!.shell.route((p) =>
      p.hostLabel = "a".repeat(26)
    ).promise();
    assert.equal(again.found, true);

    await link.close();
    assert.equal(gateway.shells.has("shell-1"), false);
  } finally {
    await link.close();
    gateway.close();
  }
});

Deno.test("a shell with the wrong token is refused and registers nothing", async () => {
  const gateway = standInGateway();
  const link = new GatewayLink({
    address: { hostname: "127.0.0.1", port: gateway.port },
    token: "not-the-token-000000",
    shellId: "shell-2",
    httpAddress: "127.0.0.1:6081",
    lookup: () => Promise.resolve(undefined),
  });
  try {
    await assert.rejects(link.heartbeat(), /wrong token/);
    assert.equal(gateway.shells.size, 0);
    assert.equal(await link.status(), undefined);
  } finally {
    await link.close();
    gateway.close();
  }
});

Deno.test("a heartbeat to a gateway that is not running fails and the next one connects", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const link = new GatewayLink({
    address: { hostname: "127.0.0.1", port },
    token: TOKEN,
    shellId: "shell-3",
    httpAddress: "127.0.0.1:6082",
    lookup: () => Promise.resolve(undefined),
  });
  let gateway: ReturnType<typeof standInGateway> | undefined;
  try {
    await assert.rejects(link.heartbeat());
    assert.equal(await link.status(), undefined);
    gateway = standInGateway(port);
    await link.heartbeat();
    assert.equal(gateway.shells.get("shell-3")?.address, "127.0.0.1:6082");
  } finally {
    await link.close();
    gateway?.close();
  }
});
