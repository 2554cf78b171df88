import assert from "node:assert/strict";
import fc from "fast-check";
import {
  idleLoad,
  loadScore,
  NoWorkerError,
  placeByLinearScan,
  PlacementIndex,
  type WorkerCapacity,
  type WorkerLoad,
} from "../../services/coordinator/placement.ts";

const GiB = 1024 ** 3;
const capacity: WorkerCapacity = {
  memoryBytes: 16 * GiB,
  cores: 8,
  maxGrains: 100,
};

function load(partial: Partial<WorkerLoad>): WorkerLoad {
  return { ...idleLoad(), ...partial };
}

Deno.test("places a grain on the worker with the least memory in use", () => {
  const index = new PlacementIndex();
  index.addWorker("busy", capacity, load({ memoryUsedBytes: 12 * GiB }));
  index.addWorker("idle", capacity, load({ memoryUsedBytes: 1 * GiB }));
  index.addWorker("half", capacity, load({ memoryUsedBytes: 8 * GiB }));
  assert.equal(index.place({ memoryBytes: GiB / 4 }), "idle");
});

Deno.test("CPU load and grain count each steer placement", () => {
  const byCpu = new PlacementIndex();
  byCpu.addWorker("hot", capacity, load({ cpuLoad: 7 }));
  byCpu.addWorker("cool", capacity, load({ cpuLoad: 1 }));
  assert.equal(byCpu.place({ memoryBytes: 0 }), "cool");

  const byGrains = new PlacementIndex();
  byGrains.addWorker("crowded", capacity, load({ grains: 80 }));
  byGrains.addWorker("sparse", capacity, load({ grains: 3 }));
  assert.equal(byGrains.place({ memoryBytes: 0 }), "sparse");
});

Deno.test("placements spread by load, not in turn", () => {
  const index = new PlacementIndex();
  index.addWorker("a", capacity);
  index.addWorker("b", capacity);
  index.addWorker("loaded", capacity, load({ memoryUsedBytes: 8 * GiB }));
  const counts = new Map<string, number>();
  for (let i = 0; i < 20; i++) {
    const id = index.place({ memoryBytes: GiB / 8 });
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  // Round-robin would give the loaded worker a third of the grains.
  assert.equal(counts.get("loaded"), undefined);
  assert.equal(counts.get("a"), 10);
  assert.equal(counts.get("b"), 10);
});

Deno.test("a new load report moves a worker in the order", () => {
  const index = new PlacementIndex();
  index.addWorker("a", capacity);
  index.addWorker("b", capacity, load({ memoryUsedBytes: 4 * GiB }));
  assert.equal(index.place({ memoryBytes: 0 }), "a");
  index.updateLoad("a", load({ memoryUsedBytes: 15 * GiB, cpuLoad: 8 }));
  assert.equal(index.place({ memoryBytes: 0 }), "b");
});

Deno.test("suspicious apps stay away from workers running high-value grains", () => {
  const index = new PlacementIndex();
  index.addWorker(
    "precious",
    capacity,
    load({ highValueGrains: 1, grains: 1 }),
  );
  index.addWorker(
    "busy",
    capacity,
    load({ memoryUsedBytes: 14 * GiB, cpuLoad: 7, grains: 60 }),
  );
  // The precious worker is far less loaded, yet the suspicious grain avoids it.
  for (let i = 0; i < 5; i++) {
    assert.equal(index.place({ memoryBytes: 0, suspicious: true }), "busy");
  }
  assert.equal(index.classOf("busy"), "suspicious");
  // And now a high-value grain avoids the worker running suspicious ones.
  assert.equal(index.place({ memoryBytes: 0, highValue: true }), "precious");
  index.removeWorker("precious");
  assert.throws(
    () => index.place({ memoryBytes: 0, highValue: true }),
    NoWorkerError,
  );
  // A plain grain may go anywhere.
  assert.equal(index.place({ memoryBytes: 0 }), "busy");
});

Deno.test("workers without room are skipped, and none left is a typed error", () => {
  const index = new PlacementIndex();
  index.addWorker("small", { memoryBytes: GiB, cores: 1, maxGrains: 2 });
  index.addWorker("big", capacity, load({ memoryUsedBytes: 10 * GiB }));
  // "small" scores lower but cannot hold 2 GiB.
  assert.equal(index.place({ memoryBytes: 2 * GiB }), "big");
  assert.equal(index.place({ memoryBytes: 0 }), "small");
  assert.equal(index.place({ memoryBytes: 0 }), "small");
  assert.equal(index.classOf("small"), "full");
  index.removeWorker("big");
  assert.throws(() => index.place({ memoryBytes: 0 }), NoWorkerError);
  index.release("small", { memoryBytes: 0 });
  assert.equal(index.place({ memoryBytes: 0 }), "small");
});

Deno.test("bad capacities, loads and needs are refused with the field named", () => {
  const index = new PlacementIndex();
  assert.throws(
    () => index.addWorker("w", { ...capacity, cores: 0 }),
    /capacity\.cores is 0/,
  );
  assert.throws(
    () => index.addWorker("w", capacity, load({ grains: NaN })),
    /load\.grains is NaN/,
  );
  index.addWorker("w", capacity);
  assert.throws(() => index.place({ memoryBytes: -1 }), /memoryBytes is -1/);
  assert.throws(
    () => index.place({ memoryBytes: 0, suspicious: true, highValue: true }),
    RangeError,
  );
  assert.throws(() => index.updateLoad("nope", idleLoad()), /unknown worker/);
  assert.throws(
    () => new PlacementIndex({ memory: 0, cpu: 0, grains: 0 }),
    RangeError,
  );
});

Deno.test("the index picks as well as a full scan, within one bucket", () => {
  const arbitraryWorker = fc.record({
    memoryBytes: fc.integer({ min: 1, max: 64 }),
    cores: fc.integer({ min: 1, max: 32 }),
    maxGrains: fc.integer({ min: 1, max: 50 }),
    used: fc.integer({ min: 0, max: 64 }),
    cpu: fc.integer({ min: 0, max: 32 }),
    grains: fc.integer({ min: 0, max: 50 }),
    flag: fc.constantFrom("none", "high", "suspicious"),
  });
  const arbitraryGrain = fc.record({
    memoryBytes: fc.integer({ min: 0, max: 8 }),
    flag: fc.constantFrom("none", "high", "suspicious"),
  });
  fc.assert(
    fc.property(
      fc.array(arbitraryWorker, { minLength: 1, maxLength: 40 }),
      fc.array(arbitraryGrain, { minLength: 1, maxLength: 60 }),
      (workers, grains) => {
        const index = new PlacementIndex();
        const mirror = new Map<
          string,
          { capacity: WorkerCapacity; load: WorkerLoad }
        >();
        workers.forEach((w, i) => {
          const cap = {
            memoryBytes: w.memoryBytes,
            cores: w.cores,
            maxGrains: w.maxGrains,
          };
          const l = load({
            memoryUsedBytes: Math.min(w.used, w.memoryBytes),
            cpuLoad: Math.min(w.cpu, w.cores),
            grains: Math.min(w.grains, w.maxGrains),
            highValueGrains: w.flag === "high" ? 1 : 0,
            suspiciousGrains: w.flag === "suspicious" ? 1 : 0,
          });
          index.addWorker(`w${i}`, cap, l);
          mirror.set(`w${i}`, { capacity: cap, load: { ...l } });
        });
        for (const g of grains) {
          const needs = {
            memoryBytes: g.memoryBytes,
            highValue: g.flag === "high",
            suspicious: g.flag === "suspicious",
          };
          let expected: string | undefined;
          const scan = new Map(
            [...mirror].map(([id, w]) => [id, {
              capacity: w.capacity,
              load: { ...w.load },
            }]),
          );
          try {
            expected = placeByLinearScan(scan, needs);
          } catch (error) {
            assert.ok(error instanceof NoWorkerError);
          }
          if (expected === undefined) {
            assert.throws(() => index.place(needs), NoWorkerError);
            continue;
          }
          const chosen = index.place(needs);
          const best = mirror.get(expected)!;
          const got = mirror.get(chosen)!;
          if (needs.suspicious) assert.equal(got.load.highValueGrains, 0);
          if (needs.highValue) assert.equal(got.load.suspiciousGrains, 0);
          const bestScore = loadScore(best.capacity, best.load);
          const gotScore = loadScore(got.capacity, got.load);
          assert.ok(
            gotScore <= bestScore + 1 / 1024,
            `index chose ${chosen} (${gotScore}) over ${expected} (${bestScore})`,
          );
          got.load.memoryUsedBytes += needs.memoryBytes;
          got.load.grains += 1;
          if (needs.highValue) got.load.highValueGrains += 1;
          if (needs.suspicious) got.load.suspiciousGrains += 1;
          assert.deepEqual(index.load(chosen), got.load);
        }
      },
    ),
    { numRuns: 200, seed: 8 },
  );
});
