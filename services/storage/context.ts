/**
 * What every object operation needs: the disk, the ownership records and
 * the tuning of one object store.
 *
 * @module
 */
import type { Disk } from "./disk.ts";
import type { SealMode } from "./object_crypto.ts";
import type { Ownership } from "./ownership.ts";

/** Shared by the object modules of one store. */
export interface StoreContext {
  disk: Disk;
  ownership: Ownership;
  /** Always "aead" except in the sealing benchmark. */
  sealMode: SealMode;
  /** Plaintext bytes per blob chunk. */
  blobChunkBytes: number;
  /** Disk requests a single stream keeps in flight. */
  concurrency: number;
}
