/**
 * Binds the storage role's Volume capability (proto/storage.capnp) to the
 * {@link VolumeApi} that {@link StorageVolumeStore} adapts for the daemon,
 * so that a worker's daemon reads and writes a grain's volume on the
 * storage nodes over RPC.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import type { Volume, VolumeWriter } from "../../proto/gen/storage.ts";
import type { VolumeApi, VolumeWriterApi } from "./storage_volume_store.ts";

type VolumeClient = InstanceType<typeof Volume.Client>;
type VolumeWriterClient = InstanceType<typeof VolumeWriter.Client>;

function writerApi(writer: VolumeWriterClient, epoch: number): VolumeWriterApi {
  return {
    epoch,
    write: async (blockIndex, data) => {
      await writer.write((p) => {
        p.blockIndex = blockIndex;
        p._initData(data.length).copyBuffer(data);
      }).promise();
    },
    zero: async (blockIndex, blockCount) => {
      await writer.zero((p) => {
        p.blockIndex = blockIndex;
        p.blockCount = BigInt(blockCount);
      }).promise();
    },
    sync: async () => {
      await writer.sync().promise();
    },
  };
}

/**
 * A {@link VolumeApi} over a Volume capability. `id` only names the volume
 * in messages (the capability does not reveal its object ID). The API owns
 * `volume` and releases it (and the writers it took) on `release`.
 */
export function rpcVolume(volume: VolumeClient, id: string): VolumeApi {
  const writers: VolumeWriterClient[] = [];
  return {
    id,
    read: async (blockIndex, blockCount) => {
      const results = await volume.read((p) => {
        p.blockIndex = blockIndex;
        p.blockCount = blockCount;
      }).promise();
      // Copied out: the message's buffer is not ours to keep.
      return results.data.toUint8Array().slice();
    },
    stat: async () => {
      const results = await volume.stat().promise();
      return {
        usedBlocks: Number(results.usedBlocks),
        epoch: Number(results.epoch),
      };
    },
    takeLease: async () => {
      const writer = volume.takeLease().getWriter();
      writers.push(writer);
      const { epoch } = await writer.epoch().promise();
      return writerApi(writer, Number(epoch));
    },
    release: () => {
      for (const writer of writers.splice(0)) rpc.release(writer);
      rpc.release(volume);
    },
  };
}
