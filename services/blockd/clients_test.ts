/**
 * The daemon against real NBD clients: nbdinfo, qemu-io and nbdcopy.
 */
import assert from "node:assert/strict";
import { DirectoryBlockStore } from "./directory_store.ts";
import {
  makeWorkspace,
  nbdUri,
  run,
  runOk,
  startDaemon,
  type Workspace,
} from "./_testing.ts";
import type { BlockDaemon } from "./daemon.ts";

const SIZE_BYTES = 64 * 1024 * 1024;

async function withDaemon(
  body: (socketPath: string, ws: Workspace, d: BlockDaemon) => Promise<void>,
) {
  const workspace = await makeWorkspace();
  const daemon = startDaemon(workspace, SIZE_BYTES);
  try {
    const { socketPath } = await daemon.startGrain("g1");
    await body(socketPath, workspace, daemon);
  } finally {
    await daemon.stop();
    await workspace.remove();
  }
}

Deno.test("nbdinfo lists the export with its size, flags and trim", async () => {
  await withDaemon(async (socketPath) => {
    const list = JSON.parse(
      await runOk("nbdinfo", [
        "--list",
        "--json",
        `nbd+unix://?socket=${socketPath}`,
      ]),
    );
    assert.equal(list.protocol, "newstyle-fixed");
    assert.deepEqual(
      list.exports.map((e: { "export-name": string }) => e["export-name"]),
      [
        "g1",
      ],
    );
    const info = JSON.parse(
      await runOk("nbdinfo", ["--json", nbdUri("g1", socketPath)]),
    ).exports[0];
    assert.equal(info["export-size"], SIZE_BYTES);
    assert.equal(info.is_read_only, false);
    assert.equal(info.can_trim, true);
    assert.equal(info.can_zero, true);
    assert.equal(info.can_flush, true);
    assert.equal(info.can_fua, true);
    assert.equal(info.can_multi_conn, true);
    assert.equal(info.block_size_preferred, 4096);
    const unknown = await run("nbdinfo", [nbdUri("nope", socketPath)]);
    assert.notEqual(unknown.code, 0);
  });
});

Deno.test("qemu-io writes, reads back patterns, discards, and fails past the end", async () => {
  await withDaemon(async (socketPath, workspace, daemon) => {
    const uri = nbdUri("g1", socketPath);
    const io = (...commands: string[]) =>
      run("qemu-io", ["-f", "raw", ...commands.flatMap((c) => ["-c", c]), uri]);
    const written = await io(
      "write -P 0xa5 0 1M",
      "write -P 0x3c 1536 3000",
      "write -z 2M 64k",
      "write -P 0x77 -f 8M 512",
      "flush",
    );
    assert.equal(written.code, 0, written.stdout + written.stderr);
    const read = await io(
      "read -P 0xa5 0 1536",
      "read -P 0x3c 1536 3000",
      "read -P 0xa5 4536 1043040",
      "read -P 0 2M 64k",
      "read -P 0x77 8M 512",
      "read -P 0 9M 1M",
    );
    assert.equal(read.code, 0, read.stdout + read.stderr);
    assert.doesNotMatch(read.stdout, /Pattern verification failed/);

    const discard = await io("discard 0 1M", "read -P 0 0 1M");
    assert.equal(discard.code, 0, discard.stdout + discard.stderr);
    assert.doesNotMatch(discard.stdout, /Pattern verification failed/);

    const pastEnd = await io(
      `read ${SIZE_BYTES - 512} 4k`,
      `write ${SIZE_BYTES} 512`,
      `discard ${SIZE_BYTES - 4096} 8k`,
    );
    assert.match(pastEnd.stdout, /read failed/);
    assert.match(pastEnd.stdout, /write failed/);
    assert.match(pastEnd.stdout, /discard failed/);

    // The flushed pattern at 8 MiB is in the store itself.
    const grain = daemon.grain("g1")!;
    await grain.cache.flush();
    const store = await DirectoryBlockStore.open(`${workspace.store}/g1`);
    try {
      const block = await store.readBlocks(2048, 1);
      assert.ok(block.subarray(0, 512).every((b) => b === 0x77));
      assert.ok(block.subarray(512).every((b) => b === 0));
    } finally {
      await store.close();
    }
  });
});

Deno.test("nbdcopy round trip: file to export to file", async () => {
  await withDaemon(async (socketPath, workspace) => {
    const input = `${workspace.root}/in.img`;
    const output = `${workspace.root}/out.img`;
    const data = new Uint8Array(SIZE_BYTES);
    // Random data with holes, so that nbdcopy's zero detection is used too.
    for (let at = 0; at < SIZE_BYTES; at += 65536) {
      if ((at / 65536) % 3 !== 0) {
        crypto.getRandomValues(data.subarray(at, at + 65536));
      }
    }
    await Deno.writeFile(input, data);
    const uri = nbdUri("g1", socketPath);
    await runOk("nbdcopy", ["--flush", input, uri]);
    await runOk("nbdcopy", [uri, output]);
    const back = await Deno.readFile(output);
    assert.equal(back.length, data.length);
    assert.ok(back.every((b, i) => b === data[i]), "copy differs");
  });
});
