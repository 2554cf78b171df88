/**
 * Test wiring between the shell's runner protocol
 * (services/shell/grain_runner.ts) and the worker's grain manager
 * (services/worker/grains.ts), in one process, for the end-to-end tests.
 *
 * Grains here are real: the package is verified and unpacked by the
 * worker's code, the app runs in the worker's bubblewrap sandbox with its
 * own uid, memory cgroup and seccomp filter, and requests reach it as
 * WebSession calls over Cap'n Proto on its fd 3. What this file stands in
 * for is only the worker *service* (its RPC face and the cluster's route
 * from gateway to worker), which does not exist yet: HTTP from the gateway
 * is turned into WebSession calls here, on loopback. WebSockets are not
 * relayed by this wiring.
 *
 * @module
 */
import { Logger } from "../../services/runtime/log.ts";
import { GrainManager } from "../../services/worker/grains.ts";
import type { WebSession$Client } from "../../proto/gen/sandstorm/web-session.ts";

/** A running wiring; `url` is the shell's `runner.url`. */
export interface WorkerRunner {
  url: string;
  stop(): Promise<void>;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function sizeOfTree(path: string): Promise<number> {
  let total = 0;
  try {
    for await (const entry of Deno.readDir(path)) {
      const child = `${path}/${entry.name}`;
      if (entry.isDirectory) total += await sizeOfTree(child);
      else if (entry.isFile) total += (await Deno.stat(child)).size;
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return total;
}

/** Starts a grain manager over `stateDir` and the runner protocol on a
 * loopback port. Grains keep their volumes in `stateDir` across stops. */
export async function startWorkerRunner(
  stateDir: string,
  uidFirst: number,
  port = 0,
): Promise<WorkerRunner> {
  const log = new Logger({ role: "worker", level: "warn" });
  const manager = await GrainManager.open({
    stateDir,
    uidFirst,
    uidCount: 8,
    cgroupName: `blackrock-e2e-${crypto.randomUUID().slice(0, 8)}`,
    defaultMemoryBytes: 256 * 1024 * 1024,
    tmpBytes: 16 * 1024 * 1024,
  }, log);
  const sessions = new Map<string, Promise<WebSession$Client>>();
  const starting = new Map<string, Promise<void>>();

  async function ensureRunning(grainId: string, packageId: string) {
    if (manager.supervisor(grainId) !== undefined) return;
    const volume = `${stateDir}/grains/${grainId}/volume`;
    const isNew = !(await exists(volume));
    await manager.start({ grainId, packageId, isNew });
    for (const key of sessions.keys()) {
      if (key.startsWith(`${grainId}/`)) sessions.delete(key);
    }
  }

  function session(grainId: string, canWrite: boolean, user: string) {
    const key = `${grainId}/${canWrite}/${user}`;
    let promise = sessions.get(key);
    if (promise === undefined) {
      const supervisor = manager.supervisor(grainId);
      if (supervisor === undefined) throw new Error("grain not running");
      promise = supervisor.newWebSession({
        displayName: decodeURIComponent(user || "Anonymous"),
        permissions: canWrite ? [true, true] : [false, true],
      });
      sessions.set(key, promise);
    }
    return promise;
  }

  const server = Deno.serve(
    { hostname: "127.0.0.1", port, onListen: () => {} },
    async (request) => {
      const url = new URL(request.url);
      try {
        let m = /^\/grains\/([A-Za-z0-9_-]+)\/(open|size)$/.exec(url.pathname);
        if (m !== null && m[2] === "open") {
          const { packageId, packagePath } = await request.json();
          const grainId = m[1];
          if (manager.package(packageId) === undefined) {
            await manager.installPackage(await Deno.readFile(packagePath));
          }
          let start = starting.get(grainId);
          if (start === undefined) {
            start = ensureRunning(grainId, packageId).finally(() =>
              starting.delete(grainId)
            );
            starting.set(grainId, start);
          }
          await start;
          return Response.json({ backend: `${url.origin}/g/${grainId}` });
        }
        if (m !== null) {
          return Response.json({
            sizeBytes: await sizeOfTree(`${stateDir}/grains/${m[1]}/volume`),
          });
        }
        m = /^\/grains\/([A-Za-z0-9_-]+)$/.exec(url.pathname);
        if (m !== null && request.method === "DELETE") {
          await manager.delete(m[1]).catch(() => {});
          return new Response("deleted");
        }
        m = /^\/g\/([A-Za-z0-9_-]+)(\/.*)$/.exec(url.pathname);
        if (m === null) return new Response("not found", { status: 404 });
        const supervisor = manager.supervisor(m[1]);
        if (supervisor === undefined) {
          return new Response("grain is not running", { status: 503 });
        }
        const canWrite = (request.headers.get("x-sandstorm-permissions") ?? "")
          .split(",").includes("write");
        const web = await session(
          m[1],
          canWrite,
          request.headers.get("x-sandstorm-username") ?? "",
        );
        return await supervisor.fetch(
          web,
          new Request(`http://grain${m[2]}${url.search}`, {
            method: request.method,
            headers: request.headers,
            body: request.body,
          }),
        );
      } catch (error) {
        return Response.json({ error: String(error) }, { status: 500 });
      }
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async stop() {
      await server.shutdown();
      await manager.close();
    },
  };
}
