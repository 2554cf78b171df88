// Failover across processes: two real coordinator processes sharing their
// state file, with stand-in worker processes that speak the coordinator's
// real RPC protocol (see harness.ts for what the stand-in does and does
// not do), and with the real worker role. Machines die by SIGKILL to their
// whole process group.
import assert from "node:assert/strict";
import {
  askGrain,
  CoordinatorClient,
  type CoordinatorClient as Client,
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
} from "./harness.ts";
import { buildTestApps } from "../apps/build.ts";
import { encodeGrainSpec } from "../../services/worker/service.ts";

interface Cluster {
  coordinators: CoordinatorProcess[];
  workers: WorkerProcess[];
  clients: Client[];
}

async function withCluster(body: (cluster: Cluster) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "failover-test-" });
  const cluster: Cluster = { coordinators: [], workers: [], clients: [] };
  try {
    for (let i = 0; i < 2; i++) {
      cluster.coordinators.push(
        await startCoordinator({ stateFile: `${dir}/grains.sqlite` }),
      );
    }
    const ports = cluster.coordinators.map((c) => c.port);
    for (const id of ["w1", "w2", "w3"]) {
      cluster.workers.push(startWorker(id, ports));
    }
    for (const c of cluster.coordinators) {
      cluster.clients.push(await CoordinatorClient.connect(c.port));
    }
    // Both coordinators must have heard every worker before placing.
    let attempt = 0;
    await eventually("every worker has a grain placed on it", async () => {
      const seen = new Set<string>();
      attempt++;
      try {
        for (let i = 0; i < 12 && seen.size < 3; i++) {
          const client = cluster.clients[i % 2];
          seen.add(
            (await client.openGrain(`warmup${attempt}x${i}`, "warm")).workerId,
          );
        }
      } catch {
        // No worker has sent a heartbeat yet.
      }
      return seen.size === 3 ? true : undefined;
    });
    await body(cluster);
  } finally {
    for (const client of cluster.clients) client.close();
    for (const w of cluster.workers) await w.process.stop();
    for (const c of cluster.coordinators) await c.process.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("grains of a worker killed with SIGKILL answer again from other workers", async () => {
  await withCluster(async ({ clients, workers }) => {
    for (let i = 0; i < 9; i++) {
      await clients[i % 2].openGrain(`g${i}`, `volume-${i}`);
    }
    const victim = workers[0];
    const grains = (await clients[0].listGrains()).filter((g) =>
      g.workerId === victim.id && g.grainId.startsWith("g")
    );
    assert.ok(grains.length > 0, "the victim runs some grains");
    killGroup(victim.process);

    for (const grain of grains) {
      const answer = await eventually(
        `${grain.grainId} answers elsewhere`,
        async () => {
          const a = await askGrain(workers, grain.grainId);
          return a !== undefined && a.workerId !== victim.id ? a : undefined;
        },
      );
      assert.equal(answer.spec, `volume-${grain.grainId.slice(1)}`);
      assert.ok(answer.epoch > grain.epoch, "restarted at a newer epoch");
    }
    // Both coordinators read the same records. (That each grain moves
    // exactly once is tested in coordinator_test.ts with a controlled
    // clock; here a loaded machine may delay heartbeats enough for one more
    // move, which is allowed.)
    await eventually("both coordinators list the same grains", async () => {
      const [a, b] = await Promise.all(clients.map((c) => c.listGrains()));
      return JSON.stringify(a) === JSON.stringify(b) ? true : undefined;
    });
  });
});

Deno.test("with a coordinator killed, grains start through the other one", async () => {
  await withCluster(async ({ coordinators, clients, workers }) => {
    const before = await clients[0].openGrain("kept", "volume-kept");
    killGroup(coordinators[0].process);
    const again = await clients[1].openGrain("kept", "volume-kept");
    assert.deepEqual(again, before, "the record outlived its coordinator");
    const fresh = await clients[1].openGrain("fresh", "volume-fresh");
    const answer = await eventually(
      "the new grain answers",
      () => askGrain(workers, "fresh"),
    );
    assert.equal(answer.workerId, fresh.workerId);
    assert.equal(answer.spec, "volume-fresh");
  });
});

Deno.test("draining a worker moves its grains before it leaves", async () => {
  await withCluster(async ({ clients, workers }) => {
    for (let i = 0; i < 6; i++) await clients[0].openGrain(`d${i}`, "v");
    const leaving = workers[1];
    const grains = (await clients[0].listGrains()).filter((g) =>
      g.workerId === leaving.id
    );
    const moved = await clients[0].drainWorker(leaving.id);
    assert.equal(moved, grains.length);
    for (const grain of grains) {
      // Answering right after the drain, without waiting: no gap.
      const answer = await askGrain(workers, grain.grainId);
      assert.ok(answer !== undefined, `${grain.grainId} does not answer`);
      assert.notEqual(answer.workerId, leaving.id);
    }
  });
});

Deno.test("grains of a killed real worker answer again from another real worker", async () => {
  // The real worker role, its sandboxes and the notes app; no storage role
  // yet, so a grain restarts on the new worker's own (new) volume.
  const apps = await buildTestApps();
  const spk = await Deno.readFile(apps.notesSpk);
  const dir = await Deno.makeTempDir({ prefix: "real-failover-test-" });
  await Deno.chmod(dir, 0o755); // grains run as their own uids
  const coordinators: CoordinatorProcess[] = [];
  const workers: RealWorkerProcess[] = [];
  const clients: Client[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      coordinators.push(
        await startCoordinator({ stateFile: `${dir}/grains.sqlite` }),
      );
    }
    let packageId = "";
    for (let i = 0; i < 2; i++) {
      const worker = await startRealWorker({
        id: `real${i}`,
        index: i,
        stateDir: `${dir}/real${i}`,
        coordinatorPorts: coordinators.map((c) => c.port),
      });
      workers.push(worker);
      packageId = await installPackage(worker.port, spk);
    }
    for (const c of coordinators) {
      clients.push(await CoordinatorClient.connect(c.port));
    }
    const spec = encodeGrainSpec({ packageId, isNew: true });
    const portOf = new Map(workers.map((w) => [w.id, w.port]));
    let opened = 0;
    await eventually("both workers run grains", async () => {
      try {
        await clients[opened % 2].openGrain(`r${opened}`, spec, 64 << 20);
        opened++;
      } catch {
        // Workers are still sending their first heartbeats.
      }
      const placed = await clients[0].listGrains();
      const hosts = new Set(placed.map((g) => g.workerId));
      return hosts.size === 2 && opened >= 4 ? true : undefined;
    }, 60_000);
    const placed = await clients[0].listGrains();
    for (const g of placed) {
      assert.ok(
        await grainAnswers(portOf.get(g.workerId)!, g.grainId),
        `${g.grainId} answers on ${g.workerId}`,
      );
    }
    const victim = placed[0].workerId;
    killGroup(workers.find((w) => w.id === victim)!.process);
    for (const grain of placed.filter((g) => g.workerId === victim)) {
      await eventually(`${grain.grainId} answers elsewhere`, async () => {
        const now = (await clients[1].listGrains()).find((g) =>
          g.grainId === grain.grainId
        );
        if (now === undefined || now.workerId === victim) return undefined;
        return await grainAnswers(portOf.get(now.workerId)!, grain.grainId)
          ? true
          : undefined;
      }, 60_000);
    }
  } finally {
    for (const client of clients) client.close();
    for (const w of workers) await w.process.stop();
    for (const c of coordinators) await c.process.stop();
    await unmountUnder(dir);
    await removeCgroups(workers.map((w) => w.cgroupName));
    await Deno.remove(dir, { recursive: true });
  }
});
