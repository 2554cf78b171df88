/**
 * The daemon as its own process (services/blockd/main.ts, scoped
 * permissions) serving a grain from a Volume on a real storage node
 * process over sealed UDP: data written and flushed through NBD survives
 * SIGKILL of the daemon, and a second daemon with an empty cache (as on
 * another worker) reads it back from the storage node.
 */
import assert from "node:assert/strict";
import { makeWorkspace, nbdUri, run, spawnDaemon } from "./_testing.ts";
import {
  makeDaemonVat,
  newVolumeRef,
  startStorageNode,
} from "./_storage_testing.ts";
import {
  makeCluster,
  StorageClient,
  toleratingKilledNodes,
} from "../storage/_node_testing.ts";
import { vatIdHex } from "../rpc/vat_id.ts";
import { encodeVolumeRef } from "./storage_nodes.ts";

const SIZE_BYTES = 16 * 1024 * 1024;

Deno.test({
  name:
    "blockd process over a storage node: flush, SIGKILL, empty cache, data is there",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      const cluster = await makeCluster(1);
      const workspace = await makeWorkspace();
      const keyFile = `${workspace.root}/blockd.key`;
      const daemonVat = await makeDaemonVat(keyFile);
      const node = await startStorageNode(cluster, [daemonVat]);
      const client = await StorageClient.create(cluster.client);
      const config = (worker: string, ref: Uint8Array) => ({
        socketDirectory: workspace.sockets,
        cacheDirectory: `${workspace.root}/cache-${worker}`,
        holder: worker,
        store: {
          kind: "storage",
          vatKeyFile: keyFile,
          nodes: [{ vatId: vatIdHex(node.vatId), address: node.address }],
        },
        grains: [{
          name: "g1",
          sizeBytes: SIZE_BYTES,
          volumeRef: encodeVolumeRef(ref),
        }],
        // No background write-back: only the explicit flush makes data
        // durable, so the test shows FLUSH is what carries it.
        cache: { maxUnflushedMs: 3_600_000, maxDirtyBlocks: 1 << 30 },
      });
      const socket = `${workspace.sockets}/g1.sock`;
      try {
        const ref = await newVolumeRef(client, node);
        const first = await spawnDaemon(
          workspace,
          config("worker-a", ref),
          ["g1"],
          "worker-a",
          ["127.0.0.1"],
        );
        try {
          const written = await run("qemu-io", [
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -P 0x33 7M 20k",
            "-c",
            "flush",
            "-c",
            // After the flush: may be lost, must not corrupt the rest.
            "write -P 0x77 12M 4k",
            nbdUri("g1", socket),
          ]);
          assert.equal(written.code, 0, written.stdout + written.stderr);
        } finally {
          await first.kill();
        }

        const second = await spawnDaemon(
          workspace,
          config("worker-b", ref),
          ["g1"],
          "worker-b",
          ["127.0.0.1"],
        );
        try {
          const read = await run("qemu-io", [
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 0 1M",
            "-c",
            "read -P 0 1M 6M",
            "-c",
            "read -P 0x33 7M 20k",
            nbdUri("g1", socket),
          ]);
          assert.equal(read.code, 0, read.stdout + read.stderr);
          assert.doesNotMatch(read.stdout, /Pattern verification failed/);
          assert.equal(await second.stop(), 0);
        } finally {
          await second.kill();
        }
      } finally {
        await client.close();
        await node.kill("SIGTERM");
        await workspace.remove();
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});

Deno.test("blockd refuses to start a storage grain without a valid ref", async () => {
  const workspace = await makeWorkspace();
  try {
    const keyFile = `${workspace.root}/blockd.key`;
    await makeDaemonVat(keyFile);
    const failed = spawnDaemon(
      workspace,
      {
        socketDirectory: workspace.sockets,
        cacheDirectory: workspace.cache,
        holder: "w",
        store: {
          kind: "storage",
          vatKeyFile: keyFile,
          nodes: [{ vatId: "ab".repeat(32), address: "127.0.0.1:9" }],
        },
        grains: [{ name: "g1", sizeBytes: 1 << 20, volumeRef: "not base64!" }],
      },
      ["g1"],
      "bad-ref",
      ["127.0.0.1"],
    );
    await assert.rejects(failed, /did not start serving g1/);
  } finally {
    await workspace.remove();
  }
});
