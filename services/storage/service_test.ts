import assert from "node:assert/strict";
import * as $ from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import { save } from "../rpc/sturdyref.ts";
import {
  Assignable,
  Blob,
  type StorageNode,
  Volume,
  VolumeWriter,
} from "../../proto/gen/storage.ts";
import { VatIdentity } from "../rpc/vat_id.ts";
import { AnyStruct, capabilityAt } from "../rpc/capability.ts";
import { pattern } from "./_testing.ts";
import {
  makeCluster,
  startNode,
  StorageClient,
  toleratingKilledNodes,
} from "./_node_testing.ts";

const BLOCK = 4096;

function restoreVia<C>(
  node: InstanceType<typeof StorageNode.Client>,
  bytes: Uint8Array,
  iface: { readonly Client: new (c: $.Client) => C },
): C {
  return new iface.Client(
    node.restore((p) => p._initSturdyRef(bytes.length).copyBuffer(bytes))
      .pipeline.getPipeline(AnyStruct, 0).client(),
  );
}

Deno.test({
  name:
    "a storage node process serves blobs, volumes and values over sealed UDP, and refs outlive it",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      const cluster = await makeCluster(1);
      const disk = { kind: "local" as const, path: `${cluster.dir}/disk` };
      let node = await startNode(cluster, 0, disk);
      const client = await StorageClient.create(cluster.client);
      try {
        const storage = client.connect(node);
        const root = storage.root((p) => p.name = "alice").getRoot();
        await root.setQuota((p) => p.quotaBytes = 1n << 30n).promise();
        const factory = root.factory().getFactory();

        // A blob streamed in several writes.
        const data = pattern(5 * 1024 * 1024 + 17, 1);
        const upload = factory.uploadBlob().getUpload();
        const writes = [];
        for (let offset = 0; offset < data.length; offset += 1 << 20) {
          const piece = data.subarray(offset, offset + (1 << 20));
          writes.push(
            upload.write((p) => p._initData(piece.length).copyBuffer(piece))
              .promise(),
          );
        }
        await Promise.all(writes);
        const blob = upload.done().getBlob();
        assert.equal(
          (await blob.size().promise()).sizeBytes,
          BigInt(data.length),
        );
        const head = await blob.read((p) => {
          p.offsetBytes = 1000n;
          p.lengthBytes = 5000;
        }).promise();
        assert.deepEqual(head.data.toUint8Array(), data.subarray(1000, 6000));

        // A volume with a lease.
        const volume = factory.newVolume().getVolume();
        const writer = volume.takeLease().getWriter();
        const block = pattern(BLOCK * 3, 2);
        await writer.write((p) => {
          p.blockIndex = 10;
          p._initData(block.length).copyBuffer(block);
        }).promise();
        await writer.sync().promise();

        // An assignable holding a capability to the blob.
        const assignable = factory.newAssignable((p) => {
          const value = p._initValue();
          value._initContent(3).copyBuffer(new Uint8Array([1, 2, 3]));
          const slots = value._initCaps(1);
          $.utils.setInterfacePointer(
            p.segment.message.addCap(rpc.capOf(blob).addRef()),
            slots.get(0).cap,
          );
        }).getAssignable();
        assert.equal((await assignable.get().promise()).version, 0n);

        const refs = {
          blob: await save(blob),
          volume: await save(volume),
          writer: await save(writer),
          assignable: await save(assignable),
        };
        const usage = await root.usage().promise();
        // The value counts its content and the SturdyRef of its capability.
        const valueBytes = (await assignable.usage().promise()).usage.ownBytes;
        assert.ok(valueBytes > 3n + 32n);
        assert.equal(
          usage.usedBytes,
          BigInt(data.length + 3 * BLOCK) + valueBytes,
        );

        // kill -9, restart, and restore everything from the refs alone.
        await node.kill("SIGKILL");
        node = await startNode(cluster, 0, disk, node.address);
        const again = await client.connectReady(node);
        const restore = <C>(
          bytes: Uint8Array,
          iface: { readonly Client: new (c: $.Client) => C },
        ) => restoreVia(again, bytes, iface);
        const blob2 = restore(refs.blob, Blob);
        const all = await blob2.read((p) => {
          p.offsetBytes = 0n;
          p.lengthBytes = 4 << 20;
        }).promise();
        assert.deepEqual(all.data.toUint8Array(), data.subarray(0, 4 << 20));
        const volume2 = restore(refs.volume, Volume);
        const read = await volume2.read((p) => {
          p.blockIndex = 10;
          p.blockCount = 3;
        }).promise();
        assert.deepEqual(read.data.toUint8Array(), block);
        const writer2 = restore(refs.writer, VolumeWriter);
        await writer2.write((p) => {
          p.blockIndex = 0;
          p._initData(BLOCK).copyBuffer(pattern(BLOCK, 3));
        }).promise();
        // A new lease fences the restored writer out.
        const writer3 = volume2.takeLease().getWriter();
        await writer3.sync().promise();
        await assert.rejects(
          writer2.write((p) => {
            p.blockIndex = 1;
            p._initData(BLOCK);
          }).promise(),
          /LeaseLostError/,
        );
        // The capability inside the assignable comes back as a live blob.
        const value = await restore(refs.assignable, Assignable).get()
          .promise();
        assert.deepEqual(
          value.value.content.toUint8Array(),
          new Uint8Array([1, 2, 3]),
        );
        const inner = new Blob.Client(
          capabilityAt(value.value.caps.get(0).cap, []),
        );
        assert.equal(
          (await inner.size().promise()).sizeBytes,
          BigInt(data.length),
        );

        // Quota errors are typed across the wire.
        const root2 = again.root((p) => p.name = "bob").getRoot();
        await root2.setQuota((p) => p.quotaBytes = 10n).promise();
        const tooBig = root2.factory().getFactory().newImmutable((p) => {
          p._initValue()._initContent(11);
        }).getImmutable();
        await assert.rejects(tooBig.get().promise(), /QuotaExceededError/);

        // A vat the node does not list may neither open roots nor present
        // refs, even with the ref's bytes in hand.
        const stranger = await StorageClient.create(VatIdentity.generate());
        try {
          const node2 = await stranger.connectReady(node);
          await assert.rejects(
            node2.root((p) => p.name = "alice").getRoot().usage().promise(),
            /PermissionError/,
          );
          await assert.rejects(
            restoreVia(node2, refs.blob, Blob).size().promise(),
            /not a member of zone storage/,
          );
        } finally {
          await stranger.close();
        }

        // A capability no storage node can restore cannot be stored.
        const local = rpc.serve(Blob, {});
        const carol = again.root((p) => p.name = "carol").getRoot().factory()
          .getFactory();
        await assert.rejects(
          carol.newImmutable((p) => {
            const slots = p._initValue()._initCaps(1);
            $.utils.setInterfacePointer(
              p.segment.message.addCap(local),
              slots.get(0).cap,
            );
          }).getImmutable().get().promise(),
          /capability 0 of the value cannot be stored/,
        );
      } finally {
        await client.close();
        await node.kill();
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});
