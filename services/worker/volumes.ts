/**
 * Grain volumes on storage: the worker attaches a grain's storage Volume
 * (named by its SturdyRef) as an ext4 filesystem through the block daemon
 * (services/blockd/), and detaches it when the grain stops.
 *
 * Design: one block daemon process per attached grain, started by the
 * worker with a configuration file naming just that grain's volume (mode
 * 0600 under the worker's state folder, since it holds the ref). So the
 * ref reaches the daemon without a control protocol, and a daemon that
 * dies takes only its own grain down. The cost is one Deno process per
 * running grain; a shared daemon with a control socket would save that
 * memory at the price of a new protocol.
 *
 * Detaching unmounts the filesystem (the kernel flushes), takes the device
 * down, sends a last NBD FLUSH (services/blockd/attach.ts), then stops the
 * daemon with SIGTERM, which writes every dirty block back to storage and
 * exits 0 only if that worked. So a detach that resolves means the grain's
 * data is durable on the storage nodes.
 *
 * @module
 */
import { libraryPath } from "../../ffi/native.ts";
import type { Logger } from "../runtime/log.ts";
import { roleCommand } from "../runtime/permissions.ts";
import { attach, type Attachment } from "../blockd/attach.ts";
import { encodeVolumeRef } from "../blockd/storage_nodes.ts";

/** Programs attaching runs (the nbdfuse path and the kernel NBD path). */
export const ATTACH_PROGRAMS = [
  "nbdfuse",
  "fusermount3",
  "losetup",
  "mkfs.ext4",
  "mount",
  "umount",
  "nbd-client",
];

/** Where the block daemons find the storage zone. */
export interface BlockVolumesOptions {
  /** Holds the daemons' sockets, caches, configurations and mounts. */
  stateDir: string;
  /** The daemons' vat key (a presenter of the storage zone). */
  vatKeyFile: string;
  /** Storage nodes: vat ID (hex) and UDP `host:port`. */
  nodes: { vatId: string; address: string }[];
  /** This worker's name in leases. */
  holder: string;
  /** The deno binary that runs the daemons. */
  deno?: string;
  /** Daemon cache tuning passed through (services/blockd/main.ts). */
  cache?: Record<string, number>;
  /** Force an attach path (tests). */
  method?: "kernel-nbd" | "nbdfuse-loop";
  log: Logger;
}

/** A grain's volume as the worker names it. */
export interface VolumeSpec {
  /** The Volume's SturdyRef (sealed to the storage zone). */
  ref: Uint8Array;
  sizeBytes: number;
}

/** An attached grain volume. */
export interface AttachedVolume {
  /** Where the ext4 is mounted; the grain's /var. */
  mountPoint: string;
  /** Whether the volume had no filesystem yet (a new grain). */
  formatted: boolean;
  /** Unmounts, flushes and stops the daemon; see the module docs. */
  detach(): Promise<void>;
}

/** A daemon or attach step failed; names the grain. */
export class VolumeAttachError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "VolumeAttachError";
  }
}

const blockdEntry = new URL("../blockd/main.ts", import.meta.url).pathname;
const projectRoot = new URL("../..", import.meta.url).pathname.replace(
  /\/$/,
  "",
);

/** See the module documentation. */
export class BlockVolumes {
  readonly options: BlockVolumesOptions;

  constructor(options: BlockVolumesOptions) {
    this.options = options;
  }

  /** The hosts of the storage nodes, for the daemon's --allow-net. */
  #storageHosts(): string[] {
    return [
      ...new Set(
        this.options.nodes.map((n) =>
          n.address.slice(0, n.address.lastIndexOf(":"))
        ),
      ),
    ];
  }

  /** Attaches `grainId`'s volume at `mountPoint`. */
  async attach(
    grainId: string,
    volume: VolumeSpec,
    mountPoint: string,
  ): Promise<AttachedVolume> {
    const dir = `${this.options.stateDir}/blockd/${grainId}`;
    const sockets = `${dir}/sockets`;
    const socketPath = `${sockets}/${grainId}.sock`;
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    // A cache left by an earlier daemon of this grain is dropped: the
    // daemon trusts only storage after a restart elsewhere.
    await Deno.remove(`${dir}/cache`, { recursive: true }).catch(() => {});
    await Deno.remove(socketPath).catch(() => {});
    const configFile = `${dir}/blockd.json`;
    const config = {
      socketDirectory: sockets,
      cacheDirectory: `${dir}/cache`,
      holder: this.options.holder,
      store: {
        kind: "storage",
        vatKeyFile: this.options.vatKeyFile,
        nodes: this.options.nodes,
      },
      grains: [{
        name: grainId,
        sizeBytes: volume.sizeBytes,
        volumeRef: encodeVolumeRef(volume.ref),
      }],
      ...(this.options.cache ? { cache: this.options.cache } : {}),
    };
    await Deno.writeTextFile(configFile, JSON.stringify(config), {
      mode: 0o600,
    });
    const [command, ...args] = roleCommand({
      deno: this.options.deno ?? Deno.execPath(),
      entry: blockdEntry,
      configFile,
      permissions: {
        read: [projectRoot, dir, this.options.vatKeyFile],
        write: [dir],
        net: [`unix:${socketPath}`, ...this.#storageHosts()],
        ffi: [libraryPath],
      },
    });
    const log = this.options.log.with({ grainId });
    const child = new Deno.Command(command, {
      args,
      cwd: projectRoot,
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    let exited = false;
    const status = child.status.then((s) => {
      exited = true;
      return s;
    });
    const kill = async () => {
      if (!exited) child.kill("SIGKILL");
      await status;
    };

    let attachment: Attachment;
    try {
      await waitForSocket(socketPath, () => exited, 30_000);
      attachment = await attach({
        socketPath,
        exportName: grainId,
        mountPoint,
        workDirectory: `${dir}/attach`,
        formatIfNew: true,
        method: this.options.method,
        log,
      });
    } catch (error) {
      await kill();
      throw new VolumeAttachError(
        `cannot attach the volume of grain ${grainId}: ${error}`,
        { cause: error },
      );
    }
    log.info("volume-attached", { formatted: attachment.formatted });

    let detached = false;
    return {
      mountPoint,
      formatted: attachment.formatted,
      detach: async () => {
        if (detached) return;
        await attachment.detach();
        if (!exited) child.kill("SIGTERM");
        const { code } = await status;
        detached = true;
        if (code !== 0) {
          throw new VolumeAttachError(
            `block daemon of grain ${grainId} exited with ${code} on detach`,
          );
        }
        log.info("volume-detached", {});
      },
    };
  }
}

async function waitForSocket(
  path: string,
  exited: () => boolean,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ready = await Deno.stat(path).then(() => true, () => false);
    if (ready) return;
    if (exited()) throw new Error("the block daemon exited before serving");
    if (Date.now() > deadline) {
      throw new Error(`the block daemon did not serve within ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
