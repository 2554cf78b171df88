/**
 * The daemon over the storage role's Volume (in-process, on a local disk):
 * data flushed through NBD is in the Volume, a new worker with an empty
 * cache reads it back, and a newer lease fences the old daemon out.
 */
import assert from "node:assert/strict";
import { localBackend, testStore } from "../storage/_testing.ts";
import { BLOCK_BYTES } from "./block_store.ts";
import { decodeAccessLog } from "./access_log.ts";
import { StorageVolumeStore } from "./storage_volume_store.ts";
import { makeWorkspace, nbdUri, run, startDaemon } from "./_testing.ts";

const SIZE_BYTES = 32 * 1024 * 1024;
const SIZE_BLOCKS = SIZE_BYTES / BLOCK_BYTES;

Deno.test("NBD through the storage Volume: flushed data, new cache, fencing", async () => {
  const backend = await localBackend();
  const workspace = await makeWorkspace();
  const objects = testStore(backend.disk);
  await objects.ensureRoot("grains");
  const key = await objects.createVolume({ root: "grains" });
  const openStore = () =>
    Promise.resolve(new StorageVolumeStore(objects.volume(key), SIZE_BLOCKS));
  const first = startDaemon(workspace, SIZE_BYTES, { openStore });
  const second = startDaemon(workspace, SIZE_BYTES, {
    openStore,
    holder: "worker-b",
    socketDirectory: `${workspace.root}/sockets-b`,
  }, `${workspace.root}/cache-b`);
  try {
    const grain = await first.startGrain("g1");
    const uri = nbdUri("g1", grain.socketPath);
    const io = (...commands: string[]) =>
      run("qemu-io", ["-f", "raw", ...commands.flatMap((c) => ["-c", c]), uri]);
    const written = await io(
      "write -P 0x5a 0 3M",
      "write -P 0x11 20M 8k",
      "discard 1M 64k",
      "flush",
      "read -P 0x5a 0 4k",
    );
    assert.equal(written.code, 0, written.stdout + written.stderr);
    const used = await objects.volume(key).stat();
    assert.ok(used.usedBlocks >= 3 * 256 - 16, `${used.usedBlocks} used`);
    await first.stopGrain("g1");
    const log = await new StorageVolumeStore(objects.volume(key), SIZE_BLOCKS)
      .readAccessLog();
    assert.ok(log !== null, "access log saved with the volume");
    assert.ok(decodeAccessLog(log, SIZE_BLOCKS).length > 0);

    // Another worker, empty cache: the flushed bytes come from the Volume.
    const moved = await second.startGrain("g1");
    const movedUri = nbdUri("g1", moved.socketPath);
    const read = await run("qemu-io", [
      "-f",
      "raw",
      "-c",
      "read -P 0x5a 0 1M",
      "-c",
      "read -P 0 1M 64k",
      "-c",
      "read -P 0x5a 1088k 1984k",
      "-c",
      "read -P 0x11 20M 8k",
      movedUri,
    ]);
    assert.equal(read.code, 0, read.stdout + read.stderr);
    assert.doesNotMatch(read.stdout, /Pattern verification failed/);

    // The first worker comes back and takes the lease: the second one's
    // flush must now fail rather than write behind it.
    const back = await first.startGrain("g1").catch((error) => error);
    assert.ok(!(back instanceof Error), String(back));
    const fenced = await run("qemu-io", [
      "-f",
      "raw",
      "-c",
      "write -P 0x22 0 4k",
      "-c",
      "flush",
      movedUri,
    ]);
    assert.match(
      fenced.stdout + fenced.stderr,
      /flush failed|Operation not permitted/,
    );
  } finally {
    await first.stop().catch(() => {});
    await second.stop().catch(() => {});
    await workspace.remove();
    await backend.cleanup();
  }
});
