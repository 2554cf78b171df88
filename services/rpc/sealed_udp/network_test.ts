import assert from "node:assert/strict";
import fc from "fast-check";
import { type MessageConnection, TransportClosedError } from "../transport.ts";
import { VatIdentity } from "../vat_id.ts";
import {
  SealedUdpNetwork,
  type SealedUdpNetworkOptions,
  sealedUdpPermissions,
} from "./network.ts";
import {
  udpClose,
  udpLocalPort,
  udpOpen,
  udpSendBatch,
} from "../../../ffi/native.ts";
import { parseAddress } from "./directory.ts";
import { MAX_FRAGMENT_BYTES } from "./packet.ts";
import { Relay, waitFor } from "./_testing.ts";

/** Two networks on loopback that know each other's address. */
async function pair(
  options: Partial<SealedUdpNetworkOptions> = {},
): Promise<[SealedUdpNetwork, SealedUdpNetwork]> {
  const a = await SealedUdpNetwork.create({
    identity: VatIdentity.generate(),
    ...options,
  });
  const b = await SealedUdpNetwork.create({
    identity: VatIdentity.generate(),
    ...options,
  });
  a.directory.set(b.vatId, b.address);
  b.directory.set(a.vatId, a.address);
  return [a, b];
}

/** A message whose bytes encode its index and size, so any corruption,
 * loss, duplicate or reordering shows. */
function patterned(index: number, size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (index * 31 + i * 7) & 255;
  if (size >= 8) {
    const view = new DataView(bytes.buffer);
    view.setUint32(0, index);
    view.setUint32(4, size);
  }
  return bytes;
}

function checkPatterned(message: Uint8Array, index: number, size: number) {
  assert.equal(message.length, size, `message ${index} size`);
  assert.deepEqual(message, patterned(index, size), `message ${index} bytes`);
}

/** Raw sender for crafted datagrams. */
function rawSend(target: string, datagrams: Uint8Array[]): void {
  const fd = udpOpen(0x7f000001, 0);
  try {
    const { ip, port } = parseAddress(target);
    let total = 0;
    for (const d of datagrams) total += d.length;
    const buffer = new Uint8Array(total);
    const descriptors = new Uint32Array(datagrams.length * 4);
    let at = 0;
    datagrams.forEach((d, i) => {
      buffer.set(d, at);
      descriptors.set([at, d.length, ip, port], i * 4);
      at += d.length;
    });
    udpSendBatch(fd, buffer, descriptors, datagrams.length);
  } finally {
    udpClose(fd);
  }
}

Deno.test("delivers many messages of many sizes in order, exactly once, both ways", async () => {
  const [a, b] = await pair();
  try {
    const sizes = [
      0,
      1,
      7,
      100,
      MAX_FRAGMENT_BYTES - 1,
      MAX_FRAGMENT_BYTES,
      MAX_FRAGMENT_BYTES + 1,
      2500,
      9000,
      70_000,
      300_000,
    ];
    const count = 400;
    const sizeOf = (i: number) => sizes[i % sizes.length];
    const ab = a.connect(b.vatId);
    for (let i = 0; i < count; i++) ab.send(patterned(i, sizeOf(i)));
    const ba = await b.accept();
    assert.deepEqual(ba.peerVatId, a.vatId);
    for (let i = 0; i < count; i++) {
      const message = await ba.receive();
      assert.ok(message !== null);
      checkPatterned(message, i, sizeOf(i));
      ba.send(patterned(i + 1000, sizeOf(count - i)));
    }
    for (let i = 0; i < count; i++) {
      const message = await ab.receive();
      assert.ok(message !== null);
      checkPatterned(message, i + 1000, sizeOf(count - i));
    }
    assert.equal(b.connect(a.vatId), ba, "connect reuses the open connection");
    ab.close();
    assert.equal(await ba.receive(), null, "peer sees a clean close");
    assert.throws(() => ba.send(new Uint8Array(1)), TransportClosedError);
    assert.throws(() => ab.send(new Uint8Array(1)), TransportClosedError);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("the worker receiver delivers messages of many sizes in order, both ways", async () => {
  // The tests above receive on the event loop (they may bind with net
  // permission); a role without it receives on a worker thread.
  const [a, b] = await pair({ receiver: "worker" });
  try {
    const sizes = [0, 100, MAX_FRAGMENT_BYTES + 1, 70_000, 300_000];
    const count = 100;
    const sizeOf = (i: number) => sizes[i % sizes.length];
    const ab = a.connect(b.vatId);
    for (let i = 0; i < count; i++) ab.send(patterned(i, sizeOf(i)));
    const ba = await b.accept();
    for (let i = 0; i < count; i++) {
      const message = await ba.receive();
      assert.ok(message !== null);
      checkPatterned(message, i, sizeOf(i));
      ba.send(patterned(i + 1000, sizeOf(count - i)));
    }
    for (let i = 0; i < count; i++) {
      const message = await ab.receive();
      assert.ok(message !== null);
      checkPatterned(message, i + 1000, sizeOf(count - i));
    }
  } finally {
    await a.close();
    await b.close();
  }
});

function dropped(metrics: Record<string, number>): number {
  let sum = 0;
  for (const [name, value] of Object.entries(metrics)) {
    if (name.startsWith("dropped")) sum += value;
  }
  return sum;
}

/** A pair talking through a relay that can tamper with the traffic. */
async function relayedPair(options: Partial<SealedUdpNetworkOptions> = {}) {
  const [a, b] = await pair(options);
  const relay = new Relay(a.address, b.address);
  a.directory.set(b.vatId, relay.address);
  b.directory.set(a.vatId, relay.address);
  return { a, b, relay };
}

async function expectMessages(
  connection: MessageConnection,
  from: number,
  to: number,
  size = 300,
) {
  for (let i = from; i < to; i++) {
    const message = await connection.receive();
    assert.ok(message !== null, `message ${i} arrived`);
    checkPatterned(message, i, size);
  }
}

Deno.test("drops replayed packets, counts them, and the stream goes on", async () => {
  const { a, b, relay } = await relayedPair();
  try {
    const ab = a.connect(b.vatId);
    for (let i = 0; i < 50; i++) ab.send(patterned(i, 300));
    const ba = await b.accept();
    await expectMessages(ba, 0, 50);
    const captured = relay.seen.filter((s) => s.fromA).map((s) => s.datagram);
    assert.ok(captured.length > 0);
    const before = b.metrics().droppedReplayed;
    for (const datagram of captured) await relay.inject(datagram, true);
    await waitFor(
      "replays counted",
      () => b.metrics().droppedReplayed - before >= captured.length,
    );
    for (let i = 50; i < 60; i++) ab.send(patterned(i, 300));
    await expectMessages(ba, 50, 60);
    assert.equal(b.metrics().connectionsAccepted, 1, "no ghost connection");
  } finally {
    await a.close();
    await b.close();
    await relay.close();
  }
});

Deno.test("drops forged and altered packets without disturbing the connection", async () => {
  const { a, b, relay } = await relayedPair();
  const mallory = await SealedUdpNetwork.create({
    identity: VatIdentity.generate(),
  });
  try {
    const ab = a.connect(b.vatId);
    ab.send(patterned(0, 300));
    const ba = await b.accept();
    await expectMessages(ba, 0, 1);
    // Hold back A's next packet, so B has not seen its packet number.
    let genuine: Uint8Array | undefined;
    relay.filter = (datagram, fromA) => {
      if (!fromA || genuine !== undefined) return true;
      genuine = datagram;
      return false;
    };
    ab.send(patterned(1, 300));
    await waitFor("a held packet", () => genuine !== undefined);
    relay.filter = () => true;

    // Every single-byte change, in the header or the ciphertext, fails.
    const altered: Uint8Array[] = [];
    for (const at of [4, 12, 44, 52, 60, 68, 76, 80, genuine!.length - 1]) {
      const copy = genuine!.slice();
      copy[at] ^= 0x40;
      altered.push(copy);
    }
    const before = b.metrics();
    for (const datagram of altered) await relay.inject(datagram, true);

    // Mallory seals for B under her own key, then claims to be A.
    const capture = Deno.listenDatagram({
      transport: "udp",
      hostname: "127.0.0.1",
      port: 0,
    });
    try {
      const port = (capture.addr as Deno.NetAddr).port;
      mallory.directory.set(b.vatId, `127.0.0.1:${port}`);
      mallory.connect(b.vatId).send(patterned(99, 300));
      const [hers] = await capture.receive();
      hers.set(a.vatId, 12);
      await relay.inject(hers, true);
    } finally {
      capture.close();
    }

    await waitFor(
      "forgeries counted",
      () => dropped(b.metrics()) - dropped(before) >= altered.length + 1,
    );
    // Header changes B can see (recipient, stamp, packet number range) are
    // cheap drops; the boot ID, recipient boot and ciphertext fail the tag.
    assert.ok(b.metrics().droppedForged - before.droppedForged >= 4);
    await relay.inject(genuine!, true);
    for (let i = 2; i < 20; i++) ab.send(patterned(i, 300));
    await expectMessages(ba, 1, 20);
  } finally {
    await a.close();
    await b.close();
    await mallory.close();
    await relay.close();
  }
});

Deno.test("a packet sealed for vat A and sent to vat B is dropped", async () => {
  const [a, b] = await pair();
  const c = await SealedUdpNetwork.create({ identity: VatIdentity.generate() });
  const relay = new Relay(c.address, b.address);
  try {
    // C believes A lives at the relay, which hands everything to B.
    c.directory.set(a.vatId, relay.address);
    c.connect(a.vatId).send(patterned(1, 100));
    await waitFor(
      "misaddressed drop",
      () => b.metrics().droppedMisaddressed >= 1,
    );

    // Rewriting the recipient field to B breaks the seal instead.
    const sealedForA = relay.seen[0].datagram.slice();
    sealedForA.set(b.vatId.subarray(0, 8), 4);
    const forgedBefore = b.metrics().droppedForged;
    await relay.inject(sealedForA, true);
    await waitFor(
      "forged drop",
      () => b.metrics().droppedForged > forgedBefore,
    );
    assert.equal(b.metrics().connectionsAccepted, 0);
    assert.equal(b.metrics().messagesReceived, 0);

    // B still serves A.
    a.connect(b.vatId).send(patterned(2, 100));
    const ba = await b.accept();
    checkPatterned((await ba.receive())!, 2, 100);
  } finally {
    await a.close();
    await b.close();
    await c.close();
    await relay.close();
  }
});

Deno.test("drops garbage, truncated and oversized datagrams and counts them", async () => {
  const [a, b] = await pair();
  try {
    const ab = a.connect(b.vatId);
    ab.send(patterned(0, 100));
    const ba = await b.accept();
    await expectMessages(ba, 0, 1, 100);
    const garbage = crypto.getRandomValues(new Uint8Array(500));
    garbage[0] = 1;
    garbage.fill(0, 1, 4);
    const wrongVersion = crypto.getRandomValues(new Uint8Array(200));
    wrongVersion[0] = 9;
    rawSend(b.address, [
      new Uint8Array(0),
      new Uint8Array(10),
      new Uint8Array(91),
      wrongVersion,
      garbage,
      new Uint8Array(1300),
      new Uint8Array(4000),
    ]);
    await waitFor("drops counted", () => {
      const m = b.metrics();
      return m.droppedTruncated >= 3 && m.droppedOversized >= 2 &&
        m.droppedGarbage + m.droppedMisaddressed >= 2;
    });
    for (let i = 1; i < 10; i++) ab.send(patterned(i, 100));
    await expectMessages(ba, 1, 10, 100);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("a restarted peer is detected when this vat sends to it", async () => {
  const identityB = VatIdentity.generate();
  const a = await SealedUdpNetwork.create({ identity: VatIdentity.generate() });
  let b = await SealedUdpNetwork.create({ identity: identityB });
  const bAddress = b.address;
  try {
    a.directory.set(b.vatId, b.address);
    b.directory.set(a.vatId, a.address);
    const ab = a.connect(b.vatId);
    ab.send(patterned(0, 100));
    const ba = await b.accept();
    await expectMessages(ba, 0, 1, 100);
    ba.send(patterned(1, 100));
    await expectMessages(ab, 1, 2, 100);

    await b.abort();
    b = await SealedUdpNetwork.create({ identity: identityB, bind: bAddress });
    b.directory.set(a.vatId, a.address);
    ab.send(patterned(2, 100));
    await assert.rejects(ab.receive(), (error: Error) => {
      assert.ok(error instanceof TransportClosedError);
      assert.match(error.message, /restarted/);
      return true;
    });
    assert.equal(a.metrics().peerRestarts, 1);
    assert.ok(b.metrics().droppedStaleBoot >= 1);
    assert.throws(() => ab.send(new Uint8Array(1)), TransportClosedError);

    const fresh = a.connect(b.vatId);
    assert.notEqual(fresh, ab);
    fresh.send(patterned(3, 100));
    const accepted = await b.accept();
    await expectMessages(accepted, 3, 4, 100);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("a restarted peer that connects first replaces its old connections", async () => {
  const identityB = VatIdentity.generate();
  const a = await SealedUdpNetwork.create({ identity: VatIdentity.generate() });
  let b = await SealedUdpNetwork.create({ identity: identityB });
  const bAddress = b.address;
  try {
    a.directory.set(b.vatId, b.address);
    b.directory.set(a.vatId, a.address);
    const ba = b.connect(a.vatId);
    ba.send(patterned(0, 100));
    const ab = await a.accept();
    await expectMessages(ab, 0, 1, 100);

    await b.abort();
    b = await SealedUdpNetwork.create({ identity: identityB, bind: bAddress });
    b.directory.set(a.vatId, a.address);
    b.connect(a.vatId).send(patterned(1, 100));
    const second = await a.accept();
    await expectMessages(second, 1, 2, 100);
    await assert.rejects(ab.receive(), TransportClosedError);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("an outage shorter than the grace period loses nothing; a longer one fails clearly", async () => {
  const { a, b, relay } = await relayedPair({
    graceMs: 1_500,
    keepaliveMs: 200,
    maxRtoMs: 200,
  });
  try {
    const ab = a.connect(b.vatId);
    for (let i = 0; i < 20; i++) ab.send(patterned(i, 2000));
    const ba = await b.accept();
    await expectMessages(ba, 0, 20, 2000);

    relay.filter = () => false;
    for (let i = 20; i < 60; i++) ab.send(patterned(i, 2000));
    await new Promise((resolve) => setTimeout(resolve, 800));
    relay.filter = () => true;
    await expectMessages(ba, 20, 60, 2000);
    relay.filter = () => false;
    ab.send(patterned(60, 2000));
    await assert.rejects(ab.receive(), (error: Error) => {
      assert.ok(error instanceof TransportClosedError);
      assert.match(
        error.message,
        /unreachable for \d+ ms \(grace period 1500 ms\)/,
      );
      return true;
    });
    assert.ok(a.metrics().graceExpired >= 1);
  } finally {
    await a.close();
    await b.close();
    await relay.close();
  }
});

Deno.test("fuzzed datagrams at a live vat never crash it or disturb its connection", async () => {
  const { a, b, relay } = await relayedPair();
  try {
    const ab = a.connect(b.vatId);
    for (let i = 0; i < 30; i++) ab.send(patterned(i, 1500));
    const ba = await b.accept();
    await expectMessages(ba, 0, 30, 1500);
    const samples = relay.seen.filter((s) => s.fromA).map((s) => s.datagram);
    const datagrams = fc.sample(
      fc.oneof(
        fc.uint8Array({ maxLength: 1400 }),
        fc.tuple(
          fc.constantFrom(...samples),
          fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 4 }),
          fc.nat(),
        ).map(([sample, edits, cut]) => {
          const copy = sample.slice(0, Math.max(1, cut % (sample.length + 1)));
          for (const [at, value] of edits) copy[at % copy.length] = value;
          return copy;
        }),
      ),
      { numRuns: 400, seed: 0xf00d },
    );
    const before = dropped(b.metrics());
    for (let i = 0; i < datagrams.length; i += 50) {
      rawSend(b.address, datagrams.slice(i, i + 50));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await waitFor(
      "fuzzed datagrams dropped",
      () => dropped(b.metrics()) - before >= datagrams.length * 0.9,
    );
    assert.equal(b.metrics().connectionsAccepted, 1);
    for (let i = 30; i < 60; i++) ab.send(patterned(i, 1500));
    await expectMessages(ba, 30, 60, 1500);
  } finally {
    await a.close();
    await b.close();
    await relay.close();
  }
});

Deno.test("a directory update at runtime redirects a connection, and what was queued arrives", async () => {
  const [a, b] = await pair();
  // A port nobody listens on: packets sent there are lost.
  const nowhere = udpOpen(0x7f000001, 0);
  try {
    const port = udpLocalPort(nowhere);
    udpClose(nowhere);
    a.directory.set(b.vatId, `127.0.0.1:${port}`);
    const ab = a.connect(b.vatId);
    for (let i = 0; i < 5; i++) ab.send(patterned(i, 3000));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(b.metrics().datagramsReceived, 0);

    a.directory.set(b.vatId, b.address);
    const ba = await b.accept();
    await expectMessages(ba, 0, 5, 3000);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("a vat runs with only the permissions sealedUdpPermissions names", async () => {
  const { read, ffi } = sealedUdpPermissions();
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      `--allow-read=${read.join(",")}`,
      `--allow-ffi=${ffi.join(",")}`,
      new URL("./testdata/minimal_vat.ts", import.meta.url).pathname,
    ],
  }).output();
  const text = new TextDecoder().decode(output.stdout) +
    new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, text);
  assert.match(text, /bound 127\.0\.0\.1:\d+/);
});

Deno.test("first packets replayed to a restarted vat open no connection", async () => {
  const identityB = VatIdentity.generate();
  const a = await SealedUdpNetwork.create({ identity: VatIdentity.generate() });
  let b = await SealedUdpNetwork.create({ identity: identityB });
  const bAddress = b.address;
  const relay = new Relay(a.address, bAddress);
  try {
    a.directory.set(b.vatId, relay.address);
    b.directory.set(a.vatId, relay.address);
    // A's first packets go out before it knows B's boot.
    const ab = a.connect(b.vatId);
    ab.send(patterned(0, 100));
    const ba = await b.accept();
    await expectMessages(ba, 0, 1, 100);
    const first = relay.seen.find((s) => s.fromA)!.datagram;

    await new Promise((resolve) => setTimeout(resolve, 500));
    await b.abort();
    b = await SealedUdpNetwork.create({ identity: identityB, bind: bAddress });
    b.directory.set(a.vatId, relay.address);
    await relay.inject(first, true);
    await waitFor(
      "the replay refused",
      () => b.metrics().droppedStaleBoot >= 1,
    );
    assert.equal(b.metrics().connectionsAccepted, 0);
    assert.equal(b.metrics().messagesReceived, 0);
  } finally {
    await a.close();
    await b.close();
    await relay.close();
  }
});

Deno.test("a peer that opens too many connections is refused, and its others go on", async () => {
  const a = await SealedUdpNetwork.create({ identity: VatIdentity.generate() });
  const b = await SealedUdpNetwork.create({
    identity: VatIdentity.generate(),
    maxConnectionsPerPeer: 2,
  });
  try {
    a.directory.set(b.vatId, b.address);
    b.directory.set(a.vatId, a.address);
    // A closed connection lingers on B for a while, so it still counts.
    const first = a.connect(b.vatId);
    first.send(patterned(0, 10));
    const firstAccepted = await b.accept();
    await expectMessages(firstAccepted, 0, 1, 10);
    first.close();
    assert.equal(await firstAccepted.receive(), null);

    const second = a.connect(b.vatId);
    second.send(patterned(1, 10));
    const secondAccepted = await b.accept();
    await expectMessages(secondAccepted, 1, 2, 10);

    second.close();
    const third = a.connect(b.vatId);
    third.send(patterned(2, 10));
    await assert.rejects(third.receive(), /too many open/);
    assert.equal(b.metrics().connectionsRefused, 1);
  } finally {
    await a.close();
    await b.close();
  }
});
