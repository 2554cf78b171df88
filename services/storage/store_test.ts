import assert from "node:assert/strict";
import {
  collect,
  localBackend,
  pattern,
  type TestBackend,
  testStore,
} from "./_testing.ts";
import {
  CorruptObjectError,
  LeaseLostError,
  ObjectNotFoundError,
  QuotaExceededError,
  VersionMismatchError,
} from "./errors.ts";
import { objectIdOf } from "./object_crypto.ts";
import { BLOCK_BYTES, VOLUME_BLOCKS } from "./volume.ts";
import { s3Backends } from "./_s3_testing.ts";

/** Every behaviour runs on each backend: local directory and radosgw. */
type Case = (backend: TestBackend) => Promise<void>;
const cases: [string, Case][] = [];
function behaviour(name: string, body: Case) {
  cases.push([name, body]);
}

const encoder = new TextEncoder();

behaviour("a blob reads back whole and in ranges", async ({ disk }) => {
  const store = testStore(disk);
  await store.ensureRoot("alice");
  const data = pattern(100_000, 1);
  const key = await store.createBlob({ root: "alice" }, [
    data.subarray(0, 10),
    data.subarray(10, 50_000),
    data.subarray(50_000),
  ]);
  assert.equal(await store.blobSize(key), data.length);
  assert.deepEqual(await collect(store.readBlob(key)), data);
  assert.deepEqual(
    await collect(store.readBlob(key, 16_000, 40_000)),
    data.subarray(16_000, 56_000),
  );
  assert.deepEqual(
    await collect(store.readBlob(key, 99_999, 10)),
    data.subarray(99_999),
  );
  const empty = await store.createBlob({ root: "alice" }, []);
  assert.equal((await collect(store.readBlob(empty))).length, 0);
  assert.equal((await store.rootUsage("alice")).usedBytes, data.length);
});

behaviour("a failed upload leaves no blob and no charge", async ({ disk }) => {
  const store = testStore(disk);
  await store.ensureRoot("bob");
  async function* failing() {
    yield pattern(40_000, 2);
    throw new Error("client went away");
  }
  await assert.rejects(
    store.createBlob({ root: "bob" }, failing()),
    /went away/,
  );
  assert.equal((await store.rootUsage("bob")).usedBytes, 0);
});

behaviour(
  "a volume is sparse, reads zeros, and keeps writes",
  async ({ disk }) => {
    const store = testStore(disk);
    await store.ensureRoot("carol");
    const key = await store.createVolume({ root: "carol" });
    const volume = store.volume(key);
    const writer = await volume.takeLease();
    assert.deepEqual(await volume.read(5, 2), new Uint8Array(2 * BLOCK_BYTES));

    const a = pattern(BLOCK_BYTES, 3);
    const b = pattern(40 * BLOCK_BYTES, 4);
    const last = pattern(BLOCK_BYTES, 5);
    await Promise.all([
      writer.write(7, a),
      writer.write(30, b), // crosses chunk boundaries 32, 48 and 64
      writer.write(VOLUME_BLOCKS - 1, last),
    ]);
    await writer.sync();
    assert.deepEqual(await volume.read(7, 1), a);
    assert.deepEqual(await volume.read(30, 40), b);
    assert.deepEqual(await volume.read(VOLUME_BLOCKS - 1, 1), last);
    const around = await volume.read(6, 3);
    assert.deepEqual(
      around.subarray(0, BLOCK_BYTES),
      new Uint8Array(BLOCK_BYTES),
    );
    assert.deepEqual(around.subarray(BLOCK_BYTES, 2 * BLOCK_BYTES), a);
    assert.equal((await volume.stat()).usedBlocks, 42);
    assert.equal((await store.usage(key)).ownBytes, 42 * BLOCK_BYTES);

    // Zero part of a chunk, whole chunks, and a huge range at the end.
    await writer.zero(31, 34);
    await writer.zero(1000, VOLUME_BLOCKS - 1000);
    const after = await volume.read(30, 40);
    assert.deepEqual(
      after.subarray(0, BLOCK_BYTES),
      b.subarray(0, BLOCK_BYTES),
    );
    assert.deepEqual(
      after.subarray(BLOCK_BYTES, 35 * BLOCK_BYTES),
      new Uint8Array(34 * BLOCK_BYTES),
    );
    assert.deepEqual(
      after.subarray(35 * BLOCK_BYTES),
      b.subarray(35 * BLOCK_BYTES),
    );
    assert.equal((await volume.stat()).usedBlocks, 1 + 1 + 5);
    assert.equal((await store.rootUsage("carol")).usedBytes, 7 * BLOCK_BYTES);

    // Writing zeros frees the block as well.
    await writer.write(7, new Uint8Array(BLOCK_BYTES));
    assert.equal((await volume.stat()).usedBlocks, 6);
    await assert.rejects(writer.write(VOLUME_BLOCKS, a), RangeError);
    await assert.rejects(writer.write(0, new Uint8Array(100)), RangeError);
  },
);

behaviour(
  "a new lease holder fences out the old one, on any node",
  async (backend) => {
    const store = testStore(backend.disk);
    const otherNode = testStore(backend.sibling());
    await store.ensureRoot("dave");
    const key = await store.createVolume({ root: "dave" });
    const old = await store.volume(key).takeLease();
    await old.write(0, pattern(BLOCK_BYTES, 6));

    const fresh = await otherNode.volume(key).takeLease();
    assert.equal(fresh.epoch, old.epoch + 1);
    await assert.rejects(old.write(1, pattern(BLOCK_BYTES, 7)), LeaseLostError);
    await assert.rejects(old.zero(0, 1), LeaseLostError);
    // The old holder resuming its epoch through yet another node fails too.
    const resumed = otherNode.volume(key).resumeLease(old.epoch);
    await assert.rejects(
      resumed.write(2, pattern(BLOCK_BYTES, 8)),
      LeaseLostError,
    );

    await fresh.write(3, pattern(BLOCK_BYTES, 9));
    const volume = store.volume(key);
    assert.deepEqual(await volume.read(0, 1), pattern(BLOCK_BYTES, 6));
    assert.deepEqual(await volume.read(1, 2), new Uint8Array(2 * BLOCK_BYTES));
    assert.deepEqual(await volume.read(3, 1), pattern(BLOCK_BYTES, 9));
  },
);

behaviour(
  "two nodes writing one volume under one lease lose nothing",
  async (backend) => {
    const nodeA = testStore(backend.disk);
    const nodeB = testStore(backend.sibling());
    await nodeA.ensureRoot("erin");
    const key = await nodeA.createVolume({ root: "erin" });
    const lease = await nodeA.volume(key).takeLease();
    const viaB = nodeB.volume(key).resumeLease(lease.epoch);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 12; i++) {
      const writer = i % 2 === 0 ? lease : viaB;
      writes.push(writer.write(i * 3, pattern(BLOCK_BYTES, 100 + i)));
    }
    await Promise.all(writes);
    for (let i = 0; i < 12; i++) {
      assert.deepEqual(
        await nodeB.volume(key).read(i * 3, 1),
        pattern(BLOCK_BYTES, 100 + i),
      );
    }
  },
);

behaviour("an assignable changes only by compare-and-set", async ({ disk }) => {
  const store = testStore(disk);
  await store.ensureRoot("frank");
  const ref = encoder.encode("sturdy-ref-bytes");
  const key = await store.createAssignable({ root: "frank" }, {
    content: encoder.encode("v0"),
    sturdyRefs: [ref],
  });
  const first = await store.getValue(key, "assignable");
  assert.equal(first.version, 0);
  assert.deepEqual(first.value.sturdyRefs, [ref]);
  assert.equal(
    await store.setValue(key, 0, {
      content: encoder.encode("v1"),
      sturdyRefs: [],
    }),
    1,
  );
  await assert.rejects(
    store.setValue(key, 0, { content: encoder.encode("lost"), sturdyRefs: [] }),
    (e) => e instanceof VersionMismatchError && e.currentVersion === 1,
  );
  const now = await store.getValue(key, "assignable");
  assert.equal(new TextDecoder().decode(now.value.content), "v1");
  // Two racing setters from two nodes: exactly one wins.
  const other = testStore(disk);
  const results = await Promise.allSettled([
    store.setValue(key, 1, { content: encoder.encode("a"), sturdyRefs: [] }),
    other.setValue(key, 1, { content: encoder.encode("b"), sturdyRefs: [] }),
  ]);
  assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);

  const immutable = await store.createImmutable({ root: "frank" }, {
    content: encoder.encode("fixed"),
    sturdyRefs: [ref, ref],
  });
  const fixed = await store.getValue(immutable, "immutable");
  assert.deepEqual(fixed.value.sturdyRefs, [ref, ref]);
});

behaviour(
  "removing an owner removes its subtree and frees its bytes",
  async ({ disk }) => {
    const store = testStore(disk);
    await store.ensureRoot("gina");
    const parent = await store.createAssignable({ root: "gina" }, {
      content: new Uint8Array(10),
      sturdyRefs: [],
    });
    const child = await store.createBlob({ key: parent }, [
      pattern(20_000, 10),
    ]);
    const grandchild = await store.createVolume({ key: child });
    const writer = await store.volume(grandchild).takeLease();
    await writer.write(0, pattern(2 * BLOCK_BYTES, 11));
    const sibling = await store.createBlob({ root: "gina" }, [pattern(5, 12)]);

    assert.deepEqual(await store.usage(child), {
      kind: "blob",
      ownBytes: 20_000,
      subtreeBytes: 20_000 + 2 * BLOCK_BYTES,
    });
    assert.equal((await store.usage(parent)).subtreeBytes, 10 + 20_000 + 8192);
    assert.equal(
      (await store.rootUsage("gina")).usedBytes,
      10 + 20_000 + 8192 + 5,
    );

    await store.remove(parent);
    for (const key of [parent, child, grandchild]) {
      assert.equal(await store.exists(key), false);
      assert.deepEqual(await disk.list(`${objectIdOf(key)}/`), []);
    }
    await assert.rejects(collect(store.readBlob(child)), ObjectNotFoundError);
    await assert.rejects(
      store.volume(grandchild).read(0, 1),
      ObjectNotFoundError,
    );
    assert.equal((await store.rootUsage("gina")).usedBytes, 5);
    assert.equal(await store.blobSize(sibling), 5);
  },
);

behaviour(
  "writes stop exactly at the quota with a clear error",
  async ({ disk }) => {
    const store = testStore(disk);
    const quota = 10 * BLOCK_BYTES;
    await store.ensureRoot("hank", quota);
    const blob = await store.createBlob({ root: "hank" }, [
      pattern(6 * BLOCK_BYTES, 13),
    ]);
    assert.ok(blob);

    const key = await store.createVolume({ root: "hank" });
    const writer = await store.volume(key).takeLease();
    await writer.write(0, pattern(4 * BLOCK_BYTES, 14)); // exactly at the quota
    assert.equal((await store.rootUsage("hank")).usedBytes, quota);
    await assert.rejects(
      writer.write(100, pattern(BLOCK_BYTES, 15)),
      (e) =>
        e instanceof QuotaExceededError && e.quotaBytes === quota &&
        e.usedBytes === quota &&
        /quota of root "hank" exceeded/.test(e.message),
    );
    // Overwriting a used block needs no new space and still works.
    await writer.write(0, pattern(BLOCK_BYTES, 16));
    assert.deepEqual(await writer.read(100, 1), new Uint8Array(BLOCK_BYTES));
    assert.equal((await store.volume(key).stat()).usedBlocks, 4);

    // A blob one byte too big fails and leaves nothing behind.
    await store.ensureRoot("ivy", 50_000);
    await store.createBlob({ root: "ivy" }, [pattern(49_999, 17)]);
    await assert.rejects(
      store.createBlob({ root: "ivy" }, [pattern(2, 18)]),
      QuotaExceededError,
    );
    await store.createBlob({ root: "ivy" }, [pattern(1, 19)]);
    assert.equal((await store.rootUsage("ivy")).usedBytes, 50_000);

    // A value growing past the quota keeps its old value.
    await store.ensureRoot("jo", 100);
    const value = await store.createAssignable({ root: "jo" }, {
      content: new Uint8Array(60),
      sturdyRefs: [],
    });
    await assert.rejects(
      store.setValue(value, 0, {
        content: new Uint8Array(101),
        sturdyRefs: [],
      }),
      QuotaExceededError,
    );
    assert.equal(
      (await store.getValue(value, "assignable")).value.content.length,
      60,
    );
    await store.setValue(value, 0, {
      content: new Uint8Array(100),
      sturdyRefs: [],
    });
    assert.equal((await store.rootUsage("jo")).usedBytes, 100);
  },
);

behaviour(
  "space freed through another node is usable at once",
  async (backend) => {
    const nodeA = testStore(backend.disk);
    const nodeB = testStore(backend.sibling());
    await nodeA.ensureRoot("max", 30_000);
    const first = await nodeA.createBlob({ root: "max" }, [
      pattern(20_000, 30),
    ]);
    await assert.rejects(
      nodeA.createBlob({ root: "max" }, [pattern(20_000, 31)]),
      QuotaExceededError,
    );
    await nodeB.remove(first);
    // Node A's last view of the root says 20,000 bytes are used.
    await nodeA.createBlob({ root: "max" }, [pattern(20_000, 32)]);
    assert.equal((await nodeB.rootUsage("max")).usedBytes, 20_000);
  },
);

behaviour("taking a lease clears pieces no commit names", async (backend) => {
  const store = testStore(backend.disk);
  await store.ensureRoot("nia");
  const key = await store.createVolume({ root: "nia" });
  const writer = await store.volume(key).takeLease();
  await writer.write(0, pattern(20 * BLOCK_BYTES, 40));
  const id = objectIdOf(key);
  const before = await backend.disk.list(`${id}/`);
  // What a writer killed between its pieces and its head leaves behind.
  await backend.disk.put(`${id}/c/0.00000000deadbeef`, new Uint8Array(10));
  await backend.disk.put(`${id}/p/0.00000000deadbeef`, new Uint8Array(10));
  await store.volume(key).takeLease();
  assert.deepEqual(await backend.disk.list(`${id}/`), before);
  assert.deepEqual(
    await store.volume(key).read(0, 20),
    pattern(20 * BLOCK_BYTES, 40),
  );
});

/** Changes one stored piece of an object on the disk. */
async function tamper(
  backend: TestBackend,
  key: Uint8Array,
  piece: string,
  change: (data: Uint8Array) => Uint8Array,
) {
  const name = `${objectIdOf(key)}/${piece}`;
  const stored = await backend.disk.get(name);
  assert.ok(stored, `${name} exists`);
  await backend.disk.put(name, change(stored.data.slice()));
}

behaviour(
  "a flipped byte, a truncated piece and swapped objects are detected",
  async (backend) => {
    const store = testStore(backend.disk);
    await store.ensureRoot("kim");
    const data = pattern(40_000, 20);
    const flipped = await store.createBlob({ root: "kim" }, [data]);
    await tamper(backend, flipped, "c/1", (d) => {
      d[d.length - 30] ^= 1;
      return d;
    });
    await assert.rejects(collect(store.readBlob(flipped)), CorruptObjectError);

    const truncated = await store.createBlob({ root: "kim" }, [data]);
    await tamper(backend, truncated, "c/2", (d) => d.subarray(0, d.length - 1));
    await assert.rejects(
      collect(store.readBlob(truncated)),
      CorruptObjectError,
    );
    const cut = await store.createBlob({ root: "kim" }, [data]);
    await backend.disk.delete(`${objectIdOf(cut)}/c/2`);
    await assert.rejects(collect(store.readBlob(cut)), CorruptObjectError);

    // Two blobs' chunks swapped on disk, and two chunks of one blob.
    const a = await store.createBlob({ root: "kim" }, [pattern(40_000, 21)]);
    const b = await store.createBlob({ root: "kim" }, [pattern(40_000, 22)]);
    const aChunk = await backend.disk.get(`${objectIdOf(a)}/c/0`);
    const bChunk = await backend.disk.get(`${objectIdOf(b)}/c/0`);
    await backend.disk.put(`${objectIdOf(a)}/c/0`, bChunk!.data);
    await backend.disk.put(`${objectIdOf(b)}/c/0`, aChunk!.data);
    await assert.rejects(collect(store.readBlob(a)), CorruptObjectError);
    await assert.rejects(collect(store.readBlob(b)), CorruptObjectError);
    const c = await store.createBlob({ root: "kim" }, [pattern(40_000, 23)]);
    const c0 = await backend.disk.get(`${objectIdOf(c)}/c/0`);
    const c1 = await backend.disk.get(`${objectIdOf(c)}/c/1`);
    await backend.disk.put(`${objectIdOf(c)}/c/0`, c1!.data);
    await backend.disk.put(`${objectIdOf(c)}/c/1`, c0!.data);
    await assert.rejects(collect(store.readBlob(c)), CorruptObjectError);

    // Volume heads and chunks, and values, are sealed the same way.
    const v = await store.createVolume({ root: "kim" });
    const writer = await store.volume(v).takeLease();
    await writer.write(0, pattern(BLOCK_BYTES, 24));
    const chunkName = (await backend.disk.list(`${objectIdOf(v)}/c/`))[0];
    const chunk = await backend.disk.get(chunkName);
    chunk!.data[100] ^= 0x80;
    await backend.disk.put(chunkName, chunk!.data);
    await assert.rejects(store.volume(v).read(0, 1), CorruptObjectError);
    await tamper(backend, v, "head", (d) => d.subarray(0, 20));
    await assert.rejects(store.volume(v).read(0, 1), CorruptObjectError);

    const x = await store.createImmutable({ root: "kim" }, {
      content: encoder.encode("x"),
      sturdyRefs: [],
    });
    const y = await store.createImmutable({ root: "kim" }, {
      content: encoder.encode("y"),
      sturdyRefs: [],
    });
    const yHead = await backend.disk.get(`${objectIdOf(y)}/head`);
    await backend.disk.put(`${objectIdOf(x)}/head`, yHead!.data);
    await assert.rejects(store.getValue(x, "immutable"), CorruptObjectError);
    // The untouched object still reads.
    assert.equal((await store.getValue(y, "immutable")).value.content[0], 121);
  },
);

behaviour("names on disk reveal nothing of the content", async (backend) => {
  const store = testStore(backend.disk);
  await store.ensureRoot("lee");
  const secret = encoder.encode("a very secret sentence ".repeat(100));
  const key = await store.createBlob({ root: "lee" }, [secret]);
  const id = objectIdOf(key);
  for (const name of await backend.disk.list(`${id}/`)) {
    const stored = await backend.disk.get(name);
    const text = new TextDecoder("latin1").decode(stored!.data);
    assert.ok(!text.includes("secret"), `${name} holds plaintext`);
  }
  assert.ok(!id.includes(Array.from(key, (b) => b.toString(16)).join("")));
});

for (const [name, body] of cases) {
  Deno.test(`storage (local disk): ${name}`, async () => {
    const backend = await localBackend();
    try {
      await body(backend);
    } finally {
      await backend.cleanup();
    }
  });
}
s3Backends(cases);
