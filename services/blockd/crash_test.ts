/**
 * The daemon as its own process (services/blockd/main.ts), killed with
 * SIGKILL, and started again on an empty cache under another holder name,
 * as a different worker would after the first one died.
 */
import assert from "node:assert/strict";
import { attach, type AttachOptions, connectDevice } from "./attach.ts";
import {
  makeWorkspace,
  quietLogger,
  run,
  runOk,
  spawnDaemon,
  type Workspace,
} from "./_testing.ts";

const SIZE_BYTES = 128 * 1024 * 1024;

function daemonConfig(
  workspace: Workspace,
  worker: string,
  cache: Record<string, number>,
) {
  return {
    socketDirectory: workspace.sockets,
    cacheDirectory: `${workspace.root}/cache-${worker}`,
    holder: worker,
    store: { kind: "directory", root: workspace.store, leaseTtlMs: 1_500 },
    grains: [{ name: "g1", sizeBytes: SIZE_BYTES }],
    leaseWaitMs: 20_000,
    cache,
  };
}

function attachOptions(workspace: Workspace): AttachOptions {
  return {
    socketPath: `${workspace.sockets}/g1.sock`,
    exportName: "g1",
    mountPoint: `${workspace.root}/mnt`,
    workDirectory: `${workspace.root}/attach`,
    formatIfNew: true,
    log: quietLogger(),
  };
}

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, Math.min(length, at + 65536)));
  }
  return bytes;
}

Deno.test("SIGKILL after a flush: every flushed byte is there on an empty cache", async () => {
  const workspace = await makeWorkspace();
  // No background write-back: only the explicit flush makes data durable.
  const noWriteback = { maxUnflushedMs: 3_600_000, maxDirtyBlocks: 1 << 30 };
  const first = await spawnDaemon(
    workspace,
    daemonConfig(workspace, "worker-a", noWriteback),
    ["g1"],
    "worker-a",
  );
  const files = new Map<string, Uint8Array>();
  try {
    const attachment = await attach(attachOptions(workspace));
    try {
      for (let i = 0; i < 6; i++) {
        const data = randomBytes(1_000_000 + i * 333_333);
        files.set(`file${i}.bin`, data);
        await Deno.writeFile(`${workspace.root}/mnt/file${i}.bin`, data);
      }
      // syncfs commits the journal and sends the device a flush.
      await runOk("sync", ["-f", `${workspace.root}/mnt`]);
      await first.kill();
    } finally {
      await attachment.abandon();
    }

    const second = await spawnDaemon(
      workspace,
      daemonConfig(workspace, "worker-b", noWriteback),
      ["g1"],
      "worker-b",
    );
    try {
      const again = await attach(attachOptions(workspace));
      try {
        assert.equal(again.formatted, false);
        for (const [name, data] of files) {
          const back = await Deno.readFile(`${workspace.root}/mnt/${name}`);
          assert.equal(back.length, data.length, name);
          assert.ok(back.every((b, i) => b === data[i]), `${name} differs`);
        }
      } finally {
        await again.detach();
      }
      assert.equal(await second.stop(), 0);
    } finally {
      await second.kill();
    }
  } finally {
    await first.kill();
    await workspace.remove();
  }
});

Deno.test("SIGKILL before a flush: the filesystem is e2fsck clean at the last flush", async () => {
  const workspace = await makeWorkspace();
  const noWriteback = { maxUnflushedMs: 3_600_000, maxDirtyBlocks: 1 << 30 };
  const first = await spawnDaemon(
    workspace,
    daemonConfig(workspace, "worker-a", noWriteback),
    ["g1"],
    "worker-a",
  );
  const flushed = randomBytes(3_000_000);
  try {
    const attachment = await attach(attachOptions(workspace));
    try {
      const mnt = `${workspace.root}/mnt`;
      await Deno.writeFile(`${mnt}/flushed.bin`, flushed);
      await runOk("sync", ["-f", mnt]);
      // Unflushed: data written straight to the device (O_DIRECT), its
      // metadata still in an open journal transaction, more files in the
      // page cache.
      await Deno.mkdir(`${mnt}/later`);
      await runOk("dd", [
        "if=/dev/urandom",
        `of=${mnt}/later/direct.bin`,
        "bs=1M",
        "count=8",
        "oflag=direct",
        "status=none",
      ]);
      for (let i = 0; i < 20; i++) {
        await Deno.writeTextFile(`${mnt}/later/small${i}.txt`, `n${i}`);
      }
      await Deno.remove(`${mnt}/flushed.bin.missing`).catch(() => {});
      await first.kill();
    } finally {
      await attachment.abandon();
    }

    const second = await spawnDaemon(
      workspace,
      daemonConfig(workspace, "worker-b", noWriteback),
      ["g1"],
      "worker-b",
    );
    try {
      // Mounting replays the journal, as after a power loss.
      const again = await attach(attachOptions(workspace));
      try {
        const back = await Deno.readFile(`${workspace.root}/mnt/flushed.bin`);
        assert.ok(
          back.length === flushed.length &&
            back.every((b, i) => b === flushed[i]),
          "flushed file differs",
        );
      } finally {
        await again.detach();
      }
      const device = await connectDevice(attachOptions(workspace));
      try {
        const check = await run("e2fsck", ["-fn", device.device]);
        assert.equal(check.code, 0, check.stdout + check.stderr);
      } finally {
        await device.release();
      }
      assert.equal(await second.stop(), 0);
    } finally {
      await second.kill();
    }
  } finally {
    await first.kill();
    await workspace.remove();
  }
});
