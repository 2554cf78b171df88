/**
 * A grain's /var on a storage Volume: the worker attaches the volume
 * through a block daemon process over a real storage node process (sealed
 * UDP), the notes app writes to it, stopping the grain detaches and
 * flushes it, and a second worker with an empty state folder (no cache)
 * restores the grain from storage with its data.
 */
import assert from "node:assert/strict";
import { Logger } from "../runtime/log.ts";
import { vatIdHex } from "../rpc/vat_id.ts";
import { buildTestApps } from "../../tests/apps/build.ts";
import {
  makeDaemonVat,
  newVolumeRefs,
  startStorageNode,
} from "../blockd/_storage_testing.ts";
import { unmountUnder } from "../blockd/_testing.ts";
import {
  makeCluster,
  StorageClient,
  toleratingKilledNodes,
} from "../storage/_node_testing.ts";
import { GrainManager } from "./grains.ts";
import type { GrainSupervisor } from "./supervisor.ts";
import { BlockVolumes } from "./volumes.ts";
import { decodeGrainSpec, encodeGrainSpec } from "./service.ts";

const apps = await buildTestApps();
const SIZE_BYTES = 64 * 1024 * 1024;

async function call(
  supervisor: GrainSupervisor,
  method: string,
  path: string,
  body?: string,
): Promise<{ status: number; text: string }> {
  const session = await supervisor.newWebSession({ displayName: "Ann" });
  const response = await supervisor.fetch(
    session,
    new Request(`http://grain.test${path}`, { method, body }),
  );
  return { status: response.status, text: await response.text() };
}

Deno.test({
  name:
    "a grain's /var on a storage volume survives stop and restore on a worker with an empty cache",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      const cluster = await makeCluster(1);
      const dir = await Deno.makeTempDir({ prefix: "worker-volume-test-" });
      // Grains' uids pass through to their packages and volumes.
      await Deno.chmod(dir, 0o711);
      const keyFile = `${dir}/blockd.key`;
      const daemonVat = await makeDaemonVat(keyFile);
      const node = await startStorageNode(cluster, [daemonVat]);
      const client = await StorageClient.create(cluster.client);
      const log = new Logger({ role: "worker", level: "error" });
      const volumeSets: BlockVolumes[] = [];
      const openManager = async (name: string) => {
        const volumes = await BlockVolumes.start({
          stateDir: `${dir}/${name}`,
          vatKeyFile: keyFile,
          nodes: [{ vatId: vatIdHex(node.vatId), address: node.address }],
          holder: name,
          log,
        });
        volumeSets.push(volumes);
        return await GrainManager.open({
          stateDir: `${dir}/${name}`,
          uidFirst: 62000 + (Deno.pid % 40) * 20,
          uidCount: 20,
          cgroupName: `blackrock-volume-test-${name}-${Deno.pid}`,
          defaultMemoryBytes: 128 << 20,
          tmpBytes: 8 << 20,
          volumes,
        }, log);
      };
      try {
        const [ref1, ref2] = await newVolumeRefs(client, node, 2);
        const volume = { ref: ref1, sizeBytes: SIZE_BYTES };
        const spk = await Deno.readFile(apps.notesSpk);

        const first = await openManager("worker-a");
        try {
          const pkg = await first.installPackage(spk);
          const supervisor = await first.start({
            grainId: "notes-1",
            packageId: pkg.packageId,
            isNew: true,
            volume,
          });
          assert.equal(
            (await call(supervisor, "PUT", "/notes/kept", "on storage"))
              .status,
            201,
          );
          await first.stop("notes-1");
          // Detached: nothing of the grain's is mounted on this worker.
          const mounts = await Deno.readTextFile("/proc/mounts");
          assert.ok(!mounts.includes(`${dir}/worker-a/`), mounts);
        } finally {
          await first.close();
        }

        const second = await openManager("worker-b");
        try {
          const pkg = await second.installPackage(spk);
          // "new" on a volume that holds a filesystem restores instead.
          const supervisor = await second.start({
            grainId: "notes-1",
            packageId: pkg.packageId,
            isNew: true,
            volume,
          });
          // A second grain on its own volume, through the same daemon.
          const other = await second.start({
            grainId: "notes-2",
            packageId: pkg.packageId,
            isNew: true,
            volume: { ref: ref2, sizeBytes: SIZE_BYTES },
          });
          assert.equal(
            (await call(other, "PUT", "/notes/other", "second")).status,
            201,
          );
          assert.deepEqual(await call(supervisor, "GET", "/notes/kept"), {
            status: 200,
            text: "on storage",
          });
          assert.equal((await call(other, "GET", "/notes/kept")).status, 404);
          assert.equal(
            (await call(other, "GET", "/notes/other")).text,
            "second",
          );
          await second.stop("notes-1");
          await second.stop("notes-2");
        } finally {
          await second.close();
        }
      } finally {
        for (const volumes of volumeSets) await volumes.close();
        await unmountUnder(dir);
        await client.close();
        await node.kill("SIGTERM");
        await Deno.remove(dir, { recursive: true });
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});

Deno.test("a grain spec carries a storage volume's ref and size", () => {
  const ref = crypto.getRandomValues(new Uint8Array(200));
  const spec = decodeGrainSpec(encodeGrainSpec({
    packageId: "p",
    isNew: true,
    volumeRef: ref,
    volumeSizeBytes: 1 << 26,
  }));
  assert.deepEqual(spec.volumeRef, ref);
  assert.equal(spec.volumeSizeBytes, 1 << 26);
  const plain = decodeGrainSpec(
    encodeGrainSpec({ packageId: "p", isNew: false }),
  );
  assert.equal(plain.volumeRef.length, 0);
});
