/**
 * Cluster benchmarks. Ends with `result NAME VALUE` lines:
 *
 * - `placement_per_second`: grain placements one coordinator decides for a
 *   simulated cluster of 65,536 workers, in process, with the bucketed
 *   index (target >= 10,000). `placement_linear_scan_per_second` is the
 *   baseline measured in the same run: the same decision by scanning every
 *   worker.
 * - `failover_seconds`: median time from SIGKILL to every process of a real
 *   worker (services/worker/main.ts, its sandboxes and apps) to each of its
 *   grains answering again (the app's UiView.getViewInfo over RPC, through
 *   the worker) on another real worker, with two coordinator processes at
 *   their default 3 s heartbeat timeout. Storage volumes are not part of
 *   it yet: a grain restarts on the new worker's local volume.
 * - `failover_standin_seconds`: median time from a worker's SIGKILL to each
 *   of its grains answering again from another worker, with two real
 *   coordinator processes at their default heartbeat timeout (3 s) and
 *   stand-in worker processes (tests/cluster/harness.ts). It measures
 *   detection, re-placement and the restart call alone, without a real
 *   grain's boot, for comparison with `failover_seconds`.
 *
 * @module
 */
import {
  type GrainNeeds,
  idleLoad,
  placeByLinearScan,
  PlacementIndex,
  type WorkerCapacity,
  type WorkerLoad,
} from "../services/coordinator/placement.ts";
import {
  askGrain,
  CoordinatorClient,
  type CoordinatorProcess,
  eventually,
  grainAnswers,
  installPackage,
  killGroup,
  type RealWorkerProcess,
  removeCgroups,
  startCoordinator,
  startRealWorker,
  startWorker,
  unmountUnder,
  type WorkerProcess,
} from "../tests/cluster/harness.ts";
import { buildTestApps } from "../tests/apps/build.ts";
import { encodeGrainSpec } from "../services/worker/service.ts";

const WORKERS = 65_536;
const GiB = 1024 ** 3;

/** A small deterministic generator, so that every run places the same. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function simulatedCluster(): Map<
  string,
  { capacity: WorkerCapacity; load: WorkerLoad }
> {
  const next = random(65536);
  const workers = new Map<
    string,
    { capacity: WorkerCapacity; load: WorkerLoad }
  >();
  for (let i = 0; i < WORKERS; i++) {
    const memoryBytes = (8 + Math.floor(next() * 7) * 8) * GiB;
    const cores = 4 + Math.floor(next() * 5) * 4;
    const capacity = { memoryBytes, cores, maxGrains: 1000 };
    const grains = Math.floor(next() * 200);
    const load: WorkerLoad = {
      ...idleLoad(),
      memoryUsedBytes: Math.floor(next() * 0.7 * memoryBytes),
      cpuLoad: next() * cores * 0.8,
      grains,
      highValueGrains: next() < 0.1 ? 1 : 0,
      suspiciousGrains: 0,
    };
    if (load.highValueGrains === 0 && next() < 0.05) load.suspiciousGrains = 1;
    workers.set(`worker-${i}`, { capacity, load });
  }
  return workers;
}

function grainStream(count: number): GrainNeeds[] {
  const next = random(7);
  const grains: GrainNeeds[] = [];
  for (let i = 0; i < count; i++) {
    const roll = next();
    grains.push({
      memoryBytes: (64 + Math.floor(next() * 448)) * 1024 * 1024,
      suspicious: roll < 0.02,
      highValue: roll > 0.95,
    });
  }
  return grains;
}

function placementsPerSecond(
  place: (needs: GrainNeeds) => string,
  grains: GrainNeeds[],
): number {
  const start = performance.now();
  for (const needs of grains) place(needs);
  const seconds = (performance.now() - start) / 1000;
  return grains.length / seconds;
}

function benchPlacement(): { indexed: number; linear: number } {
  const cluster = simulatedCluster();
  const index = new PlacementIndex();
  for (const [id, worker] of cluster) {
    index.addWorker(id, worker.capacity, worker.load);
  }
  // Warm up the JIT on a copy of the work, then measure.
  index.place({ memoryBytes: 0 });
  const indexed = placementsPerSecond(
    (needs) => index.place(needs),
    grainStream(200_000),
  );
  const linear = placementsPerSecond(
    (needs) => placeByLinearScan(cluster, needs),
    grainStream(300),
  );
  return { indexed, linear };
}

/** See `failover_standin_seconds` in the module comment. */
async function benchFailover(): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "bench-cluster-" });
  const coordinators: CoordinatorProcess[] = [];
  const workers: WorkerProcess[] = [];
  const clients: CoordinatorClient[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      coordinators.push(
        await startCoordinator({
          stateFile: `${dir}/grains.sqlite`,
          heartbeatTimeoutMs: 3000,
          checkIntervalMs: 500,
        }),
      );
    }
    const ports = coordinators.map((c) => c.port);
    for (let i = 0; i < 4; i++) workers.push(startWorker(`w${i}`, ports));
    for (const c of coordinators) {
      clients.push(await CoordinatorClient.connect(c.port));
    }
    let attempt = 0;
    await eventually("every worker takes grains", async () => {
      attempt++;
      const seen = new Set<string>();
      try {
        for (let i = 0; i < 16; i++) {
          const client = clients[i % 2];
          seen.add(
            (await client.openGrain(`warm${attempt}x${i}`, "")).workerId,
          );
        }
      } catch {
        // Workers are still sending their first heartbeats.
      }
      return seen.size === workers.length ? true : undefined;
    });
    for (let i = 0; i < 64; i++) {
      await clients[i % 2].openGrain(`grain${i}`, `spec${i}`);
    }
    const victim = workers[0];
    const grains = (await clients[0].listGrains()).filter((g) =>
      g.workerId === victim.id
    );
    const killedAt = performance.now();
    killGroup(victim.process);
    const seconds = await Promise.all(grains.map(async (grain) => {
      await eventually(`${grain.grainId} answers`, async () => {
        const answer = await askGrain(workers, grain.grainId);
        return answer !== undefined && answer.workerId !== victim.id
          ? true
          : undefined;
      }, 60_000);
      return (performance.now() - killedAt) / 1000;
    }));
    seconds.sort((a, b) => a - b);
    console.log(
      `failover: ${grains.length} grains of a killed worker answered ` +
        `elsewhere after ${seconds[0].toFixed(2)}-` +
        `${seconds[seconds.length - 1].toFixed(2)} s (stand-in workers)`,
    );
    return seconds[seconds.length >> 1];
  } finally {
    for (const client of clients) client.close();
    for (const w of workers) await w.process.stop();
    for (const c of coordinators) await c.process.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** See `failover_seconds` in the module comment. */
async function benchRealFailover(): Promise<number> {
  const apps = await buildTestApps();
  const spk = await Deno.readFile(apps.notesSpk);
  const dir = await Deno.makeTempDir({ prefix: "bench-failover-" });
  // Grains run as their own uids and must reach the workers' folders.
  await Deno.chmod(dir, 0o755);
  const coordinators: CoordinatorProcess[] = [];
  const workers: RealWorkerProcess[] = [];
  const clients: CoordinatorClient[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      coordinators.push(
        await startCoordinator({
          stateFile: `${dir}/grains.sqlite`,
          heartbeatTimeoutMs: 3000,
          checkIntervalMs: 500,
        }),
      );
    }
    const ports = coordinators.map((c) => c.port);
    let packageId = "";
    for (let i = 0; i < 3; i++) {
      const worker = await startRealWorker({
        id: `worker${i}`,
        index: i,
        stateDir: `${dir}/worker${i}`,
        coordinatorPorts: ports,
      });
      workers.push(worker);
      packageId = await installPackage(worker.port, spk);
    }
    for (const c of coordinators) {
      clients.push(await CoordinatorClient.connect(c.port));
    }
    const portOf = new Map(workers.map((w) => [w.id, w.port]));
    const spec = encodeGrainSpec({ packageId, isNew: true });
    // Grains are opened until the first worker runs at least four.
    const grains: string[] = [];
    await eventually("grains run on every worker", async () => {
      try {
        const id = `grain${grains.length}`;
        await clients[grains.length % 2].openGrain(id, spec, 64 << 20);
        grains.push(id);
      } catch {
        // Workers are still sending their first heartbeats.
      }
      const placed = await clients[0].listGrains();
      const onFirst = placed.filter((g) => g.workerId === "worker0").length;
      return onFirst >= 4 && grains.length >= 10 ? true : undefined;
    }, 120_000);
    const placed = await clients[0].listGrains();
    const victimGrains = placed.filter((g) => g.workerId === "worker0");
    for (const g of placed) {
      if (!(await grainAnswers(portOf.get(g.workerId)!, g.grainId))) {
        throw new Error(`grain ${g.grainId} does not answer before the kill`);
      }
    }
    const killedAt = performance.now();
    killGroup(workers[0].process);
    const seconds = await Promise.all(victimGrains.map(async (grain) => {
      await eventually(`${grain.grainId} answers elsewhere`, async () => {
        const now = (await clients[1].listGrains()).find((g) =>
          g.grainId === grain.grainId
        );
        if (now === undefined || now.workerId === "worker0") return undefined;
        return await grainAnswers(portOf.get(now.workerId)!, grain.grainId)
          ? true
          : undefined;
      }, 120_000);
      return (performance.now() - killedAt) / 1000;
    }));
    seconds.sort((a, b) => a - b);
    console.log(
      `failover: ${seconds.length} grains of a killed real worker answered ` +
        `on another after ${seconds[0].toFixed(2)}-` +
        `${seconds[seconds.length - 1].toFixed(2)} s`,
    );
    return seconds[seconds.length >> 1];
  } finally {
    for (const client of clients) client.close();
    for (const w of workers) await w.process.stop();
    for (const c of coordinators) await c.process.stop();
    await unmountUnder(dir);
    await removeCgroups(workers.map((w) => w.cgroupName));
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const { indexed, linear } = benchPlacement();
  console.log(
    `placement: ${WORKERS} workers, index ${indexed.toFixed(0)}/s, ` +
      `linear scan ${linear.toFixed(0)}/s (${(indexed / linear).toFixed(0)}x)`,
  );
  const failover = await benchFailover();
  const realFailover = await benchRealFailover();
  console.log(`result placement_per_second ${indexed.toFixed(0)}`);
  console.log(`result placement_linear_scan_per_second ${linear.toFixed(0)}`);
  console.log(`result failover_seconds ${realFailover.toFixed(3)}`);
  console.log(`result failover_standin_seconds ${failover.toFixed(3)}`);
}
