import assert from "node:assert/strict";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { ed25519, x25519 as nobleX25519 } from "@noble/curves/ed25519.js";
import {
  ed25519PublicToX25519,
  ed25519SeedToX25519,
  open,
  openBatch,
  PacketStatus,
  seal,
  sealBatch,
  SealError,
  TAG_BYTES,
  x25519,
} from "./native.ts";

const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));

Deno.test("seal matches @noble xchacha20poly1305 on the same inputs", () => {
  for (const size of [0, 1, 63, 64, 1200, 65536]) {
    const key = random(32);
    const nonce = random(24);
    const ad = random(size % 40);
    const message = new Uint8Array(size).map((_, i) => i * 7);
    const ours = seal(key, nonce, message, ad);
    const theirs = xchacha20poly1305(key, nonce, ad).encrypt(message);
    assert.deepEqual(ours, theirs);
    assert.deepEqual(open(key, nonce, theirs, ad), message);
  }
});

Deno.test("open rejects a flipped bit, wrong key, wrong ad and truncation", () => {
  const key = random(32);
  const nonce = random(24);
  const sealed = seal(key, nonce, random(100), new Uint8Array([1, 2]));
  const flipped = sealed.slice();
  flipped[5] ^= 1;
  const before = flipped.slice();
  assert.throws(
    () => open(key, nonce, flipped, new Uint8Array([1, 2])),
    SealError,
  );
  assert.deepEqual(flipped, before, "open leaves its input as it was");
  assert.throws(
    () => open(random(32), nonce, sealed, new Uint8Array([1, 2])),
    SealError,
  );
  assert.throws(
    () => open(key, nonce, sealed, new Uint8Array([1, 3])),
    SealError,
  );
  assert.throws(() => open(key, nonce, sealed.subarray(0, 10)), SealError);
  assert.throws(() => open(key, nonce, sealed.subarray(0, 3)), SealError);
});

Deno.test("bad key and nonce lengths are reported, not crashed on", () => {
  assert.throws(
    () => seal(random(31), random(24), random(4)),
    /key must be 32/,
  );
  assert.throws(
    () => seal(random(32), random(12), random(4)),
    /nonce must be 24/,
  );
  assert.throws(() => x25519(random(32), random(31)), /public key must be 32/);
});

Deno.test("a batch seals many packets with several keys, each status reported", () => {
  const keys = random(64);
  const packets = [
    { ad: 8, msg: 1200, key: 0 },
    { ad: 0, msg: 17, key: 1 },
    { ad: 4, msg: 0, key: 0 },
  ];
  let offset = 0;
  const descriptors = new Uint32Array(packets.length * 4 + 8);
  packets.forEach((p, i) => {
    descriptors.set([offset, p.ad, p.msg, p.key], i * 4);
    offset += p.ad + p.msg + TAG_BYTES;
  });
  // A fourth packet that runs past the end, and a fifth with no such key.
  descriptors.set([offset - 4, 0, 10, 0], 12);
  descriptors.set([0, 0, 1, 7], 16);
  const buffer = random(offset);
  const plain = buffer.slice();
  const nonces = random(24 * 5);
  const status = new Uint8Array(5);
  const failed = sealBatch({
    buffer,
    descriptors,
    nonces,
    keys,
    count: 5,
    status,
  });
  assert.equal(failed, 2);
  assert.deepEqual([...status], [
    0,
    0,
    0,
    PacketStatus.BadBounds,
    PacketStatus.BadKey,
  ]);

  packets.forEach((p, i) => {
    const start = descriptors[i * 4];
    const key = keys.subarray(p.key * 32, p.key * 32 + 32);
    const nonce = nonces.subarray(i * 24, i * 24 + 24);
    const ad = plain.subarray(start, start + p.ad);
    const expected = xchacha20poly1305(key, nonce, ad).encrypt(
      plain.subarray(start + p.ad, start + p.ad + p.msg),
    );
    assert.deepEqual(
      buffer.subarray(start + p.ad, start + p.ad + p.msg + TAG_BYTES),
      expected,
    );
  });

  buffer[descriptors[4] + 3] ^= 0x80; // corrupt packet 1
  const opened = openBatch({
    buffer,
    descriptors,
    nonces,
    keys,
    count: 3,
    status,
  });
  assert.equal(opened, 1);
  assert.deepEqual([...status.subarray(0, 3)], [0, PacketStatus.BadTag, 0]);
  assert.deepEqual(buffer.subarray(0, 1208), plain.subarray(0, 1208));
  // The failed packet's message is wiped, not left as ciphertext and never
  // turned into plaintext; its tag stays; the packet after it opened.
  const failedStart = descriptors[4];
  const failedMessage = buffer.subarray(failedStart, failedStart + 17);
  assert.notDeepEqual(
    failedMessage,
    plain.subarray(failedStart, failedStart + 17),
  );
  assert.deepEqual(failedMessage, new Uint8Array(17));
  assert.deepEqual(
    buffer.subarray(descriptors[8], descriptors[8] + 4),
    plain.subarray(descriptors[8], descriptors[8] + 4),
  );
});

Deno.test("batch arrays too short for the count are refused before C sees them", () => {
  const batch = {
    buffer: new Uint8Array(100),
    descriptors: new Uint32Array(4),
    nonces: new Uint8Array(24),
    keys: new Uint8Array(32),
    count: 2,
    status: new Uint8Array(2),
  };
  assert.throws(() => sealBatch(batch), /descriptors hold 4 words/);
  assert.throws(
    () => sealBatch({ ...batch, count: 1, keys: new Uint8Array(33) }),
    /multiple of 32/,
  );
});

Deno.test("x25519 and the ed25519 maps agree with @noble", () => {
  for (let i = 0; i < 20; i++) {
    const seedA = random(32);
    const seedB = random(32);
    const publicB = ed25519.getPublicKey(seedB);
    assert.deepEqual(
      ed25519PublicToX25519(publicB),
      ed25519.utils.toMontgomery(publicB),
    );
    const secretA = ed25519SeedToX25519(seedA);
    assert.deepEqual(
      nobleX25519.getPublicKey(secretA),
      nobleX25519.getPublicKey(ed25519.utils.toMontgomerySecret(seedA)),
    );
    const ours = x25519(secretA, ed25519PublicToX25519(publicB));
    const theirs = nobleX25519.getSharedSecret(
      ed25519SeedToX25519(seedB),
      ed25519.utils.toMontgomery(ed25519.getPublicKey(seedA)),
    );
    assert.deepEqual(ours, theirs);
  }
});

Deno.test("x25519 refuses a low-order point", () => {
  assert.throws(() => x25519(random(32), new Uint8Array(32)), /low order/);
});
