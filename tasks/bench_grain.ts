/**
 * Grain benchmarks, baseline measured in the same run:
 *
 * - `grain_start_vs_bare`: the median of 20 cold starts of the notes HTTP
 *   app as a grain until its first HTTP response through the supervisor,
 *   divided by the median of 20 starts of the same notes program run
 *   directly (no sandbox, no volume, no bridge) until its first response.
 *   A grain start here is what the worker does by default: it takes one of
 *   the package's warm sandboxes (namespaces, mounts, uid, cgroup and fd 3
 *   made ahead of time, the pool topped up after each start and waited for
 *   outside the timed span), binds the grain's fresh volume into it, and
 *   lets the app start from nothing: the app process, the bridge and the
 *   volume are cold, the sandbox is not.
 * - `grain_start_unwarmed_vs_bare`: the same with no warm pool: the
 *   sandbox is built on the start's path.
 * - idle grains per worker and memory per grain: starts `IDLE_GRAINS`
 *   idle notes grains, each answering one request, and measures what each
 *   costs: its cgroup's memory plus the worker's own growth per grain.
 *   How many such grains the machine's available memory holds is then
 *   computed from that cost (the run does not exhaust the machine; the
 *   worker's uid range and kernel namespace limits are not counted).
 *
 * ```sh
 * deno task bench:grain
 * ```
 *
 * @module
 */
import { Logger } from "../services/runtime/log.ts";
import { GrainManager } from "../services/worker/grains.ts";
import { buildTestApps } from "../tests/apps/build.ts";

const STARTS = 20;
const IDLE_GRAINS = Number(Deno.env.get("BENCH_IDLE_GRAINS") ?? 60);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? sorted[middle]
    : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Starts the notes program bare and times it to its first response. */
async function bareStart(binary: string, port: number): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "bench-bare-" });
  const started = performance.now();
  const child = new Deno.Command(binary, {
    args: [String(port)],
    env: { NOTES_DIR: `${dir}/notes` },
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    for (;;) {
      try {
        const response = await fetch(`http://127.0.0.1:${port}/`);
        await response.arrayBuffer();
        if (response.ok) return performance.now() - started;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
}

async function main() {
  const apps = await buildTestApps();
  const stateDir = await Deno.makeTempDir({ prefix: "bench-grain-" });
  const manager = await GrainManager.open({
    stateDir,
    uidFirst: 70_000,
    uidCount: Math.max(IDLE_GRAINS, STARTS) + 10,
    cgroupName: `blackrock-bench-${Deno.pid}`,
    defaultMemoryBytes: 64 << 20,
    tmpBytes: 4 << 20,
  }, new Logger({ role: "bench", level: "error" }));
  try {
    const pkg = await manager.installPackage(
      await Deno.readFile(apps.notesSpk),
    );

    const request = () => new Request("http://grain.bench/");
    const coldStart = async (grainId: string, warm: boolean) => {
      if (warm) {
        await manager.warm(pkg.packageId, { isNew: true, count: 1 });
        // Let the sandbox finish its set-up and block before timing.
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      const started = performance.now();
      const supervisor = await manager.start({
        grainId,
        packageId: pkg.packageId,
        isNew: true,
      });
      const session = await supervisor.newWebSession({ displayName: "bench" });
      const response = await supervisor.fetch(session, request());
      await response.arrayBuffer();
      if (!response.ok) throw new Error(`grain answered ${response.status}`);
      const elapsed = performance.now() - started;
      session.client.close();
      await manager.delete(grainId);
      return elapsed;
    };

    const bareTimes: number[] = [];
    const warmTimes: number[] = [];
    const unwarmedTimes: number[] = [];
    for (let i = 0; i < STARTS; i++) {
      // Interleaved so that all three see the same machine state.
      bareTimes.push(await bareStart(apps.notesBinary, 18_500 + i));
      warmTimes.push(await coldStart(`warm-${i}`, true));
      unwarmedTimes.push(await coldStart(`unwarmed-${i}`, false));
    }
    const bareMs = median(bareTimes);
    const grainMs = median(warmTimes);
    const unwarmedMs = median(unwarmedTimes);
    console.log(
      `first response: bare start ${bareMs.toFixed(2)} ms, grain start ${
        grainMs.toFixed(2)
      } ms (warm sandbox), ${
        unwarmedMs.toFixed(2)
      } ms (sandbox built on start)`,
    );

    // Idle grains: start them, one request each, then measure.
    const rssBefore = Deno.memoryUsage().rss;
    for (let i = 0; i < IDLE_GRAINS; i++) {
      const supervisor = await manager.start({
        grainId: `idle-${i}`,
        packageId: pkg.packageId,
        isNew: true,
      });
      const session = await supervisor.newWebSession({ displayName: "bench" });
      const response = await supervisor.fetch(session, request());
      await response.arrayBuffer();
      session.client.close();
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    const grains = await manager.list();
    const grainBytes = grains.reduce((sum, g) => sum + g.memoryBytes, 0);
    const workerBytes = Math.max(0, Deno.memoryUsage().rss - rssBefore);
    const perGrainBytes = (grainBytes + workerBytes) / IDLE_GRAINS;
    const machine = await manager.machineUsage();
    const capacity = Math.floor(
      (machine.memoryAvailableBytes + grainBytes) / perGrainBytes,
    );
    console.log(
      `${IDLE_GRAINS} idle grains: ${
        (grainBytes / IDLE_GRAINS / 1024).toFixed(0)
      } KiB each in their cgroups, ${
        (workerBytes / IDLE_GRAINS / 1024).toFixed(0)
      } KiB each in the worker; ${
        (machine.memoryAvailableBytes / 2 ** 30).toFixed(1)
      } GiB available`,
    );

    console.log(`result grain_start_vs_bare ${(grainMs / bareMs).toFixed(2)}`);
    console.log(
      `result grain_start_unwarmed_vs_bare ${(unwarmedMs / bareMs).toFixed(2)}`,
    );
    console.log(`result grain_start_ms ${grainMs.toFixed(2)}`);
    console.log(`result grain_start_unwarmed_ms ${unwarmedMs.toFixed(2)}`);
    console.log(`result bare_start_ms ${bareMs.toFixed(2)}`);
    console.log(
      `result memory_per_idle_grain_bytes ${Math.round(perGrainBytes)}`,
    );
    console.log(`result idle_grains_per_worker ${capacity}`);
  } finally {
    await manager.close();
    await Deno.remove(stateDir, { recursive: true });
  }
}

await main();
