// Calls and results forwarded through a middle vat arrive unchanged.
//
// Three vats joined by memory pipes: C serves a TreeHost, B bootstraps it
// from C and offers it as its own bootstrap, A calls through B. B copies
// each call's params into its call to C and C's results into its Return
// to A. The pipes into B can re-encode the swap's Call and Return as
// multi-segment messages (built by capnp-es with far pointers, as another
// implementation may send them), so the copy also reads those.
import assert from "node:assert/strict";
import * as $ from "capnp-es";
import fc from "fast-check";
import * as rpcSchema from "../../proto/gen/capnp/rpc.ts";
import { WebSession } from "../../proto/gen/sandstorm/web-session.ts";
import {
  Counter,
  TestHost,
  TestTree,
  TreeHost,
  TreeHost_Swap$Params,
  TreeHost_Swap$Results,
} from "../../proto/gen/rpc_test.ts";
import * as rpc from "./mod.ts";
import { copyPointer } from "./_copy.ts";
import { serveCounter, serveTestHost } from "./testdata/test_host.ts";
import { readMessage, serialize } from "./_message.ts";

/** A TestTree as plain values. */
interface Tree {
  number: bigint;
  flag: boolean;
  ratio: number;
  text: string;
  data: Uint8Array;
  texts: string[];
  numbers: number[];
  flags: boolean[];
  children: Tree[];
  child: Tree | null;
}

function readTree(tree: TestTree): Tree {
  return {
    number: tree.number,
    flag: tree.flag,
    ratio: tree.ratio,
    text: tree.text,
    data: tree._hasData()
      ? new Uint8Array(tree.data.toUint8Array())
      : new Uint8Array(0),
    texts: tree.texts.toArray(),
    numbers: tree.numbers.toArray(),
    flags: tree.flags.toArray(),
    children: tree.children.toArray().map(readTree),
    child: tree._hasChild() ? readTree(tree.child) : null,
  };
}

function writeTree(tree: TestTree, value: Tree): void {
  tree.number = value.number;
  tree.flag = value.flag;
  tree.ratio = value.ratio;
  tree.text = value.text;
  tree._initData(value.data.length).copyBuffer(value.data);
  const texts = tree._initTexts(value.texts.length);
  value.texts.forEach((text, i) => texts.set(i, text));
  const numbers = tree._initNumbers(value.numbers.length);
  value.numbers.forEach((number, i) => numbers.set(i, number));
  const flags = tree._initFlags(value.flags.length);
  value.flags.forEach((flag, i) => flags.set(i, flag));
  const children = tree._initChildren(value.children.length);
  value.children.forEach((child, i) => writeTree(children.get(i), child));
  if (value.child !== null) writeTree(tree._initChild(), value.child);
}

const EMPTY: Tree = {
  number: 0n,
  flag: false,
  ratio: 0,
  text: "",
  data: new Uint8Array(0),
  texts: [],
  numbers: [],
  flags: [],
  children: [],
  child: null,
};

/** A capnp-es message whose arena starts with a one-word segment, so the
 * root and everything after it sit in later segments behind far pointers
 * (capnp-es opens a new 4 KiB segment whenever one fills). */
function multiSegmentMessage(): $.Message {
  const sample = new $.Message(
    new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    false,
  );
  const Arena = (sample._capnp.arena as object).constructor as new (
    buffers: ArrayBuffer[],
  ) => $.Message["_capnp"]["arena"];
  return new $.Message(new Arena([new ArrayBuffer(8)]));
}

/**
 * Rebuilds a swap Call or Return as a multi-segment message: every field
 * the engine reads, with the tree written afresh through the generated
 * setters. Other messages pass unchanged. Counts the segments it made.
 */
function resegment(bytes: Uint8Array, segments: number[]): Uint8Array {
  const source = readMessage(bytes).getRoot(rpcSchema.Message);
  const out = multiSegmentMessage();
  const root = out.initRoot(rpcSchema.Message);
  if (
    source._isCall && source.call.interfaceId === TreeHost.Client.interfaceId
  ) {
    const call = source.call;
    assert.equal(call.params.capTable.length, 0);
    const copy = root._initCall();
    copy.questionId = call.questionId;
    copy.interfaceId = call.interfaceId;
    copy.methodId = call.methodId;
    const target = copy._initTarget();
    if (call.target._isImportedCap) {
      target.importedCap = call.target.importedCap;
    } else {
      const promised = call.target.promisedAnswer;
      const to = target._initPromisedAnswer();
      to.questionId = promised.questionId;
      const ops = to._initTransform(promised.transform.length);
      promised.transform.forEach((op, i) => {
        if (op._isGetPointerField) {
          ops.get(i).getPointerField = op.getPointerField;
        } else ops.get(i).noop = true;
      });
    }
    const params = $.utils.getAs(TreeHost_Swap$Params, call.params.content);
    writeTree(
      placeStruct(TreeHost_Swap$Params, copy._initParams())._initTree(),
      readTree(params.tree),
    );
  } else if (
    source._isReturn && source.return._isResults &&
    source.return.results.capTable.length === 0 &&
    source.return.results._hasContent()
  ) {
    const ret = source.return;
    const copy = root._initReturn();
    copy.answerId = ret.answerId;
    copy.releaseParamCaps = ret.releaseParamCaps;
    const results = $.utils.getAs(TreeHost_Swap$Results, ret.results.content);
    if (!results._hasTree()) return bytes;
    writeTree(
      placeStruct(TreeHost_Swap$Results, copy._initResults())._initTree(),
      readTree(results.tree),
    );
  } else {
    return bytes;
  }
  segments.push(out._capnp.segments.length);
  return serialize(out);
}

function placeStruct<T extends $.Struct>(
  Class: $.StructCtor<T>,
  payload: rpcSchema.Payload,
): T {
  const content = payload.content;
  const struct = new Class(content.segment, content.byteOffset);
  $.utils.initStruct(Class._capnp.size, struct);
  return struct;
}

/** Wraps a transport so what it sends is re-encoded by `resegment`. */
function resegmenting(
  inner: rpc.MessageConnection,
  segments: number[],
): rpc.MessageConnection {
  return {
    peerVatId: inner.peerVatId,
    send: (bytes) => inner.send(resegment(bytes, segments)),
    receive: () => inner.receive(),
    close: () => inner.close(),
  } as rpc.MessageConnection;
}

/** A, B and C; C answers each swap with `reply()` and records the tree. */
function threeVats(multiSegment: boolean) {
  const received: Tree[] = [];
  let reply: Tree = EMPTY;
  const host = rpc.serve(TreeHost, {
    swap(params, results) {
      received.push(readTree(params.tree));
      writeTree(results._initTree(), reply);
    },
  });
  const segments: number[] = [];
  const wrap = (t: rpc.MessageConnection) =>
    multiSegment ? resegmenting(t, segments) : t;
  const [aSide, bFromA] = rpc.memoryPipe();
  const [bToC, cSide] = rpc.memoryPipe();
  const c = new rpc.RpcConnection(wrap(cSide), { bootstrap: host });
  const bc = new rpc.RpcConnection(bToC);
  const fromC = rpc.bootstrap(bc, TreeHost);
  const ba = new rpc.RpcConnection(bFromA, { bootstrap: rpc.capOf(fromC) });
  const a = new rpc.RpcConnection(wrap(aSide));
  const remote = rpc.bootstrap(a, TreeHost);
  return {
    received,
    segments,
    setReply: (tree: Tree) => reply = tree,
    swap: async (tree: Tree) => {
      const results = await remote.swap((p) => writeTree(p._initTree(), tree))
        .promise();
      return readTree(results.tree);
    },
    close: () => {
      rpc.release(remote);
      rpc.release(fromC);
      for (const connection of [a, ba, bc, c]) connection.close();
      host.close();
    },
  };
}

function tree(overrides: Partial<Tree>): Tree {
  return { ...EMPTY, ...overrides };
}

Deno.test("a list of 8 texts reaches the far vat through a middle vat", async () => {
  const vats = threeVats(false);
  try {
    const sent = tree({
      texts: Array.from({ length: 8 }, (_, i) => `entry-${i}-abcd`),
      text: "x".repeat(45),
    });
    vats.setReply(sent);
    assert.deepEqual(await vats.swap(sent), sent);
    assert.deepEqual(vats.received, [sent]);
  } finally {
    vats.close();
  }
});

Deno.test("a list of structs with data and texts is forwarded intact", async () => {
  // The case capnp-es's copyFrom broke: a struct list's pointers were
  // followed at their old offsets inside the new message.
  const vats = threeVats(false);
  try {
    const children = Array.from({ length: 8 }, (_, i) =>
      tree({
        number: BigInt(i) * 1000n + 7n,
        ratio: 0.5 * i,
        text: `text/html;level=${i}`.repeat(3),
        texts: ["a", "bb", "ccc"],
      }));
    const sent = tree({ children });
    const reply = tree({ children: children.slice().reverse() });
    vats.setReply(reply);
    assert.deepEqual(await vats.swap(sent), reply);
    assert.deepEqual(vats.received, [sent]);
  } finally {
    vats.close();
  }
});

Deno.test("a WebSession.get with a long Accept list is forwarded", async () => {
  // The reporter's case: Chromium's Accept header as the context's list.
  const seen: string[][] = [];
  const session = rpc.serve(WebSession, {
    get(params, results) {
      seen.push(
        params.context.accept.toArray().map((a) =>
          `${a.mimeType};q=${a.qValue}`
        ),
      );
      results._initContent().statusCode = 0;
    },
  });
  const [aSide, bFromA] = rpc.memoryPipe();
  const [bToC, cSide] = rpc.memoryPipe();
  const c = new rpc.RpcConnection(cSide, { bootstrap: session });
  const bc = new rpc.RpcConnection(bToC);
  const fromC = rpc.bootstrap(bc, WebSession);
  const ba = new rpc.RpcConnection(bFromA, { bootstrap: rpc.capOf(fromC) });
  const a = new rpc.RpcConnection(aSide);
  const remote = rpc.bootstrap(a, WebSession);
  try {
    const types = [
      "text/html",
      "application/xhtml+xml",
      "application/xml",
      "image/avif",
      "image/webp",
      "image/apng",
      "*/*",
      "application/signed-exchange",
    ];
    await remote.get((p) => {
      p.path = "index.html";
      const accept = p._initContext()._initAccept(types.length);
      types.forEach((type, i) => {
        accept.get(i).mimeType = type;
        accept.get(i).qValue = i % 2 === 0 ? 1 : 0.5;
      });
    }).promise();
    assert.deepEqual(seen, [
      types.map((type, i) => `${type};q=${i % 2 === 0 ? 1 : 0.5}`),
    ]);
  } finally {
    rpc.release(remote);
    rpc.release(fromC);
    for (const connection of [a, ba, bc, c]) connection.close();
    session.close();
  }
});

const text = fc.oneof(
  { arbitrary: fc.string({ maxLength: 20 }), weight: 4 },
  { arbitrary: fc.string({ minLength: 30, maxLength: 2000 }), weight: 1 },
);
const leaf = {
  number: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  flag: fc.boolean(),
  ratio: fc.float({ noNaN: true }),
  text,
  data: fc.oneof(
    { arbitrary: fc.uint8Array({ maxLength: 40 }), weight: 4 },
    {
      arbitrary: fc.uint8Array({ minLength: 1000, maxLength: 9000 }),
      weight: 1,
    },
  ),
  texts: fc.array(text, { maxLength: 24 }),
  numbers: fc.array(fc.integer({ min: -32768, max: 32767 }), {
    maxLength: 50,
  }),
  flags: fc.array(fc.boolean(), { maxLength: 70 }),
};
function treeOfDepth(depth: number): fc.Arbitrary<Tree> {
  if (depth === 0) {
    return fc.record({
      ...leaf,
      children: fc.constant([]),
      child: fc.constant(null),
    }, { noNullPrototype: true });
  }
  const below = treeOfDepth(depth - 1);
  return fc.record({
    ...leaf,
    children: fc.array(below, { maxLength: 3 }),
    child: fc.option(below, { nil: null }),
  }, { noNullPrototype: true });
}
const arbitraryTree = treeOfDepth(3);
const trees = fc.record({ sent: arbitraryTree, reply: arbitraryTree }, {
  noNullPrototype: true,
});

for (const multiSegment of [false, true]) {
  const kind = multiSegment ? "multi-segment" : "single-segment";
  Deno.test(`random ${kind} params and results are forwarded intact`, async () => {
    const vats = threeVats(multiSegment);
    try {
      await fc.assert(
        fc.asyncProperty(trees, async ({ sent, reply }) => {
          vats.received.length = 0;
          vats.setReply(reply);
          assert.deepEqual(await vats.swap(sent), reply);
          assert.deepEqual(vats.received, [sent]);
        }),
        { numRuns: 60, seed: multiSegment ? 3 : 2 },
      );
      if (multiSegment) {
        assert.ok(Math.max(...vats.segments) >= 3, `${vats.segments}`);
      }
    } finally {
      vats.close();
    }
  });
}

Deno.test("the copy refuses out-of-bounds and too deep pointers", () => {
  const nested = new $.Message();
  let node = nested.initRoot(TestTree);
  for (let i = 0; i < 70; i++) node = node._initChild();
  const target = () => new $.Pointer(new $.Message().getSegment(0), 0);
  assert.throws(
    () => copyPointer(new $.Pointer(nested.getSegment(0), 0), target()),
    rpc.RpcProtocolError,
  );

  // A root struct pointer whose offset runs past its segment.
  const bytes = new Uint8Array(24);
  bytes.set([0, 0, 0, 0, 2, 0, 0, 0]);
  new DataView(bytes.buffer).setUint32(8, 40 << 2, true);
  new DataView(bytes.buffer).setUint32(12, 1, true);
  const bad = readMessage(bytes);
  assert.throws(
    () => copyPointer(new $.Pointer(bad.getSegment(0), 0), target()),
    rpc.RpcProtocolError,
  );
});

Deno.test("the copy limits words read through shared pointers", () => {
  // 2000 list elements all pointing at one 1000-word data blob: fine to
  // read, but a copy would write 2000 blobs.
  const words = 2 + 2000 + 1000;
  const bytes = new Uint8Array(8 + words * 8);
  const view = new DataView(bytes.buffer);
  view.setUint32(4, words, true);
  // Root: a list of 2000 pointers right after it.
  view.setUint32(8, 1, true);
  view.setUint32(12, 6 | (2000 << 3), true);
  for (let i = 0; i < 2000; i++) {
    const at = 16 + i * 8;
    const offsetWords = 2000 - i - 1;
    view.setUint32(at, (offsetWords << 2) | 1, true);
    view.setUint32(at + 4, 2 | (8000 << 3), true);
  }
  const hostile = readMessage(bytes);
  assert.throws(
    () =>
      copyPointer(
        new $.Pointer(hostile.getSegment(0), 0),
        new $.Pointer(new $.Message().getSegment(0), 0),
        100_000,
      ),
    /more words than its limit/,
  );
});

Deno.test("the copy follows single and double far pointers", () => {
  // Segment 0: a double-far root. Segment 1: a landing pad (far to
  // segment 2) and the root's tag. Segment 2: a struct with one data
  // word and a single-far pointer into segment 3, whose pad points at a
  // 5-byte text right behind it.
  const seg0 = [[2 | 4 | (0 << 3), 1]];
  const seg1 = [[2 | (0 << 3), 2], [0, 1 | (1 << 16)]];
  const seg2 = [[0x01020304, 0x05060708], [2 | (0 << 3), 3]];
  const seg3 = [[1, 2 | (6 << 3)], [0x6c6c6568, 0x6f]];
  const segmentsWords = [seg0, seg1, seg2, seg3];
  const header = (4 + 4 * segmentsWords.length + 7) & ~7;
  const total = header +
    segmentsWords.reduce((sum, s) => sum + s.length * 8, 0);
  const bytes = new Uint8Array(total);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, segmentsWords.length - 1, true);
  let at = header;
  segmentsWords.forEach((segment, i) => {
    view.setUint32(4 + 4 * i, segment.length, true);
    for (const [low, high] of segment) {
      view.setUint32(at, low, true);
      view.setUint32(at + 4, high, true);
      at += 8;
    }
  });
  const source = readMessage(bytes);
  const out = new $.Message();
  copyPointer(
    new $.Pointer(source.getSegment(0), 0),
    new $.Pointer(out.getSegment(0), 0),
  );
  const root = readMessage(serialize(out)).getRoot(NumberAndText);
  assert.equal(root.number, 0x0506070801020304n);
  assert.equal(root.text, "hello");
});

/** The layout of the hand-made message above: one data word, one text. */
class NumberAndText extends $.Struct {
  static readonly _capnp = {
    displayName: "NumberAndText",
    id: "0",
    size: new $.ObjectSize(8, 1),
  };
  get number(): bigint {
    return $.utils.getUint64(0, this);
  }
  get text(): string {
    return $.utils.getText(0, this);
  }
}

Deno.test("calls on the caller's own capability bounced through a middle vat keep their order", async () => {
  // A's counter goes to C through B and comes back in C's results; calls
  // A pipelines on it loop A -> B -> C -> B -> A until the embargoes lift.
  // B's own embargo toward C must lift before it echoes A's Disembargo.
  const state = serveTestHost();
  const [aSide, bFromA] = rpc.memoryPipe();
  const [bToC, cSide] = rpc.memoryPipe();
  const c = new rpc.RpcConnection(cSide, { bootstrap: state.cap });
  const bc = new rpc.RpcConnection(bToC);
  const fromC = rpc.bootstrap(bc, TestHost);
  const ba = new rpc.RpcConnection(bFromA, { bootstrap: rpc.capOf(fromC) });
  const a = new rpc.RpcConnection(aSide);
  const host = rpc.bootstrap(a, TestHost);
  const own = new Counter.Client(serveCounter(0));
  try {
    // How the hops interleave depends on how many calls are in flight;
    // five was the count that broke B's Disembargo echo.
    for (const count of [1, 5, 20]) {
      const counter = new Counter.Client(serveCounter(0));
      const bounced = host.bounce((p) => p.counter = counter).getCounter();
      const values = await Promise.all(
        Array.from(
          { length: count },
          () => bounced.increment((p) => p.by = 1).promise(),
        ),
      );
      assert.deepEqual(
        values.map((v) => v.value),
        Array.from({ length: count }, (_, i) => i + 1),
      );
      rpc.release(bounced);
      rpc.release(counter);
    }

    const promised = (await host.promisedBounce((p) => p.counter = own)
      .promise()).counter;
    const order: Promise<number>[] = [];
    const increment = () =>
      order.push(
        promised.increment((p) => p.by = 1).promise().then((r) => r.value),
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
    rpc.release(promised);
    assert.equal(
      await Promise.race([ba.closed, Promise.resolve("open")]),
      "open",
    );
  } finally {
    rpc.release(own);
    rpc.release(host);
    rpc.release(fromC);
    for (const connection of [a, ba, bc, c]) connection.close();
    state.cap.close();
  }
});
