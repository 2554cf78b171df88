import assert from "node:assert/strict";
import { ed25519 } from "@noble/curves/ed25519.js";
import {
  checkVatId,
  InvalidVatIdError,
  parseVatIdHex,
  VatIdentity,
  vatIdHex,
  VatKeyFileError,
  verifyChallenge,
} from "./vat_id.ts";

Deno.test("a vat proves it owns its ID by signing a challenge", () => {
  const vat = VatIdentity.generate();
  const other = VatIdentity.generate();
  const challenge = crypto.getRandomValues(new Uint8Array(32));
  const signature = vat.signChallenge(challenge);
  assert.ok(verifyChallenge(vat.vatId, challenge, signature));
  assert.ok(!verifyChallenge(other.vatId, challenge, signature));
  const tampered = challenge.slice();
  tampered[0] ^= 1;
  assert.ok(!verifyChallenge(vat.vatId, tampered, signature));
  // A plain signature over the bare challenge is not a proof: the context
  // prefix keeps proofs apart from any other use of the key.
  assert.ok(!verifyChallenge(vat.vatId, challenge, new Uint8Array(64)));
  assert.ok(!verifyChallenge(vat.vatId, challenge, signature.subarray(1)));
  assert.ok(!verifyChallenge(new Uint8Array(5), challenge, signature));
});

Deno.test("the vat ID is the ed25519 public key of the seed", () => {
  const seed = crypto.getRandomValues(new Uint8Array(32));
  const vat = VatIdentity.fromSeed(seed);
  assert.deepEqual(vat.vatId, ed25519.getPublicKey(seed));
  assert.equal(vatIdHex(vat.vatId).length, 64);
  assert.deepEqual(parseVatIdHex(vatIdHex(vat.vatId)), vat.vatId);
  assert.throws(() => parseVatIdHex("xyz"), InvalidVatIdError);
});

Deno.test("two vats derive mirrored pair keys, distinct per direction and per pair", () => {
  const a = VatIdentity.generate();
  const b = VatIdentity.generate();
  const c = VatIdentity.generate();
  const ab = a.pairKeys(b.vatId);
  const ba = b.pairKeys(a.vatId);
  assert.deepEqual(ab.sendKey, ba.receiveKey);
  assert.deepEqual(ab.receiveKey, ba.sendKey);
  assert.notDeepEqual(ab.sendKey, ab.receiveKey);
  const ac = a.pairKeys(c.vatId);
  assert.notDeepEqual(ac.sendKey, ab.sendKey);
  assert.notDeepEqual(ac.receiveKey, ab.receiveKey);
  assert.equal(ab.sendKey.length, 32);
});

Deno.test("bytes that are not a usable vat ID are refused with a typed error", () => {
  const vat = VatIdentity.generate();
  assert.throws(() => vat.pairKeys(new Uint8Array(31)), InvalidVatIdError);
  assert.throws(() => checkVatId(new Uint8Array(33)), InvalidVatIdError);
  // The identity point is of low order: its shared secret would be zero.
  const identityPoint = new Uint8Array(32);
  identityPoint[0] = 1;
  assert.throws(() => vat.pairKeys(identityPoint), InvalidVatIdError);
  // y = 2 is not on the curve.
  const offCurve = new Uint8Array(32);
  offCurve[0] = 2;
  assert.throws(() => vat.pairKeys(offCurve), InvalidVatIdError);
});

Deno.test("key files are created 0600, loaded back, and refused when readable by others", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/vat.key`;
    const created = await VatIdentity.loadOrCreate(path);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const loaded = await VatIdentity.loadOrCreate(path);
    assert.deepEqual(loaded.vatId, created.vatId);
    await assert.rejects(created.save(path), VatKeyFileError);

    await Deno.chmod(path, 0o644);
    await assert.rejects(VatIdentity.load(path), /mode 644/);

    await Deno.writeTextFile(`${dir}/bad.key`, "not hex\n", { mode: 0o600 });
    await assert.rejects(VatIdentity.load(`${dir}/bad.key`), VatKeyFileError);
    await assert.rejects(
      VatIdentity.load(`${dir}/missing.key`),
      VatKeyFileError,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
