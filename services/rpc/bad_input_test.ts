/**
 * Bad input from a peer: garbage, truncated and oversized frames, and
 * well-formed messages that break the protocol. Each is answered with an
 * Abort or an error, counted in metrics, and never takes the vat down or
 * disturbs its other connections. The frame reader and message decoder
 * are fuzzed with fast-check on a fixed budget and seed.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import * as $ from "capnp-es";
import * as wire from "../../proto/gen/capnp/rpc.ts";
import { TestHost } from "../../proto/gen/rpc_test.ts";
import * as rpc from "./mod.ts";
import { serveTestHost } from "./testdata/test_host.ts";

const FUZZ_RUNS = 1000;
const FUZZ_SEED = 0x5eed;

/** An engine with a TestHost bootstrap, and a raw peer to send bytes. */
function rawPeer(limits?: Partial<rpc.ConnectionLimits>) {
  const state = serveTestHost();
  const metrics = new rpc.RpcMetrics();
  const [raw, b] = rpc.memoryPipe();
  const engine = new rpc.RpcConnection(b, {
    bootstrap: state.cap,
    metrics,
    limits,
  });
  return {
    raw,
    engine,
    metrics,
    state,
    send(build: (message: wire.Message) => void) {
      const message = new $.Message();
      build(message.initRoot(wire.Message));
      raw.send(new Uint8Array(message.toArrayBuffer()));
    },
    /** The next message from the engine, decoded. */
    async next(): Promise<wire.Message | null> {
      const bytes = await raw.receive();
      if (bytes === null) return null;
      return new $.Message(bytes, false).getRoot(wire.Message);
    },
    close() {
      raw.close();
      engine.close();
      state.cap.close();
    },
  };
}

async function expectAbort(
  peer: ReturnType<typeof rawPeer>,
  pattern: RegExp,
): Promise<void> {
  for (;;) {
    const message = await peer.next();
    assert.notEqual(message, null, "connection closed without Abort");
    if (message!.which() === wire.Message.ABORT) {
      assert.match(message!.abort.reason, pattern);
      break;
    }
  }
  const reason = await peer.engine.closed;
  assert.ok(reason instanceof rpc.RpcError);
  assert.ok(peer.metrics.badMessages >= 1);
  assert.equal(peer.metrics.abortsSent, 1);
}

Deno.test("a Return for an unknown question is answered with Abort", async () => {
  const peer = rawPeer();
  try {
    peer.send((m) => {
      const ret = m._initReturn();
      ret.answerId = 1234;
      ret._initResults();
    });
    await expectAbort(peer, /question 1234/);
  } finally {
    peer.close();
  }
});

Deno.test("a call to an export that does not exist is answered with Abort", async () => {
  const peer = rawPeer();
  try {
    peer.send((m) => {
      const call = m._initCall();
      call.questionId = 0;
      call._initTarget().importedCap = 77;
      call.interfaceId = 1n;
      call._initParams();
    });
    await expectAbort(peer, /export ID 77/);
  } finally {
    peer.close();
  }
});

Deno.test("a capability index past the cap table is answered with Abort", async () => {
  const peer = rawPeer();
  try {
    peer.send((m) => {
      const call = m._initCall();
      call.questionId = 0;
      call._initTarget().importedCap = 0;
      const params = call._initParams();
      params._initCapTable(1).get(0).receiverHosted = 999;
    });
    await expectAbort(peer, /export ID (0|999)/);
  } finally {
    peer.close();
  }
});

Deno.test("Finish, Release and Disembargo naming nothing are answered with Abort", async () => {
  const cases: [(m: wire.Message) => void, RegExp][] = [
    [(m) => m._initFinish().questionId = 5, /Finish for question 5/],
    [(m) => {
      const release = m._initRelease();
      release.id = 3;
      release.referenceCount = 1;
    }, /unknown export ID 3/],
    [(m) => {
      const disembargo = m._initDisembargo();
      disembargo._initTarget().importedCap = 0;
      disembargo._initContext().receiverLoopback = 42;
    }, /unknown embargo 42/],
  ];
  for (const [build, pattern] of cases) {
    const peer = rawPeer();
    try {
      peer.send(build);
      await expectAbort(peer, pattern);
    } finally {
      peer.close();
    }
  }
});

Deno.test("a call of the wrong interface gets an unimplemented exception, not an abort", async () => {
  const peer = rawPeer();
  try {
    peer.send((m) => m._initBootstrap().questionId = 0);
    peer.send((m) => {
      const call = m._initCall();
      call.questionId = 1;
      const target = call._initTarget()._initPromisedAnswer();
      target.questionId = 0;
      call.interfaceId = 0x1234n;
      call.methodId = 0;
      call._initParams();
    });
    let reply: wire.Message | null;
    do {
      reply = await peer.next();
    } while (
      reply !== null &&
      !(reply.which() === wire.Message.RETURN && reply.return.answerId === 1)
    );
    assert.ok(reply !== null);
    assert.equal(reply.return.which(), wire.Return.EXCEPTION);
    assert.equal(
      reply.return.exception.type,
      wire.Exception_Type.UNIMPLEMENTED,
    );
    assert.equal(peer.engine.error, undefined, "the connection lives on");
  } finally {
    peer.close();
  }
});

Deno.test("an unknown message kind is echoed as unimplemented", async () => {
  const peer = rawPeer();
  try {
    peer.send((m) => m._initProvide().questionId = 9);
    const reply = await peer.next();
    assert.equal(reply?.which(), wire.Message.UNIMPLEMENTED);
    assert.equal(reply?.unimplemented.which(), wire.Message.PROVIDE);
    assert.equal(peer.engine.error, undefined);
  } finally {
    peer.close();
  }
});

Deno.test("garbage, truncated and oversized frames over TCP end only that connection", async () => {
  const state = serveTestHost();
  const metrics = new rpc.RpcMetrics();
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 }, {
    maxMessageBytes: 1 << 16,
    metrics,
  });
  const served: rpc.RpcConnection[] = [];
  const accepting = (async () => {
    for (;;) {
      const transport = await listener.accept().catch(() => undefined);
      if (transport === undefined) return;
      served.push(
        new rpc.RpcConnection(transport, { bootstrap: state.cap, metrics }),
      );
    }
  })();
  const good = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port: listener.port }),
  );
  try {
    const host = rpc.bootstrap(good, TestHost);
    assert.equal((await host.add((p) => p.a = 1).promise()).sum, 1);
    const frames = [
      // Garbage: a header claiming 2^32 segments.
      new Uint8Array([0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]),
      // Oversized: one segment of 2^20 words (8 MiB) over a 64 KiB limit.
      new Uint8Array([0, 0, 0, 0, 0, 0, 0x10, 0]),
      // Truncated: promises 16 bytes of segment, sends 4, then closes.
      new Uint8Array([0, 0, 0, 0, 2, 0, 0, 0, 1, 2, 3, 4]),
      // A valid frame whose content is not an rpc Message.
      new Uint8Array([
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0xde,
        0xad,
        0xbe,
        0xef,
        1,
        2,
        3,
        4,
      ]),
    ];
    for (const frame of frames) {
      const conn = await Deno.connect({
        hostname: "127.0.0.1",
        port: listener.port,
      });
      await conn.write(frame);
      if (frame.length === 12) await conn.closeWrite();
      // Whatever comes back (an Abort), the server then closes.
      const buffer = new Uint8Array(4096);
      while ((await conn.read(buffer)) !== null) {
        // Drain until the server closes.
      }
      conn.close();
    }
    assert.ok(metrics.badFrames >= 3, `badFrames ${metrics.badFrames}`);
    assert.ok(metrics.badMessages >= 4, `badMessages ${metrics.badMessages}`);
    assert.ok(metrics.abortsSent >= 3);
    // The well-behaved connection never noticed.
    assert.equal((await host.add((p) => p.a = 2).promise()).sum, 2);
    rpc.release(host);
  } finally {
    good.close();
    listener.close();
    await accepting;
    for (const connection of served) connection.close();
    state.cap.close();
  }
});

Deno.test("fuzz: the frame reader only ever returns a length or throws FrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      try {
        const length = rpc.frameLength(bytes, 1 << 20);
        assert.ok(length === -1 || (length >= 8 && length % 8 === 0));
      } catch (error) {
        assert.ok(error instanceof rpc.FrameError, String(error));
      }
    }),
    { numRuns: FUZZ_RUNS * 10, seed: FUZZ_SEED },
  );
});

/** Feeds one message to a fresh engine; resolves once it was handled. */
async function feed(bytes: Uint8Array): Promise<rpc.RpcMetrics> {
  const peer = rawPeer({ maxMessageBytes: 1 << 16 });
  try {
    peer.raw.send(bytes);
    // A bootstrap after it: answered if the engine is still up, and the
    // engine's reply (or its Abort and close) shows it handled the input.
    peer.send((m) => m._initBootstrap().questionId = 4000);
    for (;;) {
      const reply = await peer.next();
      if (reply === null || reply.which() === wire.Message.ABORT) break;
      if (
        reply.which() === wire.Message.RETURN &&
        reply.return.answerId === 4000
      ) break;
    }
    return peer.metrics;
  } finally {
    peer.close();
  }
}

Deno.test("fuzz: random bytes as a message are refused without crashing", async () => {
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), async (bytes) => {
      const metrics = await feed(bytes);
      // Anything that is not a valid message is counted.
      assert.ok(metrics.messagesReceived >= 1);
    }),
    { numRuns: FUZZ_RUNS, seed: FUZZ_SEED },
  );
});

Deno.test("fuzz: valid frames with corrupted bodies never crash the engine", async () => {
  // Start from real messages and flip bytes in them: this reaches deeper
  // into the decoder than random bytes do.
  const samples: Uint8Array[] = [];
  const sample = (build: (m: wire.Message) => void) => {
    const message = new $.Message();
    build(message.initRoot(wire.Message));
    samples.push(new Uint8Array(message.toArrayBuffer()));
  };
  sample((m) => {
    const call = m._initCall();
    call.questionId = 1;
    call._initTarget().importedCap = 0;
    call.interfaceId = TestHost.Client.interfaceId;
    call.methodId = 0;
    const params = call._initParams();
    params._initCapTable(2).get(1).senderHosted = 4;
  });
  sample((m) => {
    const ret = m._initReturn();
    ret.answerId = 0;
    ret._initResults()._initCapTable(1).get(0).senderPromise = 2;
  });
  sample((m) => {
    const resolve = m._initResolve();
    resolve.promiseId = 1;
    resolve._initCap().receiverHosted = 0;
  });
  sample((m) => {
    const disembargo = m._initDisembargo();
    const target = disembargo._initTarget()._initPromisedAnswer();
    target.questionId = 0;
    target._initTransform(2).get(1).getPointerField = 3;
    disembargo._initContext().senderLoopback = 1;
  });
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: samples.length - 1 }),
      fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 6 }),
      async (which, flips) => {
        const bytes = samples[which].slice();
        for (const [position, value] of flips) {
          bytes[8 + position % (bytes.length - 8)] = value;
        }
        await feed(bytes);
      },
    ),
    { numRuns: FUZZ_RUNS, seed: FUZZ_SEED },
  );
});

Deno.test("an Abort from the peer ends the connection with its type", async () => {
  const peer = rawPeer();
  try {
    peer.send((m) => {
      const abort = m._initAbort();
      abort.reason = "shutting down";
      abort.type = wire.Exception_Type.DISCONNECTED;
    });
    const reason = await peer.engine.closed;
    assert.equal(reason.type, "disconnected");
    assert.ok(reason.remote);
    assert.match(reason.message, /shutting down/);
    assert.equal(peer.metrics.abortsReceived, 1);
  } finally {
    peer.close();
  }
});

Deno.test("a call the peer echoes as unimplemented fails as unimplemented", async () => {
  const state = serveTestHost();
  const [raw, b] = rpc.memoryPipe();
  const engine = new rpc.RpcConnection(b, { bootstrap: state.cap });
  try {
    const host = rpc.bootstrap(engine, TestHost);
    const pending = host.add().promise();
    // The raw peer reads the Bootstrap and the pipelined Call and echoes
    // both back as unimplemented, as a level 0 vat would.
    for (let i = 0; i < 2; i++) {
      const bytes = await raw.receive();
      const echo = new $.Message();
      echo.initRoot(wire.Message).unimplemented = new $.Message(bytes!, false)
        .getRoot(wire.Message);
      raw.send(new Uint8Array(echo.toArrayBuffer()));
    }
    await assert.rejects(
      pending,
      (error) =>
        error instanceof rpc.RpcError && error.type === "unimplemented",
    );
    assert.equal(engine.error, undefined, "the connection lives on");
  } finally {
    raw.close();
    engine.close();
    state.cap.close();
  }
});

Deno.test("a peer that never sends Finish is aborted at the answer limit", async () => {
  const peer = rawPeer({ maxAnswers: 8 });
  try {
    for (let id = 0; id < 9; id++) {
      peer.send((m) => m._initBootstrap().questionId = id);
    }
    await expectAbort(peer, /answers without Finish/);
  } finally {
    peer.close();
  }
});
