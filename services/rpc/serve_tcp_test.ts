import assert from "node:assert/strict";
import { Counter } from "../../proto/gen/rpc_test.ts";
import * as rpc from "./mod.ts";
import { serveCounter } from "./testdata/test_host.ts";

async function connectCounter(port: number) {
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port }),
  );
  return { connection, counter: rpc.bootstrap(connection, Counter) };
}

Deno.test("serveTcp gives one capability to every connection and leaves the caller's reference alone", async () => {
  let released = false;
  const cap = serveCounter(0, () => released = true);
  const before = cap.refCount;
  const server = rpc.serveTcp(cap, { hostname: "127.0.0.1", port: 0 });
  try {
    const a = await connectCounter(server.port);
    const b = await connectCounter(server.port);
    assert.equal(
      (await a.counter.increment((p) => p.by = 2).promise()).value,
      2,
    );
    a.connection.close();
    await a.connection.closed;
    // The first peer leaving must not take the capability from the second.
    assert.equal(
      (await b.counter.increment((p) => p.by = 3).promise()).value,
      5,
    );
    b.connection.close();
    await b.connection.closed;
  } finally {
    server.close();
  }
  // Connections close asynchronously on the server side too.
  for (let i = 0; i < 100 && cap.refCount !== before; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(cap.refCount, before);
  assert.equal(released, false);
  cap.close();
  assert.equal(released, true);
});
