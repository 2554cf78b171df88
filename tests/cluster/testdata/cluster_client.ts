// Drives a simulated cluster from inside one of its machines (the test
// process cannot reach the namespaces' addresses). Prints one JSON value.
//
//   cluster_client.ts install DIRECTORY_FILE SPK [MIN_WORKERS] -> packageId
//   cluster_client.ts open COORDINATOR PACKAGE_ID COUNT -> placements
//   cluster_client.ts open-one COORDINATOR PACKAGE_ID GRAIN -> placement
//   cluster_client.ts check COORDINATOR DIRECTORY_FILE  -> {grain: worker}
//     (the worker whose app answered for the grain, or null)
import * as rpc from "../../../services/rpc/mod.ts";
import { Worker, type Worker$Client } from "../../../proto/gen/worker.ts";
import { encodeGrainSpec } from "../../../services/worker/service.ts";
import { CoordinatorClient } from "../harness.ts";

interface Vat {
  role: string;
  vatId: string;
  address: string;
}

function hostPort(address: string): rpc.TcpAddress {
  const at = address.lastIndexOf(":");
  return {
    hostname: address.slice(0, at),
    port: Number(address.slice(at + 1)),
  };
}

async function workers(directoryFile: string): Promise<Vat[]> {
  const directory = JSON.parse(await Deno.readTextFile(directoryFile));
  return directory.vats.filter((v: Vat) => v.role === "worker");
}

async function withWorker<T>(
  address: string,
  body: (worker: Worker$Client) => Promise<T>,
): Promise<T> {
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp(hostPort(address)),
  );
  try {
    return await body(rpc.bootstrap(connection, Worker));
  } finally {
    connection.close();
  }
}

async function coordinator(address: string): Promise<CoordinatorClient> {
  return await CoordinatorClient.connect(
    hostPort(address).port,
    hostPort(address).hostname,
  );
}

const [command, ...args] = Deno.args;
if (command === "install") {
  const spk = await Deno.readFile(args[1]);
  let packageId = "";
  const all = await workers(args[0]);
  if (all.length < Number(args[2] ?? 1)) {
    throw new Error(`only ${all.length} workers in the directory`);
  }
  for (const vat of all) {
    packageId = await withWorker(
      vat.address,
      async (worker) =>
        (await worker.installPackage((p) => {
          p._initSpk(spk.length).copyBuffer(spk);
        }).promise()).packageId,
    );
  }
  console.log(JSON.stringify(packageId));
} else if (command === "open") {
  const client = await coordinator(args[0]);
  const spec = encodeGrainSpec({ packageId: args[1], isNew: true });
  const placements = [];
  for (let i = 0; i < Number(args[2]); i++) {
    placements.push({
      grainId: `g${i}`,
      ...await client.openGrain(`g${i}`, spec, 64 << 20),
    });
  }
  client.close();
  console.log(JSON.stringify(placements));
} else if (command === "open-one") {
  const client = await coordinator(args[0]);
  const spec = encodeGrainSpec({ packageId: args[1], isNew: true });
  const placement = await client.openGrain(args[2], spec, 64 << 20);
  client.close();
  console.log(JSON.stringify(placement));
} else if (command === "check") {
  const client = await coordinator(args[0]);
  const byVat = new Map(
    (await workers(args[1])).map((v) => [v.vatId, v.address]),
  );
  const answers: Record<string, string | null> = {};
  for (const grain of await client.listGrains()) {
    const address = byVat.get(grain.workerId);
    let answered = false;
    if (address !== undefined) {
      try {
        answered = await withWorker(address, async (worker) => {
          const view = worker.getView((p) => {
            p.grainId = grain.grainId;
          }).getView();
          await view.getViewInfo().promise();
          return true;
        });
      } catch {
        answered = false;
      }
    }
    answers[grain.grainId] = answered ? grain.workerId : null;
  }
  client.close();
  console.log(JSON.stringify(answers));
} else {
  console.error("usage: cluster_client.ts install|open|check ...");
  Deno.exit(2);
}
