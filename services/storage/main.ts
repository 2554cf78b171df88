/**
 * Entry point of the storage role: a storage node serving
 * proto/storage.capnp over the sealed UDP vat network, keeping its objects
 * on a local directory or an S3 bucket.
 *
 * Several nodes may share one S3 bucket (same `disk` and `diskSecret`);
 * they then serve the same objects, and SturdyRefs saved by one restore on
 * any other. Disk credentials live only in this configuration; they are
 * never logged.
 *
 * Run with (local disk): `deno run --allow-read=. --allow-write=DIR
 * --allow-net=127.0.0.1 --allow-ffi=ffi/build/libblackrock.so
 * services/storage/main.ts --config FILE`. With S3, --allow-net must also
 * name the endpoint's host, and the AWS SDK needs
 * `--allow-env=AWS_*,_X_AMZN_TRACE_ID,HOME,USERPROFILE,HOMEPATH,HOMEDRIVE` and
 * `--allow-read=$HOME/.aws` (it looks for shared config files even when
 * given every setting; none is needed) and `--allow-sys=osRelease` (for its
 * user agent).
 *
 * @module
 */
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import * as rpc from "../rpc/mod.ts";
import { parseVatIdHex, VatIdentity, vatIdHex } from "../rpc/vat_id.ts";
import { SealedUdpNetwork, VatDirectory } from "../rpc/sealed_udp/mod.ts";
import { SturdyRefs, TrustZone } from "../rpc/sturdyref.ts";
import { type Disk, LocalDisk } from "./disk.ts";
import { S3Disk } from "./s3_disk.ts";
import { ObjectStore } from "./store.ts";
import { StorageService } from "./service.ts";

const hex32 = z.string().regex(/^[0-9a-f]{64}$/, "64 lowercase hex digits");

/** The storage node's configuration. */
export const StorageConfig = z.strictObject({
  /** File holding this vat's ed25519 seed (created if missing). */
  vatKeyFile: z.string().min(1),
  /** The UDP address the vat listens on (IPv4; port 0 picks a free one). */
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(0),
  }).default({ hostname: "127.0.0.1", port: 0 }),
  disk: z.discriminatedUnion("kind", [
    z.strictObject({
      kind: z.literal("local"),
      path: z.string().min(1),
    }),
    z.strictObject({
      kind: z.literal("s3"),
      endpoint: z.string().url(),
      bucket: z.string().min(1),
      region: z.string().default("us-east-1"),
      prefix: z.string().regex(/^([a-z0-9-]+\/)?$/).default(""),
      accessKeyId: z.string().min(1),
      secretAccessKey: z.string().min(1),
    }),
  ]),
  /** Seals ownership records; shared by every node of the disk. */
  diskSecret: hex32,
  zone: z.strictObject({
    /** The storage zone's secret (seals storage SturdyRefs). */
    secret: hex32,
    /** Vat IDs (hex) of every storage node, this one included. */
    storageNodes: z.array(hex32),
    /** Vats that may present storage SturdyRefs for restoring (workers,
     * coordinators, shells). They cannot open the refs themselves. */
    presenters: z.array(hex32).default([]),
    /** Vats that may open user roots (coordinators, shells). */
    rootOpeners: z.array(hex32).default([]),
  }),
});

/** Parsed configuration of a storage node. */
export type StorageConfig = z.infer<typeof StorageConfig>;

function fromHex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
  }
  return out;
}

function openDisk(config: StorageConfig["disk"]): Promise<Disk> {
  if (config.kind === "local") return LocalDisk.open(config.path);
  return Promise.resolve(new S3Disk(config));
}

if (import.meta.main) {
  await runService({
    role: "storage",
    config: StorageConfig,
    stopTimeoutMs: 15_000,
    async start(config, log) {
      const identity = await VatIdentity.loadOrCreate(config.vatKeyFile);
      const vatId = identity.vatId;
      const disk = await openDisk(config.disk);
      const store = new ObjectStore({
        disk,
        diskSecret: fromHex(config.diskSecret),
      });
      const storageNodes = config.zone.storageNodes.map(parseVatIdHex);
      const presenters = config.zone.presenters.map(parseVatIdHex);
      const rootOpeners = new Set(config.zone.rootOpeners);
      const refs = new SturdyRefs({
        vatId,
        // A storage node saves refs only to the storage zone, never to its
        // own vat zone, so that secret need not outlive the process.
        vatSecret: crypto.getRandomValues(new Uint8Array(32)),
        zones: [{
          zone: TrustZone.STORAGE,
          members: [vatId, ...storageNodes, ...presenters],
          secret: fromHex(config.zone.secret),
        }],
      });
      const service = new StorageService({
        store,
        refs,
        mayOpenRoots: (peer) =>
          peer !== undefined && rootOpeners.has(vatIdHex(peer)),
        log,
      });
      const network = await SealedUdpNetwork.create({
        identity,
        bind: `${config.listen.hostname}:${config.listen.port}`,
        directory: new VatDirectory(),
      });
      const connections = new Set<rpc.RpcConnection>();
      let stopping = false;
      const acceptLoop = (async () => {
        while (!stopping) {
          let transport: rpc.MessageConnection;
          try {
            transport = await network.accept();
          } catch (error) {
            if (stopping) return;
            throw error;
          }
          const bootstrap = service.node(transport.peerVatId);
          const connection = new rpc.RpcConnection(transport, { bootstrap });
          connections.add(connection);
          log.debug("connection-accepted", {
            peer: transport.peerVatId && vatIdHex(transport.peerVatId),
          });
        }
      })();
      log.info("listening", {
        vatId: vatIdHex(vatId),
        address: network.address,
        disk: config.disk.kind,
      });
      return {
        done: acceptLoop,
        async stop() {
          stopping = true;
          for (const connection of connections) connection.close();
          await network.close();
          await disk.close();
        },
      };
    },
  });
}
