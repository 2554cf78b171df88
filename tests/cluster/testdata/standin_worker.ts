// A stand-in for the worker role in coordinator tests and the failover
// benchmark: it speaks the coordinator's real protocol (heartbeats carrying
// a GrainHost, startGrain/stopGrain over RPC) but "runs" a grain by
// answering HTTP requests for it, instead of starting a sandboxed app. The
// real worker is tested in services/worker/.
//
// Usage: standin_worker.ts WORKER_ID HTTP_PORT COORDINATOR_PORT...
import * as rpc from "../../../services/rpc/mod.ts";
import {
  Coordinator,
  type Coordinator$Client,
  GrainHost,
} from "../../../proto/gen/coordinator.ts";

const [workerId, httpPortText, ...coordinatorPorts] = Deno.args;
const grains = new Map<string, { epoch: number; spec: string }>();

const host = rpc.serve(GrainHost, {
  startGrain(params) {
    grains.set(params.grainId, {
      epoch: Number(params.epoch),
      spec: new TextDecoder().decode(params.spec.toUint8Array()),
    });
    return Promise.resolve();
  },
  stopGrain(params) {
    grains.delete(params.grainId);
    return Promise.resolve();
  },
});

Deno.serve({
  hostname: "127.0.0.1",
  port: Number(httpPortText),
  onListen() {},
}, (request) => {
  const id = new URL(request.url).pathname.replace(/^\/grains\//, "");
  const grain = grains.get(id);
  if (grain === undefined) return new Response("not here", { status: 404 });
  return Response.json({ grainId: id, workerId, ...grain });
});

interface Link {
  connection: rpc.RpcConnection;
  coordinator: Coordinator$Client;
}
const links = new Map<string, Link>();

async function beat(port: string): Promise<void> {
  let link = links.get(port);
  if (link === undefined) {
    const transport = await rpc.connectTcp({
      hostname: "127.0.0.1",
      port: Number(port),
    });
    const connection = new rpc.RpcConnection(transport);
    link = { connection, coordinator: rpc.bootstrap(connection, Coordinator) };
    links.set(port, link);
  }
  try {
    await link.coordinator.heartbeat((params) => {
      params.workerId = workerId;
      const load = params._initLoad();
      load.memoryBytes = 8n << 30n;
      load.cores = 4;
      load.maxGrains = 100;
      load.memoryUsedBytes = BigInt(grains.size) * (256n << 20n);
      load.grains = grains.size;
      params.host = new GrainHost.Client(host.addRef());
    }).promise();
  } catch (error) {
    links.delete(port);
    link.connection.close();
    throw error;
  }
}

setInterval(() => {
  for (const port of coordinatorPorts) beat(port).catch(() => {});
}, 150);
