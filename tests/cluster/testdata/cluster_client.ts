// Drives a simulated cluster from inside one of its machines (the test
// process cannot reach the namespaces' addresses). Prints one JSON value.
//
//   cluster_client.ts install DIRECTORY_FILE SPK [MIN_WORKERS] -> packageId
//   cluster_client.ts open COORDINATOR PACKAGE_ID COUNT -> placements
//   cluster_client.ts open-one COORDINATOR PACKAGE_ID GRAIN -> placement
//   cluster_client.ts check COORDINATOR DIRECTORY_FILE  -> {grain: worker}
//     (the worker whose app answered for the grain, or null)
//   cluster_client.ts storage DIRECTORY_FILE KEY_FILE -> {usedBytes, ...}
//     (opens a user root on the storage node as the vat of KEY_FILE)
//   cluster_client.ts web DIRECTORY_FILE PATH -> HTTP status of the shell's
//     PATH asked through the first gateway with the cluster's public host
import * as rpc from "../../../services/rpc/mod.ts";
import { Worker, type Worker$Client } from "../../../proto/gen/worker.ts";
import { encodeGrainSpec } from "../../../services/worker/service.ts";
import { CoordinatorClient } from "../harness.ts";
import { StorageNode } from "../../../proto/gen/storage.ts";
import { parseVatIdHex, VatIdentity } from "../../../services/rpc/vat_id.ts";
import {
  SealedUdpNetwork,
  VatDirectory,
} from "../../../services/rpc/sealed_udp/mod.ts";
import { PUBLIC_HOST } from "../../../tasks/cluster.ts";
import { gatewayRequest } from "./web_user.ts";

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
} else if (command === "storage") {
  const directory = JSON.parse(await Deno.readTextFile(args[0]));
  const node: Vat = directory.vats.find((v: Vat) => v.role === "storage");
  const vats = new VatDirectory();
  vats.set(parseVatIdHex(node.vatId), node.address);
  const network = await SealedUdpNetwork.create({
    identity: await VatIdentity.loadOrCreate(args[1]),
    directory: vats,
  });
  const connection = new rpc.RpcConnection(
    network.connect(parseVatIdHex(node.vatId)),
  );
  const storage = rpc.bootstrap(connection, StorageNode);
  const root = storage.root((p) => {
    p.name = "cluster-probe";
  }).getRoot();
  const usage = await root.usage().promise();
  console.log(JSON.stringify({
    usedBytes: Number(usage.usedBytes),
    quotaBytes: Number(usage.quotaBytes),
  }));
  connection.close();
  await network.close();
} else if (command === "web") {
  const directory = JSON.parse(await Deno.readTextFile(args[0]));
  const gateway: Vat = directory.vats.find((v: Vat) => v.role === "gateway");
  const response = await gatewayRequest(gateway.address, PUBLIC_HOST, {
    path: args[1],
  });
  console.log(JSON.stringify(response.status));
  // Anything but 200 fails, so that callers retry until the shell is up.
  if (response.status !== 200) Deno.exit(1);
} else {
  console.error("usage: cluster_client.ts install|open|check ...");
  Deno.exit(2);
}
