// The coordinator's decisions against real shared state (SQLite files opened
// by several coordinators and processes). Workers here are in-process
// recorders of the calls a coordinator makes: the worker role is tested in
// its own folder, and the cluster tests drive real ones.
import assert from "node:assert/strict";
import { Logger } from "../../services/runtime/log.ts";
import {
  Coordinator,
  GrainStartError,
  type WorkerHandle,
} from "../../services/coordinator/coordinator.ts";
import { SqliteStateStore } from "../../services/coordinator/shared_state.ts";
import type { GrainNeeds } from "../../services/coordinator/placement.ts";

const GiB = 1024 ** 3;
const quiet = new Logger({ role: "coordinator", level: "error" });

/** Records grain starts and stops per worker; can be told to fail. */
class RecordingWorkers {
  readonly running = new Map<string, Map<string, number>>();
  readonly starts: {
    grain: string;
    worker: string;
    epoch: number;
    spec: string;
  }[] = [];
  readonly failing = new Set<string>();

  handle(workerId: string): WorkerHandle {
    const grains = this.running.get(workerId) ?? new Map<string, number>();
    this.running.set(workerId, grains);
    return {
      startGrain: (
        grainId: string,
        epoch: number,
        _needs: GrainNeeds,
        spec: Uint8Array,
      ) => {
        if (this.failing.has(workerId)) {
          return Promise.reject(new Error(`${workerId} is broken`));
        }
        grains.set(grainId, epoch);
        this.starts.push({
          grain: grainId,
          worker: workerId,
          epoch,
          spec: new TextDecoder().decode(spec),
        });
        return Promise.resolve();
      },
      stopGrain: (grainId: string) => {
        grains.delete(grainId);
        return Promise.resolve();
      },
    };
  }

  /** The worker running a grain; asserts there is exactly one. */
  whereIs(grainId: string): string {
    const hosts = [...this.running].filter(([, g]) => g.has(grainId));
    assert.equal(hosts.length, 1, `${grainId} runs on ${hosts.length}`);
    return hosts[0][0];
  }
}

interface Fixture {
  dir: string;
  clock: { ms: number };
  workers: RecordingWorkers;
  coordinator(): Coordinator;
  beat(coordinators: Coordinator[], ids: string[]): void;
  cleanup(): Promise<void>;
}

async function fixture(): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "coordinator-test-" });
  const clock = { ms: 0 };
  const workers = new RecordingWorkers();
  const stores: SqliteStateStore[] = [];
  return {
    dir,
    clock,
    workers,
    coordinator() {
      // Each coordinator opens the file on its own, as a process would.
      const state = new SqliteStateStore(`${dir}/grains.sqlite`);
      stores.push(state);
      return new Coordinator({
        state,
        connect: (id) => workers.handle(id),
        log: quiet,
        heartbeatTimeoutMs: 1000,
        now: () => clock.ms,
      });
    },
    beat(coordinators, ids) {
      for (const coordinator of coordinators) {
        for (const id of ids) {
          coordinator.heartbeat({
            workerId: id,
            capacity: { memoryBytes: 8 * GiB, cores: 4, maxGrains: 100 },
            load: {
              memoryUsedBytes: (workers.running.get(id)?.size ?? 0) * GiB / 4,
              cpuLoad: 0,
              grains: workers.running.get(id)?.size ?? 0,
              highValueGrains: 0,
              suspiciousGrains: 0,
            },
          });
        }
      }
    },
    async cleanup() {
      for (const store of stores) store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const needs = { memoryBytes: GiB / 4 };

Deno.test("grains spread over workers and stay put when opened again", async () => {
  const f = await fixture();
  try {
    const c = f.coordinator();
    f.beat([c], ["w1", "w2", "w3"]);
    for (let i = 0; i < 9; i++) await c.openGrain(`g${i}`, needs);
    for (const id of ["w1", "w2", "w3"]) {
      assert.equal(f.workers.running.get(id)!.size, 3);
    }
    const again = await c.openGrain("g4", needs);
    assert.equal(again.epoch, 1);
    assert.equal(f.workers.starts.length, 9);
  } finally {
    await f.cleanup();
  }
});

Deno.test("another coordinator carries on where a dead one stopped", async () => {
  const f = await fixture();
  try {
    let first: Coordinator | undefined = f.coordinator();
    f.beat([first], ["w1", "w2"]);
    const before = await first.openGrain("grain-a", needs);
    first = undefined; // its process died: nothing of it is used again

    const second = f.coordinator();
    f.beat([second], ["w1", "w2"]);
    const after = await second.openGrain("grain-a", needs);
    assert.deepEqual(after, before);
    assert.equal(f.workers.starts.length, 1);
    await second.openGrain("grain-b", needs);
    assert.equal(f.workers.starts.length, 2);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a dead worker's grains restart elsewhere exactly once", async () => {
  const f = await fixture();
  try {
    const a = f.coordinator();
    const b = f.coordinator();
    f.beat([a, b], ["w1", "w2", "w3"]);
    const spec = (i: number) => new TextEncoder().encode(`volume-of-g${i}`);
    for (let i = 0; i < 12; i++) {
      await (i % 2 ? a : b).openGrain(`g${i}`, needs, spec(i));
    }
    const onW1 = [...f.workers.running.get("w1")!.keys()];
    assert.ok(onW1.length > 0);

    f.clock.ms += 1500;
    f.workers.running.get("w1")!.clear(); // kill -9: its grains are gone
    f.beat([a, b], ["w2", "w3"]);
    const [movedA, movedB] = await Promise.all([
      a.checkWorkers(),
      b.checkWorkers(),
    ]);
    assert.equal(movedA.length, onW1.length);
    assert.equal(movedB.length, onW1.length);
    for (const grain of onW1) {
      const host = f.workers.whereIs(grain);
      assert.notEqual(host, "w1");
      const record = await a.locate(grain);
      assert.equal(record!.workerId, host);
      assert.equal(record!.epoch, 2, "moved once, not once per coordinator");
      const restart = f.workers.starts.findLast((s) => s.grain === grain)!;
      assert.equal(restart.spec, `volume-of-${grain}`);
    }
    assert.equal(f.workers.starts.length, 12 + onW1.length);
  } finally {
    await f.cleanup();
  }
});

Deno.test("two coordinators opening one grain at once start it once", async () => {
  const f = await fixture();
  try {
    const a = f.coordinator();
    const b = f.coordinator();
    f.beat([a, b], ["w1", "w2"]);
    const [ra, rb] = await Promise.all([
      a.openGrain("shared", needs),
      b.openGrain("shared", needs),
    ]);
    assert.deepEqual(ra, rb);
    assert.equal(f.workers.starts.length, 1);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a worker that fails to start a grain is passed over", async () => {
  const f = await fixture();
  try {
    const c = f.coordinator();
    f.beat([c], ["bad", "good"]);
    f.workers.failing.add("bad");
    for (let i = 0; i < 4; i++) {
      const record = await c.openGrain(`g${i}`, needs);
      assert.equal(record.workerId, "good");
    }
  } finally {
    await f.cleanup();
  }
});

Deno.test("draining a worker starts its grains elsewhere before stopping them", async () => {
  const f = await fixture();
  try {
    const c = f.coordinator();
    f.beat([c], ["w1", "w2"]);
    for (let i = 0; i < 6; i++) await c.openGrain(`g${i}`, needs);
    const leaving = [...f.workers.running.get("w1")!.keys()];
    const moved = await c.drainWorker("w1");
    assert.equal(moved.length, leaving.length);
    assert.equal(f.workers.running.get("w1")!.size, 0);
    for (const grain of leaving) assert.equal(f.workers.whereIs(grain), "w2");
    // New grains avoid the drained worker even while it still heartbeats.
    f.beat([c], ["w1", "w2"]);
    assert.equal((await c.openGrain("fresh", needs)).workerId, "w2");
  } finally {
    await f.cleanup();
  }
});

Deno.test("grain IDs are checked", async () => {
  const f = await fixture();
  try {
    const c = f.coordinator();
    await assert.rejects(c.openGrain("../etc", needs), /grain ID/);
    await assert.rejects(c.openGrain("g", needs), /no live worker/);
  } finally {
    await f.cleanup();
  }
});

Deno.test("compare-and-set holds across processes sharing the state file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "shared-state-test-" });
  try {
    const file = `${dir}/state.sqlite`;
    new SqliteStateStore(file).close();
    const script = new URL("./testdata/cas_counter.ts", import.meta.url);
    const processes = [0, 1, 2].map(() =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          `--allow-read=${dir}`,
          `--allow-write=${dir}`,
          script.pathname,
          file,
          "40",
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn()
    );
    const results = await Promise.all(processes.map((p) => p.output()));
    for (const result of results) {
      assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
    }
    const store = new SqliteStateStore(file);
    const counter = await store.get("counter");
    store.close();
    assert.equal(new TextDecoder().decode(counter!.value), "120");
    assert.equal(counter!.version, 120);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a grain whose start failed everywhere is not recorded as running", async () => {
  const f = await fixture();
  try {
    const c = f.coordinator();
    f.beat([c], ["w1", "w2"]);
    f.workers.failing.add("w1");
    f.workers.failing.add("w2");
    await assert.rejects(c.openGrain("doomed", needs), GrainStartError);
    assert.equal((await c.locate("doomed"))!.workerId, null);
    f.workers.failing.clear();
    f.beat([c], ["w1", "w2"]); // failed workers are placed again after this
    const record = await c.openGrain("doomed", needs);
    assert.equal(f.workers.whereIs("doomed"), record.workerId);
  } finally {
    await f.cleanup();
  }
});
