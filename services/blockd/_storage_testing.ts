/**
 * Test helpers for the daemon over real storage node processes: a storage
 * node (services/storage/main.ts under its own scoped permissions, local
 * disk) whose zone also lets the daemon's vat present refs, and a volume
 * made and saved by a client vat as a coordinator would.
 *
 * @module
 */
import { libraryPath } from "../../ffi/native.ts";
import { roleCommand } from "../runtime/permissions.ts";
import * as rpc from "../rpc/mod.ts";
import { save } from "../rpc/sturdyref.ts";
import { StorageNode } from "../../proto/gen/storage.ts";
import { VatIdentity, vatIdHex } from "../rpc/vat_id.ts";
import type { StorageConfig } from "../storage/main.ts";
import type { Cluster, StorageClient } from "../storage/_node_testing.ts";

const projectRoot = new URL("../..", import.meta.url).pathname.replace(
  /\/$/,
  "",
);
const storageEntry = new URL("../storage/main.ts", import.meta.url).pathname;

/** A storage node process for these tests. */
export interface StorageNodeProcess {
  vatId: Uint8Array;
  address: string;
  kill(signal?: Deno.Signal): Promise<void>;
}

/** A daemon vat identity saved in `keyFile` (mode 0600). */
export async function makeDaemonVat(keyFile: string): Promise<Uint8Array> {
  const identity = VatIdentity.generate();
  await identity.save(keyFile);
  return identity.vatId;
}

/**
 * Starts node 0 of `cluster` on a local disk, with the cluster's client
 * and `presenters` allowed to present storage refs.
 */
export async function startStorageNode(
  cluster: Cluster,
  presenters: Uint8Array[],
): Promise<StorageNodeProcess> {
  const disk = `${cluster.dir}/disk`;
  const config: StorageConfig = {
    vatKeyFile: `${cluster.dir}/node0.key`,
    listen: { hostname: "127.0.0.1", port: 0 },
    disk: { kind: "local", path: disk },
    diskSecret: cluster.diskSecret,
    zone: {
      secret: cluster.zoneSecret,
      storageNodes: cluster.nodeIds,
      presenters: [cluster.client.vatId, ...presenters].map(vatIdHex),
      rootOpeners: [vatIdHex(cluster.client.vatId)],
    },
  };
  const configFile = `${cluster.dir}/node0-blockd.json`;
  await Deno.writeTextFile(configFile, JSON.stringify(config));
  const [command, ...args] = roleCommand({
    deno: Deno.execPath(),
    entry: storageEntry,
    configFile,
    permissions: {
      read: [projectRoot, cluster.dir],
      write: [cluster.dir],
      net: ["127.0.0.1"],
      ffi: [libraryPath],
      // The role imports the AWS SDK even for a local disk, which reads
      // these while loading.
      env: [
        "AWS_*",
        "_X_AMZN_TRACE_ID",
        "HOME",
        "USERPROFILE",
        "HOMEPATH",
        "HOMEDRIVE",
      ],
      sys: ["osRelease"],
    },
  });
  const child = new Deno.Command(command, {
    args,
    cwd: projectRoot,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const address = await listeningAddress(child);
  return {
    vatId: VatIdentity.fromSeed(cluster.nodeSeeds[0]).vatId,
    address,
    async kill(signal: Deno.Signal = "SIGKILL") {
      try {
        child.kill(signal);
      } catch {
        // Already gone.
      }
      await child.status;
    },
  };
}

/** Reads the node's log until its `listening` line; keeps draining after. */
async function listeningAddress(child: Deno.ChildProcess): Promise<string> {
  const lines = child.stderr.pipeThrough(new TextDecoderStream())
    .getReader();
  let buffered = "";
  const seen: string[] = [];
  for (;;) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`storage node exited: ${seen.join("\n")}`);
    buffered += value;
    const parts = buffered.split("\n");
    buffered = parts.pop()!;
    for (const part of parts) {
      seen.push(part);
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(part);
      } catch {
        continue;
      }
      if (line.event === "listening") {
        (async () => {
          while (!(await lines.read()).done) {
            // Drained so the node never blocks on a full pipe.
          }
        })();
        return String(line.address);
      }
    }
  }
}

/** Makes `count` volumes under root "grains" on one connection and
 * returns their SturdyRefs. */
export async function newVolumeRefs(
  client: StorageClient,
  node: StorageNodeProcess,
  count: number,
): Promise<Uint8Array[]> {
  client.directory.set(node.vatId, node.address);
  const connection = new rpc.RpcConnection(client.network.connect(node.vatId));
  try {
    const storage = rpc.bootstrap(connection, StorageNode);
    const root = storage.root((p) => p.name = "grains").getRoot();
    await root.setQuota((p) => p.quotaBytes = 1n << 30n).promise();
    const factory = root.factory().getFactory();
    const refs = [];
    for (let i = 0; i < count; i++) {
      refs.push(await save(factory.newVolume().getVolume()));
    }
    return refs;
  } finally {
    connection.close();
  }
}

/** Makes one volume; see {@link newVolumeRefs}. */
export async function newVolumeRef(
  client: StorageClient,
  node: StorageNodeProcess,
): Promise<Uint8Array> {
  return (await newVolumeRefs(client, node, 1))[0];
}
