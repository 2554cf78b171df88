/**
 * The block daemon's side of the storage zone: a client vat on the sealed
 * UDP network that restores grains' Volume SturdyRefs on the storage nodes
 * and binds them as {@link StorageVolumeStore}s.
 *
 * The daemon's vat must be one of the storage zone's presenters (the
 * storage nodes' `zone.presenters`): it can have a ref restored, never
 * read what is inside one. Nodes are tried in the configured order; a node
 * that does not answer is skipped for the next one, since every node of a
 * disk serves the same objects.
 *
 * Limit: a volume restored on a node stays bound to that node's
 * connection. If that node dies while the grain is served, the grain's
 * store calls fail (and its flushes with them) until the grain is started
 * again; re-restoring on another node mid-flight is not done here.
 *
 * @module
 */
import * as $ from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import { parseVatIdHex, VatIdentity } from "../rpc/vat_id.ts";
import { SealedUdpNetwork, VatDirectory } from "../rpc/sealed_udp/mod.ts";
import { AnyStruct } from "../rpc/capability.ts";
import { StorageNode, Volume } from "../../proto/gen/storage.ts";
import { BLOCK_BYTES } from "./block_store.ts";
import { rpcVolume } from "./rpc_volume.ts";
import { StorageVolumeStore } from "./storage_volume_store.ts";

/** A storage node the daemon may ask. */
export interface StorageNodeAddress {
  /** The node's vat ID, 64 hex digits. */
  vatId: string;
  /** Its UDP address, `host:port`. */
  address: string;
}

/** Options of {@link StorageNodes.open}. */
export interface StorageNodesOptions {
  /** File holding the daemon vat's ed25519 seed. */
  vatKeyFile: string;
  nodes: StorageNodeAddress[];
  /** Local UDP address to bind, `host:port`. */
  bind?: string;
  /** How long a silent node is waited for before its calls fail. */
  graceMs?: number;
}

/** A SturdyRef that is not valid base64 or not a ref at all. */
export class VolumeRefError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VolumeRefError";
  }
}

/** Decodes a volume SturdyRef given as base64 (as in the configuration). */
export function decodeVolumeRef(text: string): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch {
    throw new VolumeRefError("volume ref is not valid base64");
  }
  // A serialized message is at least its segment table and root pointer.
  if (bytes.length < 16 || bytes.length % 8 !== 0) {
    throw new VolumeRefError(
      `volume ref of ${bytes.length} bytes is not a Cap'n Proto message`,
    );
  }
  return bytes;
}

/** Encodes a volume SturdyRef for the configuration. */
export function encodeVolumeRef(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

/** See the module documentation. */
export class StorageNodes {
  readonly #network: SealedUdpNetwork;
  readonly #nodes: { vatId: Uint8Array; address: string }[];
  readonly #connections = new Map<number, rpc.RpcConnection>();

  private constructor(
    network: SealedUdpNetwork,
    nodes: { vatId: Uint8Array; address: string }[],
  ) {
    this.#network = network;
    this.#nodes = nodes;
  }

  static async open(options: StorageNodesOptions): Promise<StorageNodes> {
    if (options.nodes.length === 0) {
      throw new RangeError("at least one storage node is needed");
    }
    const identity = await VatIdentity.load(options.vatKeyFile);
    const directory = new VatDirectory();
    const nodes = options.nodes.map((node) => ({
      vatId: parseVatIdHex(node.vatId),
      address: node.address,
    }));
    for (const node of nodes) directory.set(node.vatId, node.address);
    const network = await SealedUdpNetwork.create({
      identity,
      directory,
      bind: options.bind,
      graceMs: options.graceMs ?? 5_000,
      keepaliveMs: 1_000,
    });
    return new StorageNodes(network, nodes);
  }

  /**
   * Restores the Volume a ref names, on the first node that answers, and
   * binds it as an export of `sizeBytes`. Fails with the last node's error
   * if none restores it.
   */
  async openVolume(
    grain: string,
    ref: Uint8Array,
    sizeBytes: number,
  ): Promise<StorageVolumeStore> {
    let lastError: unknown;
    for (let index = 0; index < this.#nodes.length; index++) {
      const volume = this.#restore(index, ref);
      try {
        // Proves the ref restored before the daemon takes the lease.
        await volume.stat().promise();
      } catch (error) {
        lastError = error;
        if (error instanceof rpc.RpcError && error.type === "disconnected") {
          this.#connections.get(index)?.close();
          this.#connections.delete(index);
          continue;
        }
        throw error;
      }
      return new StorageVolumeStore(
        rpcVolume(volume, grain),
        sizeBytes / BLOCK_BYTES,
      );
    }
    throw lastError;
  }

  #restore(index: number, ref: Uint8Array): InstanceType<typeof Volume.Client> {
    let connection = this.#connections.get(index);
    if (connection === undefined) {
      connection = new rpc.RpcConnection(
        this.#network.connect(this.#nodes[index].vatId),
      );
      this.#connections.set(index, connection);
    }
    const node = rpc.bootstrap(connection, StorageNode);
    const promise = node.restore((p) =>
      p._initSturdyRef(ref.length).copyBuffer(ref)
    );
    return new Volume.Client(
      promise.pipeline.getPipeline(AnyStruct, 0).client() as $.Client,
    );
  }

  async close(): Promise<void> {
    for (const connection of this.#connections.values()) connection.close();
    this.#connections.clear();
    await this.#network.close();
  }
}
