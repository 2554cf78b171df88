import assert from "node:assert/strict";
import { Counter, TestHost } from "../../proto/gen/rpc_test.ts";
import * as rpc from "./mod.ts";
import { serveCounter, serveTestHost } from "./testdata/test_host.ts";

type Host = InstanceType<typeof TestHost.Client>;

/** A client and server connection joined in memory, host on the server. */
function pair(
  options: { server?: rpc.ConnectionOptions; client?: rpc.ConnectionOptions } =
    {},
) {
  const state = serveTestHost();
  const metrics = new rpc.RpcMetrics();
  const [a, b] = rpc.memoryPipe();
  const server = new rpc.RpcConnection(b, {
    bootstrap: state.cap,
    metrics,
    ...options.server,
  });
  const client = new rpc.RpcConnection(a, { metrics, ...options.client });
  const host: Host = rpc.bootstrap(client, TestHost);
  const close = () => {
    client.close();
    server.close();
    state.cap.close();
  };
  return { state, server, client, host, metrics, close };
}

async function live(host: Host): Promise<number> {
  return (await host.liveCounters().promise()).count;
}

Deno.test("bootstrap and a call return typed results", async () => {
  const t = pair();
  try {
    const result = await t.host.add((p) => {
      p.a = 20;
      p.b = 22;
    }).promise();
    assert.equal(result.sum, 42);
  } finally {
    t.close();
  }
});

Deno.test("calls over TCP between two connections", async () => {
  const state = serveTestHost();
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept().then((transport) =>
    new rpc.RpcConnection(transport, { bootstrap: state.cap })
  );
  const client = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port: listener.port }),
  );
  const server = await accepted;
  try {
    const host = rpc.bootstrap(client, TestHost);
    const sums = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        host.add((p) => {
          p.a = i;
          p.b = 1;
        }).promise()),
    );
    assert.deepEqual(sums.map((s) => s.sum), sums.map((_, i) => i + 1));
    const big = new Uint8Array(300_000).map((_, i) => i & 0xff);
    const echoed = await host.echo((p) => {
      p._initData(big.length).copyBuffer(big);
    }).promise();
    assert.deepEqual(echoed.data.toUint8Array(), big);
  } finally {
    client.close();
    server.close();
    listener.close();
    state.cap.close();
  }
});

Deno.test("pipelined calls run before the first answer is known", async () => {
  const t = pair();
  try {
    const counter = t.host.newCounter((p) => {
      p.start = 10;
    }).getCounter();
    const first = counter.increment((p) => {
      p.by = 1;
    });
    const second = counter.increment((p) => {
      p.by = 2;
    });
    assert.equal((await first.promise()).value, 11);
    assert.equal((await second.promise()).value, 13);
    // Two levels of pipelining: self() then add().
    const sum = await t.host.self().getHost().add((p) => {
      p.a = 1;
      p.b = 2;
    }).promise();
    assert.equal(sum.sum, 3);
  } finally {
    t.close();
  }
});

Deno.test("capabilities pass both ways and are released", async () => {
  const t = pair();
  try {
    // Server to client: a counter in results, released by close().
    const made = await t.host.newCounter((p) => {
      p.start = 0;
    }).promise();
    const counter = made.counter;
    assert.equal((await counter.increment((p) => p.by = 5).promise()).value, 5);
    assert.equal(await live(t.host), 1);
    rpc.release(counter);
    assert.equal(await live(t.host), 0);

    // Client to server: a counter in params, called back by the server.
    let released = false;
    const mine = new Counter.Client(serveCounter(100, () => released = true));
    const used = await t.host.useCounter((p) => {
      p.counter = mine;
      p.by = 7;
    }).promise();
    assert.equal(used.value, 107);
    // Held by the server past the call, then dropped.
    await t.host.holdCounter((p) => p.counter = mine).promise();
    rpc.release(mine);
    assert.equal(released, false);
    assert.equal(t.client.stats.exports, 1);
    await t.host.dropHeld().promise();
    await t.host.add((p) => p.a = 1).promise();
    assert.equal(released, true);
    assert.equal(t.client.stats.exports, 0);
    assert.equal(t.server.stats.imports, 0);
  } finally {
    t.close();
  }
});

Deno.test("a pipelined capability that loops back keeps call order (embargo)", async () => {
  const t = pair();
  try {
    const values: number[] = [];
    const mine = new Counter.Client(serveCounter(0));
    const bounced = t.host.bounce((p) => p.counter = mine).getCounter();
    const calls: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) {
      calls.push(
        bounced.increment((p) => p.by = 1).promise().then((r) => {
          values.push(r.value);
        }),
      );
      if (i === 5) await new Promise((resolve) => setTimeout(resolve, 0));
    }
    await Promise.all(calls);
    assert.deepEqual(values, Array.from({ length: 20 }, (_, i) => i + 1));
    assert.ok(t.metrics.embargoes >= 1, "an embargo was needed");
    rpc.release(mine);
  } finally {
    t.close();
  }
});

Deno.test("exceptions arrive as typed RpcError", async () => {
  const t = pair();
  try {
    for (const kind of ["failed", "overloaded", "disconnected"] as const) {
      await assert.rejects(
        t.host.fail((p) => p.kind = kind).promise(),
        (error) =>
          error instanceof rpc.RpcError && error.type === kind &&
          error.remote,
      );
    }
    // A method the server does not implement: Counter.increment on a host.
    const wrong = new Counter.Client(rpc.capOf(t.host));
    await assert.rejects(
      wrong.increment((p) => p.by = 1).promise(),
      (error) =>
        error instanceof rpc.RpcError && error.type === "unimplemented",
    );
  } finally {
    t.close();
  }
});

Deno.test("a closed connection fails pending and later calls as disconnected", async () => {
  const t = pair();
  const slow = Promise.withResolvers<void>();
  const blocker = new Counter.Client(rpc.serve(Counter, {
    async increment(_p, r) {
      await slow.promise;
      r.value = 1;
    },
  }));
  try {
    const pending = t.host.useCounter((p) => p.counter = blocker).promise();
    await t.host.add().promise();
    t.server.close();
    await assert.rejects(
      pending,
      (error) => error instanceof rpc.RpcError && error.type === "disconnected",
    );
    await assert.rejects(
      t.host.add().promise(),
      (error) => error instanceof rpc.RpcError && error.type === "disconnected",
    );
  } finally {
    slow.resolve();
    rpc.release(blocker);
    t.close();
  }
});

Deno.test("too many outstanding calls are refused as overloaded", async () => {
  const t = pair({ server: { limits: { maxOutstandingCalls: 2 } } });
  const slow = Promise.withResolvers<void>();
  const blocker = new Counter.Client(rpc.serve(Counter, {
    async increment(_p, r) {
      await slow.promise;
      r.value = 1;
    },
  }));
  try {
    const held = [1, 2].map(() =>
      t.host.useCounter((p) => p.counter = blocker).promise()
    );
    await assert.rejects(
      t.host.add().promise(),
      (error) => error instanceof rpc.RpcError && error.type === "overloaded",
    );
    slow.resolve();
    await Promise.all(held);
    assert.equal((await t.host.add((p) => p.a = 3).promise()).sum, 3);
    assert.ok(t.metrics.callsRefused >= 1);
  } finally {
    slow.resolve();
    rpc.release(blocker);
    t.close();
  }
});

Deno.test("an oversized message is refused with an error", async () => {
  const t = pair({ server: { limits: { maxMessageBytes: 4096 } } });
  try {
    // The reply would be too big: the server answers with an exception.
    await assert.rejects(
      t.host.echo((p) => p._initData(1000)).promise().then(() =>
        t.host.echo((p) => p._initData(8000)).promise()
      ),
      (error) => error instanceof rpc.RpcError,
    );
    // A call too big to accept: the server aborts the connection.
    await assert.rejects(
      t.host.echo((p) => p._initData(8000)).promise(),
      (error) => error instanceof rpc.RpcError,
    );
    assert.ok(t.metrics.badMessages >= 1);
  } finally {
    t.close();
  }
});

Deno.test("capability tables are freed when a connection ends", async () => {
  const t = pair();
  let released = false;
  const mine = new Counter.Client(serveCounter(0, () => released = true));
  try {
    await t.host.holdCounter((p) => p.counter = mine).promise();
    rpc.release(mine);
    assert.equal(released, false);
    t.client.close();
    await t.server.closed;
    assert.equal(released, true);
  } finally {
    t.close();
  }
});

/** A host whose capabilities are promises that settle when told to. */
function promisingHost() {
  const pending: (() => void)[] = [];
  let value = 0;
  const counter = () =>
    rpc.serve(Counter, {
      increment(p, r) {
        value += p.by;
        r.value = value;
      },
    });
  const cap = rpc.serve(TestHost, {
    newCounter(_p, r) {
      const promise = new rpc.PromiseCap();
      pending.push(() => promise.resolve(counter()));
      r.counter = new Counter.Client(promise);
    },
    bounce(p, r) {
      const promise = new rpc.PromiseCap();
      const target = rpc.retain(p.counter);
      pending.push(() => promise.resolve(rpc.capOf(target)));
      r.counter = new Counter.Client(promise);
    },
  });
  const settleAll = () => {
    for (const settle of pending.splice(0)) settle();
  };
  return { cap, settleAll };
}

Deno.test("a promise exported by the server resolves in place (Resolve)", async () => {
  const served = promisingHost();
  const [a, b] = rpc.memoryPipe();
  const metrics = new rpc.RpcMetrics();
  const server = new rpc.RpcConnection(b, { bootstrap: served.cap, metrics });
  const client = new rpc.RpcConnection(a, { metrics });
  try {
    const host = rpc.bootstrap(client, TestHost);
    const counter = (await host.newCounter().promise()).counter;
    // Calls made while it is still a promise queue at the server.
    const early = [1, 2, 3].map(() =>
      counter.increment((p) => p.by = 1).promise()
    );
    await host.add().promise().catch(() => {});
    served.settleAll();
    const late = [4, 5].map(() => counter.increment((p) => p.by = 1).promise());
    const values = await Promise.all([...early, ...late]);
    assert.deepEqual(values.map((v) => v.value), [1, 2, 3, 4, 5]);
    assert.equal(metrics.resolvesSent, 1);
    assert.equal(metrics.resolvesReceived, 1);
    assert.equal(server.stats.exports, 3, "host, promise, resolution");
    rpc.release(counter);
    await host.add().promise().catch(() => {});
    assert.equal(server.stats.exports, 1, "only the host is left");
    rpc.release(host);
  } finally {
    client.close();
    server.close();
    served.cap.close();
  }
});

Deno.test("a promise that resolves to the caller's own object keeps call order (Resolve + Disembargo)", async () => {
  const served = promisingHost();
  const [a, b] = rpc.memoryPipe();
  const metrics = new rpc.RpcMetrics();
  const server = new rpc.RpcConnection(b, { bootstrap: served.cap, metrics });
  const client = new rpc.RpcConnection(a, { metrics });
  try {
    const host = rpc.bootstrap(client, TestHost);
    const mine = new Counter.Client(serveCounter(0));
    const bounced = (await host.bounce((p) => p.counter = mine).promise())
      .counter;
    const values: number[] = [];
    const calls: Promise<void>[] = [];
    const call = () =>
      calls.push(
        bounced.increment((p) => p.by = 1).promise().then((r) => {
          values.push(r.value);
        }),
      );
    for (let i = 0; i < 5; i++) call();
    await host.add().promise().catch(() => {});
    served.settleAll();
    for (let i = 0; i < 30; i++) {
      call();
      if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
    }
    await Promise.all(calls);
    assert.deepEqual(values, Array.from({ length: 35 }, (_, i) => i + 1));
    assert.ok(metrics.embargoes >= 1, "the client embargoed its own object");
    rpc.release(bounced);
    rpc.release(mine);
    rpc.release(host);
  } finally {
    client.close();
    server.close();
    served.cap.close();
  }
});

Deno.test("a peer passing more capabilities than the table holds is aborted", async () => {
  const t = pair({ server: { limits: { maxCapabilities: 3 } } });
  try {
    const caps = Array.from(
      { length: 5 },
      () => new Counter.Client(serveCounter(0)),
    );
    for (const counter of caps) {
      await t.host.holdCounter((p) => p.counter = counter).promise().catch(
        () => {},
      );
    }
    const reason = await t.server.closed;
    assert.match(reason.message, /capability table is full/);
    assert.ok(t.metrics.badMessages >= 1);
    for (const counter of caps) rpc.release(counter);
  } finally {
    t.close();
  }
});

Deno.test("an import dropped without close is released once collected", async () => {
  const script = new URL("./testdata/gc_release.ts", import.meta.url).pathname;
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--v8-flags=--expose-gc", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, stderr);
  assert.equal(
    new TextDecoder().decode(output.stdout).trim(),
    "before 3 after 0",
  );
});
