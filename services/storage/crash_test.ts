/**
 * Storage nodes killed with SIGKILL in the middle of concurrent traffic:
 * every write a client saw acknowledged must read back intact afterwards,
 * from the restarted node or from another node over the same bucket.
 */
import assert from "node:assert/strict";
import * as $ from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import { AnyStruct } from "../rpc/capability.ts";
import { save } from "../rpc/sturdyref.ts";
import {
  Assignable,
  Blob,
  type StorageNode,
  Volume,
  VolumeWriter,
} from "../../proto/gen/storage.ts";
import { startS3 } from "../../tests/fixtures/s3.ts";
import { pattern } from "./_testing.ts";
import {
  makeCluster,
  type NodeProcess,
  startNode,
  StorageClient,
  toleratingKilledNodes,
} from "./_node_testing.ts";
import type { StorageConfig } from "./main.ts";

const BLOCK = 4096;
type NodeClient = InstanceType<typeof StorageNode.Client>;

function restore<C>(
  node: NodeClient,
  bytes: Uint8Array,
  iface: { readonly Client: new (c: $.Client) => C },
): C {
  return new iface.Client(
    node.restore((p) => p._initSturdyRef(bytes.length).copyBuffer(bytes))
      .pipeline.getPipeline(AnyStruct, 0).client(),
  );
}

function seedOf(...parts: number[]): number {
  return parts.reduce((h, x) => Math.imul(h ^ x, 16777619) >>> 0, 2166136261);
}

/** Where clients currently reach storage: changes when a node dies. */
class Access {
  #current: NodeClient | undefined;
  #waiters: (() => void)[] = [];
  stopped = false;
  /** Acknowledged operations, for the report. */
  acknowledged = 0;
  failed = 0;

  set(node: NodeClient | undefined) {
    this.#current = node;
    if (node !== undefined) {
      for (const wake of this.#waiters.splice(0)) wake();
    }
  }

  async node(): Promise<NodeClient> {
    while (this.#current === undefined) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    return this.#current;
  }

  down() {
    this.#current = undefined;
  }
}

interface BlockRecord {
  acked?: number;
  /** Generations written without an answer: they may or may not be there. */
  doubt: number[];
}

/** One volume written by one client under its lease, block by block. */
async function volumeWriter(
  access: Access,
  writerRef: Uint8Array,
  index: number,
  records: Map<number, BlockRecord>,
): Promise<void> {
  let writer: InstanceType<typeof VolumeWriter.Client> | undefined;
  let generation = 0;
  while (!access.stopped) {
    const block = Math.floor(Math.random() * 64) * 3 + index % 3;
    const count = 1 + Math.floor(Math.random() * 4);
    const gen = ++generation;
    const record = (b: number) => {
      let r = records.get(b);
      if (r === undefined) records.set(b, r = { doubt: [] });
      return r;
    };
    for (let b = block; b < block + count; b++) record(b).doubt.push(gen);
    const data = new Uint8Array(count * BLOCK);
    for (let b = 0; b < count; b++) {
      data.set(pattern(BLOCK, seedOf(index, block + b, gen)), b * BLOCK);
    }
    try {
      writer ??= restore(await access.node(), writerRef, VolumeWriter);
      await writer.write((p) => {
        p.blockIndex = block;
        p._initData(data.length).copyBuffer(data);
      }).promise();
      for (let b = block; b < block + count; b++) {
        records.set(b, { acked: gen, doubt: [] });
      }
      access.acknowledged++;
    } catch (error) {
      if (!(error instanceof rpc.RpcError)) throw error;
      if (/LeaseLostError|QuotaExceeded/.test(error.message)) throw error;
      access.failed++;
      writer = undefined;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

interface BlobRecord {
  ref: Uint8Array;
  seed: number;
  sizeBytes: number;
}

/** Uploads blobs one after another; a blob counts once done + save
 * answered. */
async function blobWriter(
  access: Access,
  factoryOwnerRef: Uint8Array,
  index: number,
  blobs: BlobRecord[],
): Promise<void> {
  let round = 0;
  while (!access.stopped) {
    const seed = seedOf(1000 + index, ++round);
    const sizeBytes = 100_000 + (round % 7) * 37_111;
    const data = pattern(sizeBytes, seed);
    try {
      const node = await access.node();
      const owner = restore(node, factoryOwnerRef, Assignable);
      const upload = owner.factory().getFactory().uploadBlob().getUpload();
      const writes = [];
      for (let offset = 0; offset < data.length; offset += 64 * 1024) {
        const piece = data.subarray(offset, offset + 64 * 1024);
        writes.push(
          upload.write((p) => p._initData(piece.length).copyBuffer(piece))
            .promise(),
        );
      }
      await Promise.all(writes);
      const blob = upload.done().getBlob();
      const ref = await save(blob);
      blobs.push({ ref, seed, sizeBytes });
      access.acknowledged++;
    } catch (error) {
      if (!(error instanceof rpc.RpcError)) throw error;
      if (/QuotaExceeded/.test(error.message)) throw error;
      access.failed++;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** Increments a counter in an assignable by compare-and-set. */
async function counterWriter(
  access: Access,
  ref: Uint8Array,
  state: { acked: number; doubt: number[] },
): Promise<void> {
  while (!access.stopped) {
    try {
      const assignable = restore(await access.node(), ref, Assignable);
      const current = await assignable.get().promise();
      const version = current.version;
      const next = Number(version) + 1;
      state.doubt.push(next);
      await assignable.set((p) => {
        p.expectedVersion = version;
        const content = new TextEncoder().encode(`count=${next}`);
        p._initValue()._initContent(content.length).copyBuffer(content);
      }).promise();
      state.acked = next;
      state.doubt = [];
      access.acknowledged++;
    } catch (error) {
      if (!(error instanceof rpc.RpcError)) throw error;
      access.failed++;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

interface Workload {
  writerRefs: Uint8Array[];
  volumeRefs: Uint8Array[];
  counterRef: Uint8Array;
  ownerRef: Uint8Array;
  records: Map<number, BlockRecord>[];
  blobs: BlobRecord[];
  counter: { acked: number; doubt: number[] };
  running: Promise<void>[];
}

const VOLUMES = 4;

async function startWorkload(
  access: Access,
  node: NodeClient,
): Promise<Workload> {
  const root = node.root((p) => p.name = "crash").getRoot();
  const factory = root.factory().getFactory();
  const writerRefs: Uint8Array[] = [];
  const volumeRefs: Uint8Array[] = [];
  for (let i = 0; i < VOLUMES; i++) {
    const volume = factory.newVolume().getVolume();
    volumeRefs.push(await save(volume));
    writerRefs.push(await save(volume.takeLease().getWriter()));
  }
  const counter = factory.newAssignable((p) => p._initValue()).getAssignable();
  const counterRef = await save(counter);
  const owner = factory.newAssignable((p) => p._initValue()).getAssignable();
  const ownerRef = await save(owner);
  const work: Workload = {
    writerRefs,
    volumeRefs,
    counterRef,
    ownerRef,
    records: volumeRefs.map(() => new Map()),
    blobs: [],
    counter: { acked: 0, doubt: [] },
    running: [],
  };
  for (let i = 0; i < VOLUMES; i++) {
    work.running.push(volumeWriter(access, writerRefs[i], i, work.records[i]));
  }
  for (let i = 0; i < 2; i++) {
    work.running.push(blobWriter(access, ownerRef, i, work.blobs));
  }
  work.running.push(counterWriter(access, counterRef, work.counter));
  return work;
}

/** Reads everything back and checks each acknowledged write. */
async function verify(node: NodeClient, work: Workload): Promise<void> {
  for (let i = 0; i < VOLUMES; i++) {
    const volume = restore(node, work.volumeRefs[i], Volume);
    for (const [block, record] of work.records[i]) {
      const read = await volume.read((p) => {
        p.blockIndex = block;
        p.blockCount = 1;
      }).promise();
      const got = read.data.toUint8Array();
      const allowed = [
        ...(record.acked === undefined ? [] : [record.acked]),
        ...record.doubt,
      ];
      const matches = allowed.some((gen) =>
        pattern(BLOCK, seedOf(i, block, gen)).every((b, k) => got[k] === b)
      );
      const isZero = got.every((b) => b === 0);
      assert.ok(
        matches || (record.acked === undefined && isZero),
        `volume ${i} block ${block}: acknowledged generation ` +
          `${record.acked} (or in-doubt ${record.doubt}) not found`,
      );
    }
  }
  for (const blob of work.blobs) {
    const client = restore(node, blob.ref, Blob);
    const read = await client.read((p) => {
      p.offsetBytes = 0n;
      p.lengthBytes = blob.sizeBytes + 10;
    }).promise();
    assert.deepEqual(
      read.data.toUint8Array(),
      pattern(blob.sizeBytes, blob.seed),
    );
  }
  const value = await restore(node, work.counterRef, Assignable).get()
    .promise();
  const version = Number(value.version);
  assert.ok(
    version === work.counter.acked || work.counter.doubt.includes(version),
    `counter at ${version}, acknowledged ${work.counter.acked}`,
  );
  assert.equal(
    new TextDecoder().decode(value.value.content.toUint8Array()),
    version === 0 ? "" : `count=${version}`,
  );
}

async function sleep(ms: number) {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

Deno.test({
  name:
    "every acknowledged write survives SIGKILL of the storage node at random points (local disk)",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      const cluster = await makeCluster(1);
      const disk: StorageConfig["disk"] = {
        kind: "local",
        path: `${cluster.dir}/disk`,
      };
      let node: NodeProcess = await startNode(cluster, 0, disk);
      const client = await StorageClient.create(cluster.client);
      const access = new Access();
      let work: Workload | undefined;
      try {
        access.set(await client.connectReady(node));
        work = await startWorkload(access, await access.node());
        for (let round = 0; round < 4; round++) {
          await sleep(300 + Math.random() * 900);
          access.down();
          await node.kill("SIGKILL");
          node = await startNode(cluster, 0, disk, node.address);
          access.set(await client.connectReady(node));
        }
        await sleep(500);
        access.stopped = true;
        await Promise.all(work.running);
        // One last kill with nothing in flight, then check from scratch.
        access.down();
        await node.kill("SIGKILL");
        node = await startNode(cluster, 0, disk, node.address);
        const fresh = await client.connectReady(node);
        assert.ok(access.acknowledged > 20, `${access.acknowledged} acked`);
        assert.ok(access.failed > 0, "some calls were cut by the kills");
        await verify(fresh, work);
      } finally {
        access.stopped = true;
        access.set(undefined);
        await client.close();
        await node.kill();
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});

Deno.test({
  name:
    "two storage nodes over one radosgw bucket: one is killed mid-traffic and clients carry on through the other",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      await using s3 = await startS3();
      const cluster = await makeCluster(2);
      const disk: StorageConfig["disk"] = {
        kind: "s3",
        endpoint: s3.endpoint,
        bucket: s3.bucket,
        region: s3.region,
        prefix: "",
        accessKeyId: s3.accessKeyId,
        secretAccessKey: s3.secretAccessKey,
      };
      const nodeA = await startNode(cluster, 0, disk);
      const nodeB = await startNode(cluster, 1, disk);
      const client = await StorageClient.create(cluster.client);
      const access = new Access();
      try {
        access.set(await client.connectReady(nodeA));
        const work = await startWorkload(access, await access.node());
        await sleep(2000);
        const before = access.acknowledged;
        access.down();
        await nodeA.kill("SIGKILL");
        access.set(await client.connectReady(nodeB));
        // Calls caught on node A fail once the network gives up on it
        // (the client's grace period); then traffic flows through B.
        for (let waited = 0; waited < 30_000; waited += 100) {
          if (access.acknowledged > before + 20) break;
          await sleep(100);
        }
        access.stopped = true;
        await Promise.all(work.running);
        assert.ok(before > 5, `${before} acked through node A`);
        assert.ok(
          access.acknowledged > before + 5,
          `only ${access.acknowledged - before} acked through node B ` +
            `(${access.failed} failed)`,
        );
        // Node A's key never left its config: check its log too.
        for (const line of nodeA.lines) {
          assert.ok(!JSON.stringify(line).includes(s3.secretAccessKey));
        }
        await verify(await access.node(), work);
      } finally {
        access.stopped = true;
        access.set(undefined);
        await client.close();
        await nodeA.kill();
        await nodeB.kill();
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});
