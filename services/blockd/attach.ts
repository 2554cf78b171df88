/**
 * Gives the worker an ext4 filesystem for a grain from its NBD export.
 *
 * Where the kernel has an NBD driver (/dev/nbd0 exists) the kernel client
 * attaches the export with `nbd-client`; that is the production path.
 * Where it has none, `nbdfuse` exposes the export as a file and a loop
 * device turns the file into a block device. Either way a device that
 * holds no ext4 filesystem yet gets a fresh one, and it is mounted.
 *
 * Detaching unmounts (which makes the kernel flush), takes the device
 * down, and sends one more NBD FLUSH on its own connection, so that when
 * detach resolves everything the grain wrote is durable in the store.
 *
 * @module
 */
import type { Logger } from "../runtime/log.ts";
import { NbdClient } from "./nbd_client.ts";

/** Options of {@link attach}. */
export interface AttachOptions {
  socketPath: string;
  exportName: string;
  /** Where the filesystem is mounted; created if missing. */
  mountPoint: string;
  /** A private directory for the FUSE mount of the nbdfuse path. */
  workDirectory: string;
  /** Make a filesystem when the device holds none (a new volume). */
  formatIfNew: boolean;
  /** Extra `mount -o` options. */
  mountOptions?: string[];
  /** Force a path instead of choosing by /dev/nbd0. */
  method?: "kernel-nbd" | "nbdfuse-loop";
  log: Logger;
}

/** A mounted grain filesystem. */
export interface Attachment {
  method: "kernel-nbd" | "nbdfuse-loop";
  /** The block device holding the filesystem. */
  device: string;
  mountPoint: string;
  /** Whether {@link attach} made the filesystem. */
  formatted: boolean;
  /** Unmounts, takes the device down and flushes the export. */
  detach(): Promise<void>;
  /** Tears everything down without flushing, for when the daemon died:
   * lazy unmount, device down, FUSE mount dropped. */
  abandon(): Promise<void>;
}

/** A step of attaching or detaching failed; names the command. */
export class AttachError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AttachError";
  }
}

async function command(program: string, args: string[]): Promise<string> {
  let output;
  try {
    output = await new Deno.Command(program, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (error) {
    throw new AttachError(`cannot run ${program}: ${error}`);
  }
  const text = new TextDecoder();
  if (output.code !== 0) {
    throw new AttachError(
      `${program} ${args.join(" ")} exited with ${output.code}: ${
        text.decode(output.stderr).trim()
      }`,
    );
  }
  return text.decode(output.stdout);
}

/** Whether this kernel has the NBD driver loaded. A process with scoped
 * permissions (the worker) may not even stat a device file, so it asks
 * `test` instead of taking the refusal for "no driver". */
export async function kernelHasNbd(): Promise<boolean> {
  try {
    await Deno.stat("/dev/nbd0");
    return true;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotCapable)) return false;
  }
  const probe = await new Deno.Command("test", {
    args: ["-e", "/dev/nbd0"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
  return probe.success;
}

/** Whether `device` holds an ext2/3/4 filesystem, as `blkid` probes it.
 * A program rather than reading the superblock here: Deno lets a process
 * with scoped permissions (the worker) open no device file. */
export async function hasExtFilesystem(device: string): Promise<boolean> {
  let output;
  try {
    output = await new Deno.Command("blkid", {
      args: ["-p", "-s", "TYPE", "-o", "value", device],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (error) {
    throw new AttachError(`cannot run blkid: ${error}`);
  }
  // 2: no filesystem signature found.
  if (output.code === 2) return false;
  const text = new TextDecoder();
  if (output.code !== 0) {
    throw new AttachError(
      `blkid -p ${device} exited with ${output.code}: ${
        text.decode(output.stderr).trim()
      }`,
    );
  }
  return /^ext[234]$/.test(text.decode(output.stdout).trim());
}

/** Sends FLUSH to an export on a connection of its own. */
export async function flushExport(
  socketPath: string,
  exportName: string,
): Promise<void> {
  const client = await NbdClient.connect(socketPath, exportName);
  try {
    const reply = await client.flush();
    if (reply.errno !== 0) {
      throw new AttachError(`flush of ${exportName} failed: ${reply.errno}`);
    }
  } finally {
    await client.disconnect().catch(() => {});
  }
}

/** See the module documentation. */
export async function attach(options: AttachOptions): Promise<Attachment> {
  const method = options.method ??
    (await kernelHasNbd() ? "kernel-nbd" : "nbdfuse-loop");
  const { device, release } = await connectDevice({ ...options, method });
  try {
    let formatted = false;
    if (options.formatIfNew && !(await hasExtFilesystem(device))) {
      await command("mkfs.ext4", ["-q", "-F", device]);
      formatted = true;
      options.log.info("filesystem-created", { device });
    }
    await Deno.mkdir(options.mountPoint, { recursive: true });
    const mountArgs = ["-t", "ext4"];
    if (options.mountOptions?.length) {
      mountArgs.push("-o", options.mountOptions.join(","));
    }
    await command("mount", [...mountArgs, device, options.mountPoint]);
    options.log.info("grain-attached", {
      method,
      device,
      mountPoint: options.mountPoint,
    });
    let detached = false;
    let unmounted = false;
    let released = false;
    return {
      method,
      device,
      mountPoint: options.mountPoint,
      formatted,
      detach: async () => {
        // A failed step leaves the attachment as it is, to retry or to
        // abandon; only success marks it detached.
        if (detached) return;
        if (!unmounted) {
          await command("umount", [options.mountPoint]);
          unmounted = true;
        }
        if (!released) {
          await release();
          released = true;
        }
        await flushExport(options.socketPath, options.exportName);
        detached = true;
        options.log.info("grain-detached", { device });
      },
      abandon: async () => {
        if (detached) return;
        detached = true;
        if (!unmounted) {
          await command("umount", ["-l", options.mountPoint]).catch(() => {});
        }
        if (!released) await release(true);
        options.log.warn("grain-abandoned", { device });
      },
    };
  } catch (error) {
    await release().catch(() => {});
    throw error;
  }
}

/** A block device for the export, not mounted. */
export interface Connected {
  device: string;
  /** Takes the device down; `force` when the daemon is gone. */
  release(force?: boolean): Promise<void>;
}

/** Connects the export as a block device without mounting it (for a
 * filesystem check, say), by the same path {@link attach} would take. */
export async function connectDevice(
  options: AttachOptions,
): Promise<Connected> {
  const method = options.method ??
    (await kernelHasNbd() ? "kernel-nbd" : "nbdfuse-loop");
  return method === "kernel-nbd"
    ? await connectKernel(options)
    : await connectFuseLoop(options);
}

/** Attaches the export to a free /dev/nbdN with nbd-client. */
async function connectKernel(options: AttachOptions): Promise<Connected> {
  for (let index = 0; index < 256; index++) {
    const device = `/dev/nbd${index}`;
    if (!(await Deno.stat(device).then(() => true, () => false))) break;
    const busy = await Deno.stat(`/sys/block/nbd${index}/pid`)
      .then(() => true, () => false);
    if (busy) continue;
    await command("nbd-client", [
      "-unix",
      options.socketPath,
      "-N",
      options.exportName,
      device,
    ]);
    return {
      device,
      release: async (force = false) => {
        const done = command("nbd-client", ["-d", device]);
        if (force) await done.catch(() => {});
        else await done;
      },
    };
  }
  throw new AttachError("no free /dev/nbd device");
}

/** Exposes the export as a file with nbdfuse and puts a loop device on
 * it. The loop device uses direct I/O so that the page cache holds the
 * data once (above the filesystem), not twice. */
async function connectFuseLoop(options: AttachOptions): Promise<Connected> {
  const fuseDirectory = `${options.workDirectory}/nbdfuse`;
  const pidFile = `${options.workDirectory}/nbdfuse.pid`;
  await Deno.mkdir(fuseDirectory, { recursive: true });
  await Deno.remove(pidFile).catch(() => {});
  const uri = `nbd+unix:///${options.exportName}?socket=${options.socketPath}`;
  const fuse = new Deno.Command("nbdfuse", {
    args: ["-P", pidFile, `${fuseDirectory}/disk`, uri],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let fuseExited = false;
  const fuseStatus = fuse.output().then((output) => {
    fuseExited = true;
    return output;
  });
  const unmountFuse = async (force = false) => {
    // Even when nbdfuse is gone (it exits when the daemon dies) its mount
    // point may be left behind, answering "not connected".
    const args = force ? ["-u", "-z", fuseDirectory] : ["-u", fuseDirectory];
    await command("fusermount3", args).catch(() => {
      if (!fuseExited) fuse.kill("SIGTERM");
    });
    if (force && !fuseExited) {
      const timer = setTimeout(() => {
        if (!fuseExited) fuse.kill("SIGKILL");
      }, 2_000);
      await fuseStatus;
      clearTimeout(timer);
    }
    await fuseStatus;
  };
  const deadline = Date.now() + 20_000;
  while (!(await Deno.stat(pidFile).then(() => true, () => false))) {
    if (fuseExited || Date.now() > deadline) {
      if (!fuseExited) fuse.kill("SIGKILL");
      const output = await fuseStatus;
      throw new AttachError(
        `nbdfuse did not come up: ${
          new TextDecoder().decode(output.stderr).trim()
        }`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  let device: string;
  try {
    device = (await command("losetup", [
      "--find",
      "--show",
      "--direct-io=on",
      `${fuseDirectory}/disk`,
    ])).trim();
  } catch (error) {
    await unmountFuse();
    throw error;
  }
  return {
    device,
    release: async (force = false) => {
      const detached = command("losetup", ["-d", device]);
      if (force) await detached.catch(() => {});
      else await detached;
      // losetup -d returns before the loop device lets go of the file.
      for (let i = 0; i < 100; i++) {
        const backing = await Deno.readTextFile(
          `/sys/block/${device.slice(5)}/loop/backing_file`,
        ).catch(() => "");
        if (backing === "") break;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await unmountFuse(force);
    },
  };
}
