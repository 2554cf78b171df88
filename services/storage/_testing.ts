/**
 * The disks the storage tests run against: a local directory always, and
 * a real Ceph radosgw bucket from tests/fixtures/s3.ts.
 *
 * @module
 */
import { LocalDisk } from "./disk.ts";
import type { Disk } from "./disk.ts";
import { S3Disk } from "./s3_disk.ts";
import { ObjectStore, type ObjectStoreOptions } from "./store.ts";

/** A disk for one test, with a way to open a second handle to the same
 * data (another "storage node") and to clean up. */
export interface TestBackend {
  name: string;
  disk: Disk;
  /** Another disk over the same data, for a second node (S3 only; a local
   * directory admits one process, so this returns the same disk). */
  sibling(): Disk;
  cleanup(): Promise<void>;
}

/** The S3 endpoint the suite uses, set by the S3 fixture when it runs. */
export interface S3Target {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
}

let s3Target: S3Target | undefined;

/** Called once the suite's radosgw is up. */
export function useS3(target: S3Target | undefined): void {
  s3Target = target;
}

/** The configured S3 target, if any. */
export function currentS3(): S3Target | undefined {
  return s3Target;
}

export async function localBackend(): Promise<TestBackend> {
  const root = await Deno.makeTempDir({ prefix: "storage-test-" });
  const disk = await LocalDisk.open(root);
  return {
    name: "local",
    disk,
    sibling: () => disk,
    cleanup: async () => {
      await disk.close();
      await Deno.remove(root, { recursive: true });
    },
  };
}

export function s3Backend(target: S3Target): TestBackend {
  // Each test gets its own prefix so tests share the bucket safely.
  const prefix = `t${crypto.randomUUID().replaceAll("-", "")}/`;
  const open = () => new S3Disk({ ...target, prefix });
  const disks: S3Disk[] = [open()];
  return {
    name: "s3",
    disk: disks[0],
    sibling: () => {
      const disk = open();
      disks.push(disk);
      return disk;
    },
    cleanup: async () => {
      for (const disk of disks) await disk.close();
    },
  };
}

/** A fixed secret, as every node of a test's disk must share one. */
export const TEST_DISK_SECRET = new Uint8Array(32).fill(7);

/** A store over the backend's disk with small chunks so tests stay fast. */
export function testStore(
  disk: Disk,
  options: Partial<ObjectStoreOptions> = {},
): ObjectStore {
  return new ObjectStore({
    disk,
    diskSecret: TEST_DISK_SECRET,
    blobChunkBytes: 16 * 1024,
    ...options,
  });
}

/** Deterministic bytes for a test pattern. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Collects a stream of byte arrays. */
export async function collect(
  source: AsyncIterable<Uint8Array>,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let length = 0;
  for await (const part of source) {
    parts.push(part.slice());
    length += part.length;
  }
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
