/**
 * Keys, names and sealing of stored objects.
 *
 * Each object has a random 256-bit key held only by the SturdyRefs that name
 * it. From it, two one-way hashes with distinct domains give the object's
 * ID (its name on disk, which a disk may see) and its content key (which it
 * must not). Every piece written to the disk is sealed with
 * XChaCha20-Poly1305 (libsodium, through ffi/native.ts) under a random
 * nonce, with associated data naming the object, the piece, its index and
 * version, so a piece moved to another name or object fails to open.
 *
 * @module
 */
import { sha256 } from "@noble/hashes/sha2.js";
import {
  NONCE_BYTES,
  openBatch,
  openBatchAsync,
  PacketStatus,
  sealBatch,
  sealBatchAsync,
  TAG_BYTES,
} from "../../ffi/native.ts";

/** Size of an object key. */
export const OBJECT_KEY_BYTES = 32;

/** The last byte of every sealed piece: the format version. */
const FORMAT = 1;

/** Bytes a sealed piece adds to its plaintext, besides its associated
 * data. */
export const SEAL_OVERHEAD_BYTES = 1 + NONCE_BYTES + TAG_BYTES;

const encoder = new TextEncoder();

/** Raised when stored bytes fail to authenticate or are missing: tampered,
 * truncated, swapped or lost. The bytes are never returned as data. */
export class CorruptObjectError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CorruptObjectError";
  }
}

function domainHash(domain: string, value: Uint8Array): Uint8Array {
  const label = encoder.encode(`blackrock/storage/${domain}/v1\0`);
  const input = new Uint8Array(label.length + value.length);
  input.set(label, 0);
  input.set(value, label.length);
  return sha256(input);
}

/** Lowercase hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const byte of bytes) out += byte.toString(16).padStart(2, "0");
  return out;
}

/** A fresh random object key. */
export function newObjectKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(OBJECT_KEY_BYTES));
}

/** The object's ID: its name on disk, derived one way from its key. */
export function objectIdOf(key: Uint8Array): string {
  if (key.length !== OBJECT_KEY_BYTES) {
    throw new RangeError(
      `object key must be ${OBJECT_KEY_BYTES} bytes, got ${key.length}`,
    );
  }
  return toHex(domainHash("object-id", key));
}

/** The ID of the named root (a user's root), which has no key. */
export function rootIdOf(name: string): string {
  return toHex(domainHash("root-id", encoder.encode(name)));
}

/** The key that seals an object's contents; not derivable from its ID. */
export function contentKeyOf(key: Uint8Array): Uint8Array {
  return domainHash("content-key", key);
}

/** The key that seals the ownership records of a disk, from its secret. */
export function metadataKeyOf(diskSecret: Uint8Array): Uint8Array {
  return domainHash("metadata-key", diskSecret);
}

/** A short random version tag for piece names (16 hex digits). */
export function newVersionTag(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(8)));
}

/**
 * Seals and opens pieces. `copy` replaces the cipher by a copy and exists
 * only so the benchmark can measure what sealing costs; a storage node
 * always uses `aead`.
 */
export type SealMode = "aead" | "copy";

/** What a sealed piece is bound to. */
export interface PieceBinding {
  objectId: string;
  /** The piece's name within the object, such as `head` or `c/12.ab..`. */
  piece: string;
}

function associatedData(binding: PieceBinding): Uint8Array {
  return encoder.encode(`${binding.objectId}\0${binding.piece}`);
}

/** Pieces at least this large are sealed and opened on the thread pool. */
const OFF_THREAD_BYTES = 256 * 1024;

interface Layout {
  buffer: Uint8Array;
  adLength: number;
  length: number;
  nonce: Uint8Array;
}

function sealLayout(binding: PieceBinding, plaintext: Uint8Array): Layout {
  const ad = associatedData(binding);
  const length = plaintext.length;
  const buffer = new Uint8Array(ad.length + length + SEAL_OVERHEAD_BYTES);
  buffer.set(ad, 0);
  buffer.set(plaintext, ad.length);
  const nonceOffset = ad.length + length + TAG_BYTES;
  const nonce = buffer.subarray(nonceOffset, nonceOffset + NONCE_BYTES);
  crypto.getRandomValues(nonce);
  buffer[buffer.length - 1] = FORMAT;
  return { buffer, adLength: ad.length, length, nonce };
}

function batchOf(layout: Layout, key: Uint8Array, status: Uint8Array) {
  return {
    buffer: layout.buffer,
    descriptors: new Uint32Array([0, layout.adLength, layout.length, 0]),
    nonces: layout.nonce,
    keys: key,
    count: 1,
    status,
  };
}

/**
 * Seals plaintext for the piece; the result is what goes on disk:
 * `associatedData || ciphertext || tag || nonce || format`. Keeping the
 * associated data (the object ID and piece name, which the disk knows
 * anyway from the name) in front lets both sealing and opening work in
 * place: one copy of the plaintext to seal, none to open.
 */
export function sealPiece(
  key: Uint8Array,
  binding: PieceBinding,
  plaintext: Uint8Array,
  mode: SealMode = "aead",
): Uint8Array {
  const layout = sealLayout(binding, plaintext);
  if (mode === "aead") {
    const status = new Uint8Array(1);
    if (sealBatch(batchOf(layout, key, status)) !== 0) {
      throw new Error(`seal failed with status ${status[0]}`);
    }
  }
  return layout.buffer;
}

/** {@link sealPiece} for large pieces: the cipher runs on the thread pool
 * so that it overlaps with disk and network I/O. */
export async function sealPieceAsync(
  key: Uint8Array,
  binding: PieceBinding,
  plaintext: Uint8Array,
  mode: SealMode = "aead",
): Promise<Uint8Array> {
  if (mode !== "aead" || plaintext.length < OFF_THREAD_BYTES) {
    return sealPiece(key, binding, plaintext, mode);
  }
  const layout = sealLayout(binding, plaintext);
  const status = new Uint8Array(1);
  if (await sealBatchAsync(batchOf(layout, key, status)) !== 0) {
    throw new Error(`seal failed with status ${status[0]}`);
  }
  return layout.buffer;
}

/** Checks a stored piece's shape and associated data; returns its layout
 * for opening in place. */
function openLayout(binding: PieceBinding, stored: Uint8Array): Layout {
  const ad = associatedData(binding);
  const where = `piece ${binding.piece} of object ${binding.objectId}`;
  if (
    stored.length < ad.length + SEAL_OVERHEAD_BYTES ||
    stored[stored.length - 1] !== FORMAT
  ) {
    throw new CorruptObjectError(
      `${where} is truncated or of unknown format (${stored.length} bytes)`,
    );
  }
  for (let i = 0; i < ad.length; i++) {
    if (stored[i] !== ad[i]) {
      throw new CorruptObjectError(
        `${where} is bound to another piece: swapped or misplaced`,
      );
    }
  }
  const length = stored.length - ad.length - SEAL_OVERHEAD_BYTES;
  const nonceOffset = ad.length + length + TAG_BYTES;
  return {
    buffer: stored,
    adLength: ad.length,
    length,
    nonce: stored.slice(nonceOffset, nonceOffset + NONCE_BYTES),
  };
}

function opened(
  binding: PieceBinding,
  layout: Layout,
  status: Uint8Array,
): Uint8Array {
  if (status[0] !== PacketStatus.Ok) {
    throw new CorruptObjectError(
      `piece ${binding.piece} of object ${binding.objectId} failed ` +
        "authentication: tampered, truncated or swapped",
    );
  }
  return layout.buffer.subarray(
    layout.adLength,
    layout.adLength + layout.length,
  );
}

/** Opens a piece sealed by {@link sealPiece}, in place (`stored` is
 * overwritten with the plaintext, or zeroed by libsodium when the tag does
 * not verify); throws CorruptObjectError if it was changed, cut short, or
 * belongs to another piece or object. */
export function openPiece(
  key: Uint8Array,
  binding: PieceBinding,
  stored: Uint8Array,
  mode: SealMode = "aead",
): Uint8Array {
  const layout = openLayout(binding, stored);
  const status = new Uint8Array([PacketStatus.Ok]);
  if (mode === "aead") openBatch(batchOf(layout, key, status));
  return opened(binding, layout, status);
}

/** {@link openPiece} for large pieces, on the thread pool. */
export async function openPieceAsync(
  key: Uint8Array,
  binding: PieceBinding,
  stored: Uint8Array,
  mode: SealMode = "aead",
): Promise<Uint8Array> {
  if (mode !== "aead" || stored.length < OFF_THREAD_BYTES) {
    return openPiece(key, binding, stored, mode);
  }
  const layout = openLayout(binding, stored);
  const status = new Uint8Array(1);
  await openBatchAsync(batchOf(layout, key, status));
  return opened(binding, layout, status);
}
