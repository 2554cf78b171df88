/**
 * A grain's ext4 filesystem through the daemon, by the path this machine
 * has: nbdfuse plus a loop device (no kernel NBD driver here).
 */
import assert from "node:assert/strict";
import { attach } from "./attach.ts";
import { DirectoryBlockStore } from "./directory_store.ts";
import { makeWorkspace, quietLogger, runOk, startDaemon } from "./_testing.ts";

const SIZE_BYTES = 256 * 1024 * 1024;

async function storeAllocatedBlocks(root: string): Promise<number> {
  const store = await DirectoryBlockStore.open(root);
  try {
    return await store.allocatedBlocks();
  } finally {
    await store.close();
  }
}

Deno.test("mkfs, mount, write files, unmount; fstrim frees blocks in the store", async () => {
  const workspace = await makeWorkspace();
  const daemon = startDaemon(workspace, SIZE_BYTES);
  const mountPoint = `${workspace.root}/mnt`;
  const attachOptions = {
    exportName: "g1",
    mountPoint,
    workDirectory: `${workspace.root}/attach`,
    formatIfNew: true,
    log: quietLogger(),
  };
  try {
    const grain = await daemon.startGrain("g1");
    let attachment = await attach({
      ...attachOptions,
      socketPath: grain.socketPath,
    });
    assert.equal(attachment.method, "nbdfuse-loop");
    assert.equal(attachment.formatted, true);
    try {
      const payload = new Uint8Array(24 * 1024 * 1024);
      for (let at = 0; at < payload.length; at += 65536) {
        crypto.getRandomValues(payload.subarray(at, at + 65536));
      }
      await Deno.writeFile(`${mountPoint}/payload.bin`, payload);
      await Deno.writeTextFile(`${mountPoint}/note.txt`, "grain data");
    } catch (error) {
      await attachment.abandon();
      throw error;
    }
    await attachment.detach();

    // Detach flushed: the store holds the files' blocks.
    const storeRoot = `${workspace.store}/g1`;
    const afterWrite = await storeAllocatedBlocks(storeRoot);
    assert.ok(afterWrite > 6144, `store holds only ${afterWrite} blocks`);

    // Mounting again finds the filesystem (no second mkfs) and the files.
    attachment = await attach({
      ...attachOptions,
      socketPath: grain.socketPath,
    });
    try {
      assert.equal(attachment.formatted, false);
      assert.equal(
        await Deno.readTextFile(`${mountPoint}/note.txt`),
        "grain data",
      );
      await Deno.remove(`${mountPoint}/payload.bin`);
      // Freed blocks become trimmable once the deletion is committed.
      await runOk("sync", ["-f", mountPoint]);
      const trimmed = await runOk("fstrim", ["-v", mountPoint]);
      assert.match(trimmed, /trimmed/);
    } catch (error) {
      await attachment.abandon();
      throw error;
    }
    await attachment.detach();
    const afterTrim = await storeAllocatedBlocks(storeRoot);
    assert.ok(
      afterTrim < afterWrite - 6000,
      `store went from ${afterWrite} to ${afterTrim} blocks only`,
    );
    await runOk("e2fsck", ["-fn", `${workspace.store}/g1/blocks`]);
  } finally {
    await daemon.stop();
    await workspace.remove();
  }
});
