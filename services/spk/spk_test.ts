import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fc from "fast-check";
import {
  assembleSpk,
  base32Decode,
  base32Encode,
  buildSpk,
  decodeKeyFile,
  DEFAULT_LIMITS,
  encodeArchive,
  encodeKeyFile,
  encodeManifest,
  generateKey,
  isAppId,
  joinPayload,
  type ManifestInput,
  type PackNode,
  readSpk,
  signArchive,
  SPK_MAGIC,
  SpkError,
  type SpkErrorKind,
  unpackSpk,
} from "./mod.ts";

const manifest: ManifestInput = {
  appTitle: "Notes",
  appVersion: 3,
  appMarketingVersion: "0.3",
  actions: [{
    title: "New note",
    nounPhrase: "note",
    command: { argv: ["/bin/notes", "--new"], environ: [] },
  }],
  continueCommand: {
    argv: ["/bin/notes"],
    environ: [{ key: "HOME", value: "/var" }],
  },
};

const encoder = new TextEncoder();

function tree(): Map<string, PackNode> {
  return new Map<string, PackNode>([
    ["bin", {
      kind: "directory",
      children: new Map<string, PackNode>([
        ["notes", { kind: "executable", data: encoder.encode("#!/bin/sh") }],
        ["self", { kind: "symlink", target: "notes" }],
      ]),
    }],
    ["readme.txt", { kind: "regular", data: encoder.encode("hello") }],
    ["lib", { kind: "symlink", target: "/bin" }],
  ]);
}

/** A package with the manifest added, signed by `key` over `archive`. */
async function packageOf(
  files: Map<string, PackNode>,
  options: { signWith?: ReturnType<typeof generateKey> } = {},
) {
  const key = generateKey();
  const root = new Map(files);
  root.set("sandstorm-manifest", {
    kind: "regular",
    data: encodeManifest(manifest),
  });
  const archive = encodeArchive(root);
  const signature = signArchive(archive, options.signWith ?? key);
  return {
    key,
    spk: await assembleSpk(joinPayload(signature, archive), { xzPreset: 0 }),
  };
}

async function assertRefused(
  spk: Uint8Array,
  kind: SpkErrorKind,
  limits = DEFAULT_LIMITS,
) {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      unpackSpk(spk, `${dir}/pkg`, limits),
      (error) => error instanceof SpkError && error.kind === kind,
    );
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing left on disk");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("base32 matches Sandstorm's alphabet and bit order", () => {
  assert.equal(base32Encode(new Uint8Array([0xff])), "zw");
  assert.equal(base32Encode(new Uint8Array([0, 0, 0, 0, 0])), "00000000");
  assert.equal(
    base32Encode(new Uint8Array([0x84, 0x21, 0x08, 0x42, 0x10])),
    "hhhhhhhh",
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
      assert.deepEqual(base32Decode(base32Encode(bytes)), bytes);
    }),
    { numRuns: 200, seed: 7 },
  );
});

Deno.test("a packed package verifies and yields its IDs and manifest", async () => {
  const key = generateKey();
  const spk = await buildSpk(tree(), manifest, key, { xzPreset: 0 });
  const pkg = await readSpk(spk);
  assert.equal(pkg.appId, base32Encode(key.publicKey));
  assert.ok(isAppId(pkg.appId));
  assert.equal(
    pkg.packageId,
    createHash("sha256").update(spk).digest("hex").slice(0, 32),
  );
  assert.equal(pkg.manifest.appTitle, "Notes");
  assert.equal(pkg.manifest.appVersion, 3);
  assert.deepEqual(pkg.manifest.continueCommand.argv, ["/bin/notes"]);
  assert.deepEqual(pkg.manifest.continueCommand.environ, [{
    key: "HOME",
    value: "/var",
  }]);
  assert.equal(pkg.manifest.actions[0].nounPhrase, "note");
});

Deno.test("unpacking writes the tree with modes and symlinks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const spk = await buildSpk(tree(), manifest, generateKey(), {
      xzPreset: 0,
    });
    await unpackSpk(spk, `${dir}/pkg`);
    assert.equal(await Deno.readTextFile(`${dir}/pkg/readme.txt`), "hello");
    assert.equal(
      (await Deno.stat(`${dir}/pkg/bin/notes`)).mode! & 0o777,
      0o755,
    );
    assert.equal(
      (await Deno.stat(`${dir}/pkg/readme.txt`)).mode! & 0o777,
      0o644,
    );
    assert.equal(await Deno.readLink(`${dir}/pkg/bin/self`), "notes");
    assert.equal(await Deno.readLink(`${dir}/pkg/lib`), "/bin");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["pkg"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("key files round-trip and a mismatched key file is refused", () => {
  const key = generateKey();
  assert.deepEqual(decodeKeyFile(encodeKeyFile(key)), key);
  const other = generateKey();
  const mixed = encodeKeyFile({
    publicKey: other.publicKey,
    privateKey: key.privateKey,
  });
  assert.throws(() => decodeKeyFile(mixed), RangeError);
});

Deno.test("a file that is not an spk is refused", async () => {
  await assertRefused(encoder.encode("PK\x03\x04 not a package"), "bad-magic");
});

Deno.test("a corrupt xz stream is refused", async () => {
  const { spk } = await packageOf(tree());
  const broken = spk.slice();
  broken.fill(0x55, 40, 80);
  await assertRefused(broken, "corrupt");
  await assertRefused(spk.subarray(0, spk.length - 20), "corrupt");
});

Deno.test("a package without a signature is refused", async () => {
  const root = new Map(tree());
  root.set("sandstorm-manifest", {
    kind: "regular",
    data: encodeManifest(manifest),
  });
  const archive = encodeArchive(root);
  await assertRefused(await assembleSpk(archive, { xzPreset: 0 }), "unsigned");
  await assertRefused(
    await assembleSpk(new Uint8Array(), { xzPreset: 0 }),
    "unsigned",
  );
});

Deno.test("a package signed by one key but claiming another is refused", async () => {
  const root = new Map(tree());
  root.set("sandstorm-manifest", {
    kind: "regular",
    data: encodeManifest(manifest),
  });
  const archive = encodeArchive(root);
  const signer = generateKey();
  const claimed = generateKey();
  const signature = signArchive(archive, {
    publicKey: claimed.publicKey,
    privateKey: signer.privateKey,
  });
  await assertRefused(
    await assembleSpk(joinPayload(signature, archive), { xzPreset: 0 }),
    "bad-signature",
  );
});

Deno.test("a validly signed package whose contents changed is refused", async () => {
  const root = new Map(tree());
  root.set("sandstorm-manifest", {
    kind: "regular",
    data: encodeManifest(manifest),
  });
  const archive = encodeArchive(root);
  const signature = signArchive(archive, generateKey());
  const tampered = archive.slice();
  tampered[tampered.length - 1] ^= 1;
  await assertRefused(
    await assembleSpk(joinPayload(signature, tampered), { xzPreset: 0 }),
    "bad-signature",
  );
});

Deno.test("oversized packages are refused by each limit", async () => {
  const big = new Map(tree());
  big.set("big.bin", { kind: "regular", data: new Uint8Array(300_000) });
  const { spk } = await packageOf(big);
  await assertRefused(spk, "too-large", {
    ...DEFAULT_LIMITS,
    maxArchiveBytes: 100_000,
  });
  await assertRefused(spk, "too-large", {
    ...DEFAULT_LIMITS,
    maxUnpackedBytes: 200_000,
  });
  await assertRefused(spk, "too-large", { ...DEFAULT_LIMITS, maxFiles: 3 });
  await assertRefused(spk, "too-large", {
    ...DEFAULT_LIMITS,
    maxSpkBytes: 100,
  });
});

Deno.test("path-escaping names and symlinks are refused", async () => {
  const cases: [string, PackNode, SpkErrorKind][] = [
    ["..", { kind: "regular", data: encoder.encode("x") }, "bad-name"],
    [
      "../../etc/passwd",
      { kind: "regular", data: encoder.encode("x") },
      "bad-name",
    ],
    ["/etc/passwd", { kind: "regular", data: encoder.encode("x") }, "bad-name"],
    ["", { kind: "regular", data: encoder.encode("x") }, "bad-name"],
    ["out", { kind: "symlink", target: "../../../etc" }, "symlink-escape"],
    ["out", { kind: "symlink", target: "/../etc" }, "symlink-escape"],
    ["sub", {
      kind: "directory",
      children: new Map([["up", { kind: "symlink", target: "../../x" }]]),
    }, "symlink-escape"],
  ];
  for (const [name, node, kind] of cases) {
    const files = new Map(tree());
    files.set(name, node);
    const { spk } = await packageOf(files);
    await assertRefused(spk, kind);
  }
});

Deno.test("a package without a manifest is refused", async () => {
  const archive = encodeArchive(tree());
  const spk = await assembleSpk(
    joinPayload(signArchive(archive, generateKey()), archive),
    { xzPreset: 0 },
  );
  await assertRefused(spk, "bad-manifest");
});

Deno.test("fuzz: mutated packages give an SpkError or a valid package", async () => {
  const { spk } = await packageOf(tree());
  const root = new Map(tree());
  root.set("sandstorm-manifest", {
    kind: "regular",
    data: encodeManifest(manifest),
  });
  const archive = encodeArchive(root);
  const key = generateKey();
  const signature = signArchive(archive, key);
  const payload = joinPayload(signature, archive);

  // Flipped bytes in the compressed file.
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.tuple(fc.nat(spk.length - 1), fc.integer({ min: 1, max: 255 })),
        {
          minLength: 1,
          maxLength: 4,
        },
      ),
      async (flips) => {
        const mutated = spk.slice();
        for (const [at, bits] of flips) mutated[at] ^= bits;
        try {
          await readSpk(mutated);
        } catch (error) {
          assert.ok(error instanceof SpkError, String(error));
        }
      },
    ),
    { numRuns: 40, seed: 11 },
  );

  // Flipped bytes inside the archive message, re-signed so that the
  // parser (not the signature check) meets them.
  const sigLength = signature.length;
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.tuple(fc.nat(archive.length - 1), fc.integer({ min: 1, max: 255 })),
        { minLength: 1, maxLength: 6 },
      ),
      async (flips) => {
        const mutated = payload.slice(sigLength);
        for (const [at, bits] of flips) mutated[at] ^= bits;
        const signed = joinPayload(signArchive(mutated, key), mutated);
        const file = await assembleSpk(signed, { xzPreset: 0 });
        try {
          const pkg = await readSpk(file);
          assert.ok(pkg.entries.length > 0);
        } catch (error) {
          assert.ok(error instanceof SpkError, String(error));
        }
      },
    ),
    { numRuns: 60, seed: 12 },
  );
});

Deno.test("the magic number is Sandstorm's", () => {
  assert.deepEqual(
    [...SPK_MAGIC].map((b) => b.toString(16).padStart(2, "0")).join(""),
    "8fc6cdef451aea96",
  );
});
