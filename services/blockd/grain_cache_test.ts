import assert from "node:assert/strict";
import fc from "fast-check";
import { BLOCK_BYTES, type BlockStore, LeaseError } from "./block_store.ts";
import { DirectoryBlockStore } from "./directory_store.ts";
import { GrainCache } from "./grain_cache.ts";
import { NbdClient } from "./nbd_client.ts";
import { makeWorkspace, quietLogger, startDaemon } from "./_testing.ts";

async function withStore(
  sizeBlocks: number,
  body: (store: DirectoryBlockStore, root: string) => Promise<void>,
) {
  const root = await Deno.makeTempDir({ prefix: "blockd-cache-test-" });
  await DirectoryBlockStore.create(`${root}/volume`, sizeBlocks);
  const store = await DirectoryBlockStore.open(`${root}/volume`, {
    leaseTtlMs: 60_000,
  });
  try {
    await body(store, root);
  } finally {
    await store.close();
    await Deno.remove(root, { recursive: true });
  }
}

function openCache(
  store: BlockStore,
  root: string,
  epoch: number,
  tuning = {},
) {
  return GrainCache.open({
    grain: "g1",
    cacheDirectory: `${root}/cache`,
    store,
    epoch,
    log: quietLogger(),
    tuning: { maxUnflushedMs: 3_600_000, ...tuning },
  });
}

function filled(length: number, value: number): Uint8Array {
  return new Uint8Array(length).fill(value);
}

Deno.test("cache matches a plain byte array under random unaligned writes, zeroes and flushes", async () => {
  const sizeBlocks = 24;
  const sizeBytes = sizeBlocks * BLOCK_BYTES;
  const operation = fc.oneof(
    fc.record({
      kind: fc.constant("write" as const),
      offset: fc.integer({ min: 0, max: sizeBytes - 1 }),
      length: fc.integer({ min: 1, max: 3 * BLOCK_BYTES }),
      value: fc.integer({ min: 1, max: 255 }),
    }),
    fc.record({
      kind: fc.constant("zero" as const),
      offset: fc.integer({ min: 0, max: sizeBytes - 1 }),
      length: fc.integer({ min: 1, max: 6 * BLOCK_BYTES }),
      value: fc.constant(0),
    }),
    fc.record({
      kind: fc.constantFrom("flush" as const, "reopen" as const),
      offset: fc.constant(0),
      length: fc.constant(0),
      value: fc.constant(0),
    }),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(operation, { maxLength: 25 }), async (ops) => {
      await withStore(sizeBlocks, async (store, root) => {
        let lease = await store.acquireLease("w", 0);
        let cache = await openCache(store, root, lease.epoch);
        const model = new Uint8Array(sizeBytes);
        try {
          for (const op of ops) {
            const length = Math.min(op.length, sizeBytes - op.offset);
            if (op.kind === "write") {
              await cache.write(op.offset, filled(length, op.value), false);
              model.fill(op.value, op.offset, op.offset + length);
            } else if (op.kind === "zero") {
              await cache.zero(op.offset, length, false);
              model.fill(0, op.offset, op.offset + length);
            } else if (op.kind === "flush") {
              await cache.flush();
            } else {
              // A clean close and a reopen by the next lease keeps data.
              await cache.close();
              lease = await store.acquireLease("w", 0);
              cache = await openCache(store, root, lease.epoch);
            }
          }
          const all = new Uint8Array(sizeBytes);
          await cache.read(0, all);
          assert.deepEqual(all, model);
          await cache.flush();
          assert.deepEqual(await store.readBlocks(0, sizeBlocks), model);
        } finally {
          await cache.close();
        }
      });
    }),
    { numRuns: 60, seed: 11 },
  );
});

Deno.test("a crash drops the cache and flushed data comes back from the store", async () => {
  await withStore(64, async (store, root) => {
    const lease = await store.acquireLease("w", 0);
    const cache = await openCache(store, root, lease.epoch);
    await cache.write(0, filled(8192, 0x41), false);
    await cache.flush();
    await cache.write(8192, filled(4096, 0x42), false);
    cache.abandon();

    const again = await store.acquireLease("w", 0);
    const reopened = await openCache(store, root, again.epoch);
    try {
      assert.equal(reopened.stats().presentBlocks, 0);
      const back = new Uint8Array(12288);
      await reopened.read(0, back);
      assert.deepEqual(back.subarray(0, 8192), filled(8192, 0x41));
      // Never flushed, never written back: lost, as after a power cut.
      assert.deepEqual(back.subarray(8192), filled(4096, 0));
    } finally {
      await reopened.close();
    }
  });
});

Deno.test("cold reads at odd offsets come from the store, then from the cache", async () => {
  await withStore(64, async (store, root) => {
    const lease = await store.acquireLease("w", 0);
    const content = new Uint8Array(64 * 4096).map((_, i) => (i * 13) % 251);
    await store.writeBlocks(0, content);
    const cache = await openCache(store, root, lease.epoch, {
      readAheadBlocks: 4,
    });
    try {
      for (const [offset, length] of [[5000, 10_000], [40_000, 3], [0, 1]]) {
        const cold = new Uint8Array(length);
        await cache.read(offset, cold);
        assert.deepEqual(cold, content.subarray(offset, offset + length));
      }
      const reads = cache.stats().storeReads;
      const warm = new Uint8Array(10_000);
      await cache.read(5000, warm);
      assert.deepEqual(warm, content.subarray(5000, 15_000));
      assert.equal(cache.stats().storeReads, reads);
    } finally {
      await cache.close();
    }
  });
});

Deno.test("a clean close keeps the cache only for the next lease epoch", async () => {
  await withStore(64, async (store, root) => {
    let lease = await store.acquireLease("w", 0);
    let cache = await openCache(store, root, lease.epoch);
    await cache.write(0, filled(16384, 7), false);
    await cache.close();

    lease = await store.acquireLease("w", 0);
    cache = await openCache(store, root, lease.epoch);
    assert.equal(cache.stats().presentBlocks, 4);
    await cache.close();

    // Somebody else held the volume in between: the cache may be stale.
    await store.acquireLease("w", 0);
    lease = await store.acquireLease("w", 0);
    cache = await openCache(store, root, lease.epoch);
    assert.equal(cache.stats().presentBlocks, 0);
    await cache.close();
  });
});

Deno.test("background write-back makes writes durable without a flush", async () => {
  await withStore(64, async (store, root) => {
    const lease = await store.acquireLease("w", 0);
    const cache = await openCache(store, root, lease.epoch, {
      maxUnflushedMs: 100,
    });
    try {
      await cache.write(4096, filled(4096, 0x99), false);
      const deadline = Date.now() + 10_000;
      while (cache.stats().dirtyBlocks > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.equal(cache.stats().dirtyBlocks, 0);
      assert.deepEqual(await store.readBlocks(1, 1), filled(4096, 0x99));
    } finally {
      await cache.close();
    }
  });
});

Deno.test("a write landing during a fetch of the same block wins", async () => {
  await withStore(16, async (store, root) => {
    const lease = await store.acquireLease("w", 0);
    await store.writeBlocks(0, filled(4 * 4096, 1));
    // A store whose reads wait until the test lets them go.
    const release = Promise.withResolvers<void>();
    const slow: BlockStore = {
      sizeBlocks: store.sizeBlocks,
      readBlocks: async (first, count) => {
        const data = await store.readBlocks(first, count);
        await release.promise;
        return data;
      },
      writeBlocks: (first, data) => store.writeBlocks(first, data),
      zeroBlocks: (first, count) => store.zeroBlocks(first, count),
      sync: () => store.sync(),
      acquireLease: (holder, waitMs) => store.acquireLease(holder, waitMs),
      readAccessLog: () => store.readAccessLog(),
      writeAccessLog: (data) => store.writeAccessLog(data),
      allocatedBlocks: () => store.allocatedBlocks(),
      close: () => Promise.resolve(),
    };
    const cache = await openCache(slow, root, lease.epoch);
    try {
      const target = new Uint8Array(4 * 4096);
      const reading = cache.read(0, target);
      // Issued while the fetch is in flight; it must not be overwritten by
      // the older data the fetch brings.
      const writing = cache.write(4096, filled(4096, 2), false);
      release.resolve();
      await Promise.all([reading, writing]);
      const after = new Uint8Array(4 * 4096);
      await cache.read(0, after);
      assert.deepEqual(after.subarray(4096, 8192), filled(4096, 2));
      assert.deepEqual(after.subarray(0, 4096), filled(4096, 1));
    } finally {
      await cache.close();
    }
  });
});

Deno.test("a failed write-back fails the flush and keeps the blocks dirty", async () => {
  await withStore(1024, async (store, root) => {
    const lease = await store.acquireLease("w", 0);
    let failures = 1;
    const flaky: BlockStore = {
      sizeBlocks: store.sizeBlocks,
      readBlocks: (first, count) => store.readBlocks(first, count),
      writeBlocks: (first, data) => {
        if (first >= 512 && failures-- > 0) {
          return Promise.reject(new Error("store unreachable"));
        }
        return store.writeBlocks(first, data);
      },
      zeroBlocks: (first, count) => store.zeroBlocks(first, count),
      sync: () => store.sync(),
      acquireLease: (holder, waitMs) => store.acquireLease(holder, waitMs),
      readAccessLog: () => store.readAccessLog(),
      writeAccessLog: (data) => store.writeAccessLog(data),
      allocatedBlocks: () => store.allocatedBlocks(),
      close: () => Promise.resolve(),
    };
    const cache = await openCache(flaky, root, lease.epoch, {
      maxRunBlocks: 16,
    });
    try {
      // Many runs, so that several are in flight when one fails.
      await cache.write(0, filled(1024 * 4096, 0x3c), false);
      await assert.rejects(cache.flush(), /store unreachable/);
      assert.ok(cache.stats().dirtyBlocks >= 16);
      await cache.flush();
      assert.equal(cache.stats().dirtyBlocks, 0);
      assert.deepEqual(
        await store.readBlocks(0, 1024),
        filled(1024 * 4096, 0x3c),
      );
    } finally {
      await cache.close();
    }
  });
});

Deno.test("the lease: a second holder waits for expiry, then fences the first", async () => {
  const root = await Deno.makeTempDir({ prefix: "blockd-lease-test-" });
  try {
    await DirectoryBlockStore.create(`${root}/v`, 8);
    const a = await DirectoryBlockStore.open(`${root}/v`, { leaseTtlMs: 300 });
    const b = await DirectoryBlockStore.open(`${root}/v`, { leaseTtlMs: 300 });
    const leaseA = await a.acquireLease("a", 0);
    await assert.rejects(b.acquireLease("b", 0), LeaseError);
    const leaseB = await b.acquireLease("b", 5_000);
    assert.equal(leaseB.epoch, leaseA.epoch + 1);
    await assert.rejects(a.writeBlocks(0, new Uint8Array(4096)), LeaseError);
    await assert.rejects(leaseA.renew(), LeaseError);
    await b.writeBlocks(0, filled(4096, 3));
    await leaseB.release();
    await a.close();
    await b.close();
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("cold start: the next start prefetches what the grain read first", async () => {
  const workspace = await makeWorkspace();
  const sizeBytes = 64 * 1024 * 1024;
  const blocks = [0, 1, 2, 500, 501, 9000, 12000, 16000];
  try {
    const first = startDaemon(workspace, sizeBytes);
    const grain = await first.startGrain("g1");
    const client = await NbdClient.connect(grain.socketPath, "g1");
    for (const block of blocks) {
      assert.equal((await client.read(block * 4096, 4096)).errno, 0);
    }
    await client.disconnect();
    await first.stop();

    // Another worker: empty cache, the access log from the store.
    const second = startDaemon(
      workspace,
      sizeBytes,
      {},
      `${workspace.root}/cache-b`,
    );
    const moved = await second.startGrain("g1");
    try {
      assert.equal(moved.prefetchBlocks, blocks.length);
      await moved.prefetched;
      const before = moved.stats();
      assert.ok(before.presentBlocks >= blocks.length);
      const again = await NbdClient.connect(moved.socketPath, "g1");
      for (const block of blocks) {
        assert.equal((await again.read(block * 4096, 4096)).errno, 0);
      }
      await again.disconnect();
      assert.equal(moved.stats().storeReads, before.storeReads);
    } finally {
      await second.stop();
    }
  } finally {
    await workspace.remove();
  }
});
