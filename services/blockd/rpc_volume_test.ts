/**
 * The daemon over a Volume on a real storage node process, reached over
 * RPC (sealed UDP on loopback): data flushed through NBD reaches the node,
 * and a second worker with an empty cache reads it back from there.
 */
import assert from "node:assert/strict";
import { BLOCK_BYTES } from "./block_store.ts";
import * as rpc from "../rpc/mod.ts";
import { rpcVolume } from "./rpc_volume.ts";
import { StorageVolumeStore } from "./storage_volume_store.ts";
import { makeWorkspace, nbdUri, run, startDaemon } from "./_testing.ts";
import {
  makeCluster,
  startNode,
  StorageClient,
  toleratingKilledNodes,
} from "../storage/_node_testing.ts";

const SIZE_BYTES = 16 * 1024 * 1024;

Deno.test({
  name:
    "NBD over a storage node's Volume capability: flush, new worker, read back",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      const cluster = await makeCluster(1);
      const workspace = await makeWorkspace();
      const node = await startNode(cluster, 0, {
        kind: "local",
        path: `${cluster.dir}/disk`,
      });
      const client = await StorageClient.create(cluster.client);
      try {
        const storage = await client.connectReady(node);
        const root = storage.root((p) => p.name = "grains").getRoot();
        await root.setQuota((p) => p.quotaBytes = 1n << 30n).promise();
        const volume = root.factory().getFactory().newVolume().getVolume();
        const openStore = () =>
          Promise.resolve(
            new StorageVolumeStore(
              rpcVolume(rpc.retain(volume), "g1-volume"),
              SIZE_BYTES / BLOCK_BYTES,
            ),
          );

        const first = startDaemon(workspace, SIZE_BYTES, { openStore });
        try {
          const grain = await first.startGrain("g1");
          const written = await run("qemu-io", [
            "-f",
            "raw",
            "-c",
            "write -P 0x6b 0 2M",
            "-c",
            "write -P 0x21 9M 12k",
            "-c",
            "discard 512k 64k",
            "-c",
            "flush",
            nbdUri("g1", grain.socketPath),
          ]);
          assert.equal(written.code, 0, written.stdout + written.stderr);
        } finally {
          await first.stop();
        }
        const stat = await volume.stat().promise();
        // 512 written, 16 discarded, 3 more: 499 blocks of data (and the
        // access log, if the grain read anything).
        assert.ok(stat.usedBlocks >= 499n, `${stat.usedBlocks} blocks used`);

        const second = startDaemon(workspace, SIZE_BYTES, {
          openStore,
          holder: "worker-b",
        }, `${workspace.root}/cache-b`);
        try {
          const grain = await second.startGrain("g1");
          const read = await run("qemu-io", [
            "-f",
            "raw",
            "-c",
            "read -P 0x6b 0 512k",
            "-c",
            "read -P 0 512k 64k",
            "-c",
            "read -P 0x6b 576k 1472k",
            "-c",
            "read -P 0x21 9M 12k",
            "-c",
            "read -P 0 10M 1M",
            nbdUri("g1", grain.socketPath),
          ]);
          assert.equal(read.code, 0, read.stdout + read.stderr);
          assert.doesNotMatch(read.stdout, /Pattern verification failed/);
          assert.ok(grain.stats().fetchedBlocks > 0);
        } finally {
          await second.stop();
        }
      } finally {
        await client.close();
        await node.kill("SIGTERM");
        await workspace.remove();
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});
