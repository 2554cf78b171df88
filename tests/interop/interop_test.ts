/**
 * Interop with the Cap'n Proto C++ reference (Debian libcapnp-dev): the
 * peer in peer.c++ is built with make, then each side serves TestHost
 * (proto/rpc_test.capnp) while the other calls it, over TCP and over a
 * unix socket. Checked both ways: calls, pipelining, capabilities passed
 * in params and results, their release, embargoes and exception types.
 */

import assert from "node:assert/strict";
import { Counter, TestHost } from "../../proto/gen/rpc_test.ts";
import * as rpc from "../../services/rpc/mod.ts";
import {
  serveCounter,
  serveTestHost,
} from "../../services/rpc/testdata/test_host.ts";

const here = new URL(".", import.meta.url).pathname;
const peerPath = `${here}build/peer`;

async function buildPeer(): Promise<void> {
  const make = await new Deno.Command("make", {
    args: ["-s", "-C", here],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  assert.equal(make.code, 0, "building the C++ peer failed");
}

/** Starts the C++ peer as a server; resolves with its port. */
async function startCppServer(address: string) {
  const child = new Deno.Command(peerPath, {
    args: ["server", address],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("C++ peer exited before listening");
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const port = Number(text.trim().split(" ")[1]);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    await child.stdout.cancel().catch(() => {});
    await child.status;
  };
  return { port, stop };
}

async function live(host: InstanceType<typeof TestHost.Client>) {
  return (await host.liveCounters().promise()).count;
}

Deno.test("Deno client calls the C++ server over TCP", async () => {
  await buildPeer();
  const server = await startCppServer("127.0.0.1:0");
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port: server.port }),
  );
  try {
    const host = rpc.bootstrap(connection, TestHost);
    assert.equal(
      (await host.add((p) => {
        p.a = 2;
        p.b = 40;
      }).promise()).sum,
      42,
    );

    // Pipelining onto a returned capability and onto self().
    const counter = host.newCounter((p) => p.start = 10).getCounter();
    const first = counter.increment((p) => p.by = 5);
    const second = counter.increment((p) => p.by = 1);
    assert.equal((await first.promise()).value, 15);
    assert.equal((await second.promise()).value, 16);
    assert.equal(
      (await host.self().getHost().add((p) => p.a = 7).promise()).sum,
      7,
    );
    assert.equal(await live(host), 1);
    rpc.release(counter);
    assert.equal(await live(host), 0, "C++ saw the Release");

    // A capability of ours, called back, held, then released by C++.
    let released = false;
    const mine = new Counter.Client(serveCounter(100, () => released = true));
    assert.equal(
      (await host.useCounter((p) => {
        p.counter = mine;
        p.by = 7;
      }).promise()).value,
      107,
    );
    await host.holdCounter((p) => p.counter = mine).promise();
    rpc.release(mine);
    assert.equal(released, false);
    await host.dropHeld().promise();
    await host.add().promise();
    assert.equal(released, true, "C++ released our capability");
    assert.equal(connection.stats.exports, 0);

    // Embargo: our own capability bounced back through C++.
    const own = new Counter.Client(serveCounter(0));
    const bounced = host.bounce((p) => p.counter = own).getCounter();
    const values = await Promise.all(
      Array.from(
        { length: 20 },
        () => bounced.increment((p) => p.by = 1).promise(),
      ),
    );
    assert.deepEqual(values.map((v) => v.value), values.map((_, i) => i + 1));
    rpc.release(own);

    // A counter returned as a promise (Resolve from C++), called before
    // and after it resolves.
    const promised = (await host.promisedCounter((p) => p.start = 10)
      .promise()).counter;
    const before = [1, 2].map(() =>
      promised.increment((p) => p.by = 1).promise()
    );
    await host.settle().promise();
    const after = [3, 4].map(() =>
      promised.increment((p) => p.by = 1).promise()
    );
    assert.deepEqual(
      (await Promise.all([...before, ...after])).map((r) => r.value),
      [11, 12, 13, 14],
    );
    rpc.release(promised);
    assert.equal(await live(host), 0);

    // Our own capability returned as a promise: C++ resolves it to us and
    // this side embargoes new calls until the looping ones are back.
    const ownAgain = new Counter.Client(serveCounter(0));
    const promisedBounce = (await host.promisedBounce((p) =>
      p.counter = ownAgain
    ).promise()).counter;
    const order: Promise<number>[] = [];
    const increment = () =>
      order.push(
        promisedBounce.increment((p) => p.by = 1).promise().then((r) =>
          r.value
        ),
      );
    for (let i = 0; i < 5; i++) increment();
    const settled = host.settle().promise();
    for (let i = 0; i < 10; i++) increment();
    await settled;
    for (let i = 0; i < 10; i++) increment();
    assert.deepEqual(
      await Promise.all(order),
      Array.from({ length: 25 }, (_, i) => i + 1),
    );
    rpc.release(promisedBounce);
    rpc.release(ownAgain);

    for (
      const kind of [
        "failed",
        "overloaded",
        "disconnected",
        "unimplemented",
      ] as const
    ) {
      await assert.rejects(
        host.fail((p) => p.kind = kind).promise(),
        (error) => error instanceof rpc.RpcError && error.type === kind,
      );
    }
    rpc.release(host);
  } finally {
    connection.close();
    await server.stop();
  }
});

Deno.test("C++ client calls the Deno server over a unix socket", async () => {
  await buildPeer();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/rpc.sock`;
  const state = serveTestHost();
  const listener = rpc.listenUnix(path);
  const connections: rpc.RpcConnection[] = [];
  const accepting = (async () => {
    for (;;) {
      const transport = await listener.accept().catch(() => undefined);
      if (transport === undefined) return;
      connections.push(
        new rpc.RpcConnection(transport, { bootstrap: state.cap }),
      );
    }
  })();
  try {
    const client = await new Deno.Command(peerPath, {
      args: ["client", `unix:${path}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(client.stderr);
    assert.equal(client.code, 0, `C++ client failed: ${stderr}`);
    assert.equal(new TextDecoder().decode(client.stdout).trim(), "ok");
    assert.equal(state.live(), 0, "every counter given to C++ came back");
    assert.equal(state.held.length, 0);
    await connections[0].closed;
    assert.equal(connections[0].stats.exports, 0);
  } finally {
    listener.close();
    await accepting;
    for (const connection of connections) connection.close();
    state.cap.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a C++ program on fd 3 (as a grain) calls the Deno server", async () => {
  await buildPeer();
  const state = serveTestHost();
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept().then((transport) =>
    new rpc.RpcConnection(transport, { bootstrap: state.cap })
  );
  let server: rpc.RpcConnection | undefined;
  try {
    // bash opens the socket as fd 3 and execs the C++ peer with it, the
    // way a supervisor hands a grain its connection.
    const client = await new Deno.Command("bash", {
      args: [
        "-c",
        `exec 3<>/dev/tcp/127.0.0.1/${listener.port}; exec "$0" client-fd 3`,
        peerPath,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    server = await accepted;
    const stderr = new TextDecoder().decode(client.stderr);
    assert.equal(client.code, 0, `C++ client failed: ${stderr}`);
    assert.equal(new TextDecoder().decode(client.stdout).trim(), "ok");
    assert.equal(state.live(), 0);
  } finally {
    server?.close();
    listener.close();
    state.cap.close();
  }
});

Deno.test("a Deno caller's cancel reaches the C++ server", async () => {
  await buildPeer();
  const server = await startCppServer("127.0.0.1:0");
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port: server.port }),
  );
  const host = rpc.bootstrap(connection, TestHost);
  const trees = host.trees().getHost();
  try {
    const canceled = async () => (await trees.canceledWaits().promise()).count;
    const before = await canceled();
    const questions = connection.stats.questions;
    const pending = trees.wait();
    await canceled(); // the wait call has reached C++
    rpc.cancel(pending);
    await assert.rejects(pending.promise(), /canceled/);
    assert.equal(await canceled(), before + 1);
    // C++ still sends the canceled call's Return; the question ends then.
    while (connection.stats.questions > questions) await canceled();
  } finally {
    rpc.release(trees);
    rpc.release(host);
    connection.close();
    await server.stop();
  }
});

Deno.test("C++ client checks pass through a Deno vat forwarding to a C++ server", async () => {
  // Every call, capability, pipelined call, embargo, multi-segment tree
  // and cancellation of the C++ checks crosses the Deno engine twice.
  await buildPeer();
  const server = await startCppServer("127.0.0.1:0");
  const upstream = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port: server.port }),
  );
  const host = rpc.bootstrap(upstream, TestHost);
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept().then((transport) =>
    new rpc.RpcConnection(transport, { bootstrap: rpc.capOf(host) })
  );
  let downstream: rpc.RpcConnection | undefined;
  try {
    const client = await new Deno.Command(peerPath, {
      args: ["client", `127.0.0.1:${listener.port}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    downstream = await accepted;
    const stderr = new TextDecoder().decode(client.stderr);
    assert.equal(client.code, 0, `C++ client failed: ${stderr}`);
    assert.equal(new TextDecoder().decode(client.stdout).trim(), "ok");
  } finally {
    downstream?.close();
    listener.close();
    rpc.release(host);
    upstream.close();
    await server.stop();
  }
});
