/**
 * Bytes from a disk or a peer that are not what they should be get a typed
 * error, never a crash and never data: property tests with a fixed budget.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  CorruptObjectError,
  objectIdOf,
  openPiece,
  openPieceAsync,
  sealPiece,
  sealPieceAsync,
} from "./object_crypto.ts";
import { decodeObjectRef, encodeObjectRef, RefKind } from "./service.ts";
import { checkName } from "./disk.ts";
import { StorageConfig } from "./main.ts";
import { ConfigError, loadConfig } from "../runtime/config.ts";
import { localBackend, testStore } from "./_testing.ts";

const key = new Uint8Array(32).fill(3);
const binding = { objectId: "ab", piece: "c/1" };

Deno.test("any stored bytes that are not the sealed piece fail as CorruptObjectError", () => {
  const sealed = sealPiece(key, binding, new Uint8Array(100).fill(9));
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 300 }),
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      (random, position, flip) => {
        // Random bytes, and the real piece with one byte changed.
        const mutated = sealed.slice();
        mutated[position % mutated.length] ^= flip;
        for (const candidate of [random, mutated]) {
          assert.throws(
            () => openPiece(key, binding, candidate),
            CorruptObjectError,
          );
        }
        // Cut short anywhere.
        // A copy: a failed open in place zeroes the bytes it was given.
        const cut = sealed.slice(0, position % sealed.length);
        assert.throws(() => openPiece(key, binding, cut), CorruptObjectError);
      },
    ),
    { numRuns: 500, seed: 42 },
  );
  assert.deepEqual(
    openPiece(key, binding, sealed),
    new Uint8Array(100).fill(9),
  );
  assert.throws(
    () => openPiece(key, { ...binding, piece: "c/2" }, sealed),
    CorruptObjectError,
  );
});

Deno.test("large pieces sealed off the event loop open either way and catch tampering", async () => {
  const plain = new Uint8Array(1 << 20).map((_, i) => i * 31);
  const sealed = await sealPieceAsync(key, binding, plain);
  assert.deepEqual(openPiece(key, binding, sealed.slice()), plain);
  assert.deepEqual(await openPieceAsync(key, binding, sealed.slice()), plain);
  assert.deepEqual(
    await openPieceAsync(key, binding, sealPiece(key, binding, plain)),
    plain,
  );
  for (const position of [0, 100, 500_000, sealed.length - 20]) {
    const bad = sealed.slice();
    bad[position] ^= 4;
    await assert.rejects(openPieceAsync(key, binding, bad), CorruptObjectError);
  }
  await assert.rejects(
    openPieceAsync(key, { ...binding, piece: "c/9" }, sealed.slice()),
    CorruptObjectError,
  );
});

Deno.test("object refs round-trip and malformed ones are refused", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(...[1, 2, 3, 4, 5] as RefKind[]),
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.nat({ max: 2 ** 40 }),
      (kind, refKey, epoch) => {
        const decoded = decodeObjectRef(
          encodeObjectRef({ kind, key: refKey, epoch }),
        );
        assert.deepEqual(decoded, { kind, key: refKey, epoch });
      },
    ),
    { numRuns: 200, seed: 7 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 80 }), (bytes) => {
      try {
        decodeObjectRef(bytes);
      } catch (error) {
        assert.ok(error instanceof RangeError);
      }
    }),
    { numRuns: 500, seed: 8 },
  );
  assert.throws(() => decodeObjectRef(new Uint8Array(41)), /unknown kind 0/);
});

Deno.test("disk names cannot escape the disk", () => {
  for (const bad of ["../x", "a/../b", "/a", "a//b", "A", "a/b/", ""]) {
    assert.throws(() => checkName(bad), RangeError, bad);
  }
  checkName("ab12/c/3.00ff");
});

Deno.test("a volume head or value replaced by garbage reads as CorruptObjectError", async () => {
  const backend = await localBackend();
  try {
    const store = testStore(backend.disk);
    await store.ensureRoot("x");
    const volume = await store.createVolume({ root: "x" });
    const value = await store.createAssignable({ root: "x" }, {
      content: new Uint8Array(4),
      sturdyRefs: [],
    });
    const garbage = fc.sample(fc.uint8Array({ maxLength: 200 }), {
      numRuns: 20,
      seed: 3,
    });
    for (const bytes of garbage) {
      await backend.disk.put(`${objectIdOf(volume)}/head`, bytes);
      await assert.rejects(store.volume(volume).read(0, 1), CorruptObjectError);
      await backend.disk.put(`${objectIdOf(value)}/head`, bytes);
      await assert.rejects(
        store.getValue(value, "assignable"),
        CorruptObjectError,
      );
    }
  } finally {
    await backend.cleanup();
  }
});

Deno.test("a storage node's configuration names its bad fields", async () => {
  const good = [
    "vatKeyFile=/tmp/k",
    'disk={"kind":"local","path":"/tmp/d"}',
    `diskSecret=${"ab".repeat(32)}`,
    `zone={"secret":"${"cd".repeat(32)}","storageNodes":[]}`,
  ];
  const config = await loadConfig(StorageConfig, { overrides: good });
  assert.deepEqual(config.listen, { hostname: "127.0.0.1", port: 0 });
  await assert.rejects(
    loadConfig(StorageConfig, {
      overrides: [...good, "diskSecret=short"],
    }),
    (e) => e instanceof ConfigError && /diskSecret/.test(e.message),
  );
  await assert.rejects(
    loadConfig(StorageConfig, {
      overrides: [...good, 'disk={"kind":"floppy"}'],
    }),
    (e) => e instanceof ConfigError && /disk/.test(e.message),
  );
  await assert.rejects(
    loadConfig(StorageConfig, {
      overrides: [
        ...good,
        'disk={"kind":"s3","endpoint":"http://127.0.0.1:1","bucket":"b"}',
      ],
    }),
    (e) => e instanceof ConfigError && /accessKeyId/.test(e.message),
  );
});
