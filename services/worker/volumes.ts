/**
 * Grain volumes on storage: the worker attaches a grain's storage Volume
 * (named by its SturdyRef) as an ext4 filesystem through the block daemon
 * (services/blockd/), and detaches it when the grain stops.
 *
 * Design: one block daemon process per worker (one storage vat: two
 * processes may not share a vat ID on the sealed UDP network), started by
 * the worker with a configuration naming no grain, and a control socket
 * (services/blockd/control.ts) on which the worker hands over each
 * volume's SturdyRef when its grain starts. The socket and the daemon's
 * files are private to the worker (mode 0700 directory).
 *
 * Detaching unmounts the filesystem (the kernel flushes), takes the device
 * down, sends a last NBD FLUSH (services/blockd/attach.ts), then asks the
 * daemon to detach, which answers only once every dirty block is written
 * back to storage and the lease is given up. So a detach that resolves
 * means the grain's data is durable on the storage nodes.
 *
 * @module
 */
import { libraryPath } from "../../ffi/native.ts";
import type { Logger } from "../runtime/log.ts";
import { roleCommand } from "../runtime/permissions.ts";
import { attach, type Attachment } from "../blockd/attach.ts";
import { encodeVolumeRef } from "../blockd/storage_nodes.ts";
import { slotName } from "../blockd/control.ts";

/** Programs attaching runs (the nbdfuse path, the kernel NBD path, and
 * the probes for a filesystem and for the NBD driver). */
export const ATTACH_PROGRAMS = [
  "nbdfuse",
  "fusermount3",
  "losetup",
  "mkfs.ext4",
  "mount",
  "umount",
  "nbd-client",
  "blkid",
  "test",
];

/** The worker's block daemon and where it finds the storage zone. */
export interface BlockVolumesOptions {
  /** The worker's state folder: holds the daemon's sockets, cache and
   * configuration (blockd/) and the attach work folders. */
  stateDir: string;
  /** The daemon's vat key (a presenter of the storage zone). */
  vatKeyFile: string;
  /** Storage nodes: vat ID (hex) and UDP `host:port`. */
  nodes: { vatId: string; address: string }[];
  /** This worker's name in leases. */
  holder: string;
  /** The deno binary that runs the daemon. */
  deno?: string;
  /** Daemon cache tuning passed through (services/blockd/main.ts). */
  cache?: Record<string, number>;
  /** Size of a volume whose spec gives none; 1 GiB. */
  defaultVolumeBytes?: number;
  /** Volumes attached at once (the daemon's socket slots); 64. One
   * more attach fails with a clear error until a grain stops. */
  slots?: number;
  /** Force an attach path (tests). */
  method?: "kernel-nbd" | "nbdfuse-loop";
  log: Logger;
}

/** A grain's volume as the worker names it. */
export interface VolumeSpec {
  /** The Volume's SturdyRef (sealed to the storage zone). */
  ref: Uint8Array;
  /** Size of the block device; 0 takes the worker's default. */
  sizeBytes: number;
}

/** An attached grain volume. */
export interface AttachedVolume {
  /** Where the ext4 is mounted; the grain's /var. */
  mountPoint: string;
  /** Whether the volume had no filesystem yet (a new grain). */
  formatted: boolean;
  /** Unmounts, flushes, and has the daemon write the volume back and
   * give its lease up; see the module docs. */
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
  readonly #controlPath: string;
  readonly #child: Deno.ChildProcess;
  readonly #status: Promise<Deno.CommandStatus>;
  #exited = false;

  private constructor(
    options: BlockVolumesOptions,
    controlPath: string,
    child: Deno.ChildProcess,
  ) {
    this.options = options;
    this.#controlPath = controlPath;
    this.#child = child;
    this.#status = child.status.then((status) => {
      this.#exited = true;
      return status;
    });
  }

  /** Starts the worker's block daemon and waits for its control socket. */
  static async start(options: BlockVolumesOptions): Promise<BlockVolumes> {
    const dir = `${options.stateDir}/blockd`;
    const sockets = `${dir}/sockets`;
    const controlPath = `${dir}/control.sock`;
    const slots = options.slots ?? 64;
    // The cache of an earlier daemon is dropped: after a restart the
    // daemon trusts only storage.
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const configFile = `${dir}/blockd.json`;
    const config = {
      socketDirectory: sockets,
      cacheDirectory: `${dir}/cache`,
      holder: options.holder,
      store: {
        kind: "storage",
        vatKeyFile: options.vatKeyFile,
        nodes: options.nodes,
      },
      grains: [],
      control: { socketPath: controlPath, slots },
      ...(options.cache ? { cache: options.cache } : {}),
    };
    await Deno.writeTextFile(configFile, JSON.stringify(config), {
      mode: 0o600,
    });
    const hosts = new Set(
      options.nodes.map((n) => n.address.slice(0, n.address.lastIndexOf(":"))),
    );
    const [command, ...args] = roleCommand({
      deno: options.deno ?? Deno.execPath(),
      entry: blockdEntry,
      configFile,
      permissions: {
        read: [projectRoot, dir, options.vatKeyFile],
        write: [dir],
        net: [
          `unix:${controlPath}`,
          ...Array.from(
            { length: slots },
            (_, i) => `unix:${sockets}/${slotName(i)}.sock`,
          ),
          ...hosts,
        ],
        ffi: [libraryPath],
      },
    });
    const child = new Deno.Command(command, {
      args,
      cwd: projectRoot,
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    const volumes = new BlockVolumes(options, controlPath, child);
    try {
      await waitForSocket(controlPath, () => volumes.#exited, 30_000);
    } catch (error) {
      await volumes.close().catch(() => {});
      throw new VolumeAttachError(`block daemon did not start: ${error}`);
    }
    return volumes;
  }

  /** Attaches `grainId`'s volume at `mountPoint`. */
  async attach(
    grainId: string,
    volume: VolumeSpec,
    mountPoint: string,
  ): Promise<AttachedVolume> {
    const log = this.options.log.with({ grainId });
    const reply = await this.#request({
      op: "attach",
      grain: grainId,
      sizeBytes: volume.sizeBytes ||
        (this.options.defaultVolumeBytes ?? 1 << 30),
      volumeRef: encodeVolumeRef(volume.ref),
    });
    const socketPath = String(reply.socketPath);
    const exportName = String(reply.exportName);
    let attachment: Attachment;
    try {
      attachment = await attach({
        socketPath,
        exportName,
        mountPoint,
        workDirectory: `${this.options.stateDir}/blockd-attach/${grainId}`,
        formatIfNew: true,
        method: this.options.method,
        log,
      });
    } catch (error) {
      await this.#request({ op: "detach", grain: grainId }).catch(() => {});
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
        await this.#request({ op: "detach", grain: grainId });
        detached = true;
        log.info("volume-detached", {});
      },
    };
  }

  /** Stops the daemon (it writes every attached volume back first);
   * throws if it did not exit cleanly. */
  async close(): Promise<void> {
    if (!this.#exited) this.#child.kill("SIGTERM");
    const { code } = await this.#status;
    if (code !== 0) {
      throw new VolumeAttachError(`block daemon exited with ${code}`);
    }
  }

  /** One request on a connection of its own; throws on an error reply. */
  async #request(
    request: Record<string, unknown>,
  ): Promise<Record<string, unknown>> {
    const conn = await Deno.connect({
      transport: "unix",
      path: this.#controlPath,
    });
    try {
      const bytes = new TextEncoder().encode(JSON.stringify(request) + "\n");
      for (let at = 0; at < bytes.length;) {
        at += await conn.write(bytes.subarray(at));
      }
      let text = "";
      const decoder = new TextDecoder();
      const buffer = new Uint8Array(4096);
      while (!text.includes("\n")) {
        const count = await conn.read(buffer);
        if (count === null) {
          throw new VolumeAttachError(
            `block daemon closed the control connection during ${request.op}`,
          );
        }
        text += decoder.decode(buffer.subarray(0, count), { stream: true });
      }
      const reply = JSON.parse(text.slice(0, text.indexOf("\n")));
      if (reply.ok !== true) {
        throw new VolumeAttachError(
          `block daemon refused ${request.op} of ${request.grain}: ${reply.error}`,
        );
      }
      return reply;
    } finally {
      conn.close();
    }
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
