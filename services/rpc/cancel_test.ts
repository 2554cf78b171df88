// Cancellation: a caller that drops a call before its Return sends Finish
// at once, and the server (or the vat a middle vat forwarded the call to)
// sees its signal abort.
import assert from "node:assert/strict";
import * as rpcSchema from "../../proto/gen/capnp/rpc.ts";
import { TreeHost } from "../../proto/gen/rpc_test.ts";
import * as rpc from "./mod.ts";
import { readMessage } from "./_message.ts";
import { frameLength } from "./framing.ts";

/** What crossed a transport, in order: "sent Finish 0 release", ... */
function tapped(inner: rpc.MessageConnection, log: string[]) {
  const record = (direction: string, bytes: Uint8Array) => {
    for (let at = 0; at < bytes.length;) {
      const length = frameLength(bytes.subarray(at));
      const root = readMessage(bytes.subarray(at, at + length)).getRoot(
        rpcSchema.Message,
      );
      if (root._isFinish) {
        const release = root.finish.releaseResultCaps ? " release" : "";
        log.push(`${direction} Finish ${root.finish.questionId}${release}`);
      } else if (root._isReturn) {
        log.push(`${direction} Return ${root.return.answerId}`);
      } else if (root._isCall) {
        log.push(`${direction} Call ${root.call.questionId}`);
      }
      at += length;
    }
  };
  return {
    peerVatId: inner.peerVatId,
    send(bytes: Uint8Array) {
      record("sent", bytes);
      inner.send(bytes);
    },
    async receive() {
      const bytes = await inner.receive();
      if (bytes !== null) record("received", bytes);
      return bytes;
    },
    close: () => inner.close(),
  } as rpc.MessageConnection;
}

/** Waits (without a deadline: the test runner's own applies) until
 * `done()` holds, letting the connections run meanwhile. */
async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((resolve) => setTimeout(resolve, 1));
}

/** A TreeHost whose `wait` ends only through its signal, or when
 * `release` is called if `ignoreSignal` is set; counts aborts. */
function waitingHost(ignoreSignal = false) {
  const state = {
    aborts: 0,
    started: 0,
    release: () => {},
    returnedClosed: 0,
  };
  const cap = rpc.serve(TreeHost, {
    swap() {},
    wait(_params, results, { signal }) {
      state.started++;
      return new Promise<void>((resolve, reject) => {
        signal.addEventListener("abort", () => {
          state.aborts++;
          if (!ignoreSignal) reject(signal.reason);
        });
        state.release = () => {
          results.host = new TreeHost.Client(
            rpc.serve(TreeHost, {}, () => state.returnedClosed++),
          );
          resolve();
        };
      });
    },
  });
  return { state, cap };
}

Deno.test("a canceled call sends Finish at once and the server's signal aborts", async () => {
  const { state, cap } = waitingHost();
  const log: string[] = [];
  const [a, b] = rpc.memoryPipe();
  const server = new rpc.RpcConnection(b, { bootstrap: cap });
  const client = new rpc.RpcConnection(tapped(a, log));
  const host = rpc.bootstrap(client, TreeHost);
  try {
    await host.swap().promise();
    log.length = 0;
    const pending = host.wait();
    await until(() => server.stats.answers > 0);
    rpc.cancel(pending);
    await assert.rejects(pending.promise(), /canceled/);
    await until(() => client.stats.questions === 0);
    assert.equal(state.aborts, 1);
    // Finishes of earlier calls (whose IDs are reused) may go out too;
    // from its Call on, this call's own messages come in this order.
    const call = log.findLastIndex((line) => line.startsWith("sent Call"));
    const id = log[call].split(" ")[2];
    const own = log.slice(call).filter((line) => line.split(" ")[2] === id);
    assert.deepEqual(own, [
      `sent Call ${id}`,
      `sent Finish ${id} release`,
      `received Return ${id}`,
    ]);
    assert.equal(server.stats.answers, 0);
    // The connection goes on as before.
    await host.swap().promise();
  } finally {
    rpc.release(host);
    client.close();
    server.close();
    cap.close();
  }
});

Deno.test("a call canceled at a middle vat is canceled at the far vat", async () => {
  const { state, cap } = waitingHost();
  const [aSide, bFromA] = rpc.memoryPipe();
  const [bToC, cSide] = rpc.memoryPipe();
  const c = new rpc.RpcConnection(cSide, { bootstrap: cap });
  const bc = new rpc.RpcConnection(bToC);
  const fromC = rpc.bootstrap(bc, TreeHost);
  const ba = new rpc.RpcConnection(bFromA, { bootstrap: rpc.capOf(fromC) });
  const a = new rpc.RpcConnection(aSide);
  const host = rpc.bootstrap(a, TreeHost);
  try {
    await host.swap().promise();
    const pending = host.wait();
    await until(() => c.stats.answers > 0);
    rpc.cancel(pending);
    await assert.rejects(pending.promise(), /canceled/);
    await until(() => state.aborts === 1 && c.stats.answers === 0);
    await until(() => bc.stats.questions === 0 && a.stats.questions === 0);
  } finally {
    rpc.release(host);
    rpc.release(fromC);
    for (const connection of [a, ba, bc, c]) connection.close();
    cap.close();
  }
});

Deno.test("capabilities returned after a cancel are released by their server", async () => {
  const { state, cap } = waitingHost(true);
  const [a, b] = rpc.memoryPipe();
  const server = new rpc.RpcConnection(b, { bootstrap: cap });
  const client = new rpc.RpcConnection(a);
  const host = rpc.bootstrap(client, TreeHost);
  try {
    await host.swap().promise();
    const importsBefore = client.stats.imports;
    const pending = host.wait();
    await until(() => server.stats.answers > 0);
    rpc.cancel(pending);
    await assert.rejects(pending.promise(), /canceled/);
    // The server finishes anyway and returns a capability: the caller
    // never imports it, and the server drops it as Finish asked.
    await until(() => state.aborts === 1);
    state.release();
    await until(() => state.returnedClosed === 1);
    await until(() => client.stats.questions === 0);
    assert.equal(client.stats.imports, importsBefore);
    assert.equal(server.stats.answers, 0);
  } finally {
    rpc.release(host);
    client.close();
    server.close();
    cap.close();
  }
});

Deno.test("cancel after the Return changes nothing", async () => {
  const { state, cap } = waitingHost();
  const [a, b] = rpc.memoryPipe();
  const server = new rpc.RpcConnection(b, { bootstrap: cap });
  const client = new rpc.RpcConnection(a);
  const host = rpc.bootstrap(client, TreeHost);
  try {
    const pending = host.wait();
    await until(() => server.stats.answers > 0);
    state.release();
    const results = await pending.promise();
    rpc.cancel(pending);
    assert.equal(state.aborts, 0);
    const returned = results.host;
    rpc.release(returned);
    await until(() => state.returnedClosed === 1);
  } finally {
    rpc.release(host);
    client.close();
    server.close();
    cap.close();
  }
});

Deno.test("a local call's server sees the cancel too", async () => {
  const { state, cap } = waitingHost();
  const host = new TreeHost.Client(cap.addRef());
  try {
    const pending = host.wait();
    await until(() => state.started === 1);
    rpc.cancel(pending);
    await assert.rejects(pending.promise(), /canceled/);
    assert.equal(state.aborts, 1);
  } finally {
    rpc.release(host);
    cap.close();
  }
});
