/**
 * Test helpers that run real storage node processes (services/storage/
 * main.ts, under the role's own scoped permissions) and talk to them as a
 * client vat over the sealed UDP network.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import { VatIdentity, vatIdHex } from "../rpc/vat_id.ts";
import { SealedUdpNetwork, VatDirectory } from "../rpc/sealed_udp/mod.ts";
import { libraryPath } from "../../ffi/native.ts";
import { roleCommand } from "../runtime/permissions.ts";
import { StorageNode } from "../../proto/gen/storage.ts";
import type { StorageConfig } from "./main.ts";

const root = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const entry = new URL("./main.ts", import.meta.url).pathname;

function homeDirectory(): string {
  return Deno.env.get("HOME") ?? "/root";
}

function hex(bytes: Uint8Array): string {
  return vatIdHex(bytes);
}

/** A random 32-byte secret as hex. */
export function randomHex32(): string {
  return hex(crypto.getRandomValues(new Uint8Array(32)));
}

/** Identities and secrets shared by the nodes and clients of one test. */
export interface Cluster {
  dir: string;
  diskSecret: string;
  zoneSecret: string;
  nodeSeeds: Uint8Array[];
  nodeIds: string[];
  client: VatIdentity;
}

/** Makes a cluster description with `nodes` storage node identities. */
export async function makeCluster(nodes: number): Promise<Cluster> {
  const dir = await Deno.makeTempDir({ prefix: "storage-nodes-" });
  const nodeSeeds: Uint8Array[] = [];
  const nodeIds: string[] = [];
  for (let i = 0; i < nodes; i++) {
    const seed = crypto.getRandomValues(new Uint8Array(32));
    nodeSeeds.push(seed);
    nodeIds.push(hex(VatIdentity.fromSeed(seed).vatId));
    await Deno.writeTextFile(`${dir}/node${i}.key`, hex(seed) + "\n", {
      mode: 0o600,
    });
  }
  return {
    dir,
    diskSecret: randomHex32(),
    zoneSecret: randomHex32(),
    nodeSeeds,
    nodeIds,
    client: VatIdentity.generate(),
  };
}

/** A running storage node process. */
export interface NodeProcess {
  index: number;
  vatId: Uint8Array;
  address: string;
  child: Deno.ChildProcess;
  /** Every log line so far. */
  lines: Record<string, unknown>[];
  kill(signal?: Deno.Signal): Promise<void>;
}

/** Starts node `index` of the cluster on `listen` with the given disk. */
export async function startNode(
  cluster: Cluster,
  index: number,
  disk: StorageConfig["disk"],
  listen = "127.0.0.1:0",
): Promise<NodeProcess> {
  const config: StorageConfig = {
    vatKeyFile: `${cluster.dir}/node${index}.key`,
    listen: {
      hostname: listen.slice(0, listen.lastIndexOf(":")),
      port: Number(listen.slice(listen.lastIndexOf(":") + 1)),
    },
    disk,
    diskSecret: cluster.diskSecret,
    zone: {
      secret: cluster.zoneSecret,
      storageNodes: cluster.nodeIds,
      presenters: [hex(cluster.client.vatId)],
      rootOpeners: [hex(cluster.client.vatId)],
    },
  };
  const configFile = `${cluster.dir}/node${index}.json`;
  await Deno.writeTextFile(configFile, JSON.stringify(config));
  const writable = [cluster.dir];
  if (disk.kind === "local") writable.push(disk.path);
  const [command, ...args] = roleCommand({
    deno: Deno.execPath(),
    entry,
    configFile,
    permissions: {
      read: [
        root,
        cluster.dir,
        ...(disk.kind === "local" ? [disk.path] : [`${homeDirectory()}/.aws`]),
      ],
      write: writable,
      net: ["127.0.0.1"],
      ffi: [libraryPath],
      // The AWS SDK looks for shared config files under the home
      // directory even when given everything explicitly.
      env: [
        "AWS_*",
        "_X_AMZN_TRACE_ID",
        "HOME",
        "USERPROFILE",
        "HOMEPATH",
        "HOMEDRIVE",
      ],
      // ...and reads the OS release for its user agent.
      sys: ["osRelease"],
    },
  });
  const child = new Deno.Command(command, {
    args,
    cwd: root,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: Record<string, unknown>[] = [];
  const listening = Promise.withResolvers<Record<string, unknown>>();
  (async () => {
    let buffered = "";
    for await (
      const chunk of child.stderr.pipeThrough(new TextDecoderStream())
    ) {
      buffered += chunk;
      const parts = buffered.split("\n");
      buffered = parts.pop()!;
      for (const part of parts) {
        if (!part.trim()) continue;
        let line: Record<string, unknown>;
        try {
          line = JSON.parse(part);
        } catch {
          line = { event: "raw", text: part };
        }
        lines.push(line);
        if (line.event === "listening") listening.resolve(line);
      }
    }
    listening.reject(
      new Error(`storage node ${index} exited: ${JSON.stringify(lines)}`),
    );
  })();
  const ready = await listening.promise;
  return {
    index,
    vatId: VatIdentity.fromSeed(cluster.nodeSeeds[index]).vatId,
    address: String(ready.address),
    child,
    lines,
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

/**
 * Runs `body` while ignoring unhandled rejections that only say a
 * connection to a killed node broke. Answers of pipelined calls a test
 * never awaited reject that way when their node is killed, which is what
 * these tests do on purpose; every other unhandled rejection still fails
 * the test.
 */
export async function toleratingKilledNodes<T>(
  body: () => Promise<T>,
): Promise<T> {
  const handler = (event: PromiseRejectionEvent) => {
    const reason = event.reason;
    if (reason instanceof rpc.RpcError && reason.type === "disconnected") {
      event.preventDefault();
    }
  };
  globalThis.addEventListener("unhandledrejection", handler);
  try {
    return await body();
  } finally {
    globalThis.removeEventListener("unhandledrejection", handler);
  }
}

/** A client vat talking to storage nodes. */
export class StorageClient {
  readonly network: SealedUdpNetwork;
  readonly directory: VatDirectory;
  #connections = new Map<string, rpc.RpcConnection>();

  private constructor(network: SealedUdpNetwork, directory: VatDirectory) {
    this.network = network;
    this.directory = directory;
  }

  static async create(identity: VatIdentity): Promise<StorageClient> {
    const directory = new VatDirectory();
    // A short grace period: a killed node must show up as a failed call
    // soon, so the client can turn to another node.
    const network = await SealedUdpNetwork.create({
      identity,
      directory,
      graceMs: 3_000,
      keepaliveMs: 500,
    });
    return new StorageClient(network, directory);
  }

  /** The bootstrap StorageNode of a node, on a fresh connection. */
  connect(node: NodeProcess): InstanceType<typeof StorageNode.Client> {
    const id = vatIdHex(node.vatId);
    // A connection to an earlier process of the node is dead; close it so
    // the network opens a new one instead of reusing it.
    this.#connections.get(id)?.close();
    this.directory.set(node.vatId, node.address);
    const connection = new rpc.RpcConnection(this.network.connect(node.vatId));
    this.#connections.set(id, connection);
    return rpc.bootstrap(connection, StorageNode);
  }

  /**
   * Connects and makes sure the connection reaches the node's current
   * process: right after a restart, a connection can be opened before the
   * network learns the peer restarted, and is then closed under it.
   */
  async connectReady(
    node: NodeProcess,
  ): Promise<InstanceType<typeof StorageNode.Client>> {
    for (let attempt = 0;; attempt++) {
      const storage = this.connect(node);
      try {
        // A malformed ref: any answer but `disconnected` proves the path.
        await storage.restore((p) => p._initSturdyRef(1)).promise();
      } catch (error) {
        if (
          error instanceof rpc.RpcError && error.type === "disconnected" &&
          attempt < 50
        ) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          continue;
        }
        if (!(error instanceof rpc.RpcError) || error.type !== "failed") {
          throw error;
        }
      }
      return storage;
    }
  }

  async close(): Promise<void> {
    for (const connection of this.#connections.values()) connection.close();
    await this.network.close();
  }
}
