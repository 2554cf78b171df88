/**
 * Grain benchmarks, baseline measured in the same run:
 *
 * - `grain_start_vs_bare`: the median of 20 cold starts of the notes HTTP
 *   app as a grain (sandbox, cgroup, fresh volume, HTTP bridge, fd-3 RPC)
 *   until its first HTTP response through the supervisor, divided by the
 *   median of 20 starts of the same notes program run directly (no
 *   sandbox, no volume, no bridge) until its first HTTP response.
 * - idle grains per worker and memory per grain: starts `IDLE_GRAINS`
 *   idle notes grains, each answering one request, and measures what each
 *   costs: its cgroup's memory plus the worker's own growth per grain.
 *   How many such grains the machine's available memory holds is then
 *   computed from that cost (the run does not exhaust the machine).
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
    const grainTimes: number[] = [];
    const bareTimes: number[] = [];
    for (let i = 0; i < STARTS; i++) {
      // Alternate so that both see the same machine state.
      bareTimes.push(await bareStart(apps.notesBinary, 18_500 + i));

      const grainId = `cold-${i}`;
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
      grainTimes.push(performance.now() - started);
      session.client.close();
      await manager.delete(grainId);
    }
    const grainMs = median(grainTimes);
    const bareMs = median(bareTimes);
    console.log(
      `cold grain start to first response: median ${
        grainMs.toFixed(2)
      } ms; bare start: median ${bareMs.toFixed(2)} ms`,
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
    console.log(`result grain_cold_start_ms ${grainMs.toFixed(2)}`);
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
