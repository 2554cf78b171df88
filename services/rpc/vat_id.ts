/**
 * A vat's identity: an ed25519 key pair whose 32-byte public key is the
 * vat ID. The secret seed never leaves the process that holds it; peers
 * learn only the public key.
 *
 * Two vats derive the keys that seal their traffic from their static keys
 * alone (no handshake): x25519 between one vat's secret and the other's
 * public key, both mapped from ed25519 to Montgomery form, then HKDF over
 * the shared secret and both vat IDs. Each direction gets its own key, so a
 * packet one vat sends can never be reflected back at it as the peer's.
 *
 * @example
 * ```ts
 * import { VatIdentity } from "./vat_id.ts";
 * const alice = VatIdentity.generate();
 * const bob = VatIdentity.generate();
 * const ab = alice.pairKeys(bob.vatId);
 * const ba = bob.pairKeys(alice.vatId);
 * // ab.sendKey equals ba.receiveKey, and the other way round.
 * ```
 *
 * @module
 */

import { ed25519 } from "@noble/curves/ed25519.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import {
  ed25519PublicToX25519,
  ed25519SeedToX25519,
  x25519,
} from "../../ffi/native.ts";

/** Size of a vat ID (an ed25519 public key). */
export const VAT_ID_BYTES = 32;
/** Size of an ed25519 secret seed. */
export const SEED_BYTES = 32;
/** Size of an ed25519 signature. */
export const SIGNATURE_BYTES = 64;

/** Domain separation for challenge signatures, so a vat's proof of identity
 * can never be replayed as a signature over anything else. */
const CHALLENGE_CONTEXT = new TextEncoder().encode(
  "blackrock vat-id challenge v1\0",
);
const KDF_INFO = new TextEncoder().encode("blackrock sealed-udp pair keys v1");

/** A key file that is missing, unreadable, or not what it should be. */
export class VatKeyFileError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "VatKeyFileError";
  }
}

/** Bytes that are not a usable vat ID (wrong length or not a curve point). */
export class InvalidVatIdError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidVatIdError";
  }
}

/** The two keys that seal traffic between a pair of vats. */
export interface PairKeys {
  /** Seals what this vat sends to the peer. */
  sendKey: Uint8Array;
  /** Opens what the peer sends to this vat. */
  receiveKey: Uint8Array;
}

/** Lower-case hex of a vat ID, the form used in logs and maps. */
export function vatIdHex(vatId: Uint8Array): string {
  let out = "";
  for (const byte of vatId) out += byte.toString(16).padStart(2, "0");
  return out;
}

/** Parses 64 hex digits into a vat ID; throws InvalidVatIdError. */
export function parseVatIdHex(hex: string): Uint8Array {
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new InvalidVatIdError(
      `vat ID must be 64 hex digits, got ${JSON.stringify(hex.slice(0, 80))}`,
    );
  }
  const out = new Uint8Array(VAT_ID_BYTES);
  for (let i = 0; i < VAT_ID_BYTES; i++) {
    out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  return out;
}

/** Compares two vat IDs byte by byte: negative, zero or positive. */
export function compareVatIds(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

/**
 * Checks that bytes are a vat ID a peer could own: 32 bytes that decode to
 * an ed25519 point. Throws InvalidVatIdError otherwise.
 */
export function checkVatId(vatId: Uint8Array): void {
  if (vatId.length !== VAT_ID_BYTES) {
    throw new InvalidVatIdError(
      `vat ID must be ${VAT_ID_BYTES} bytes, got ${vatId.length}`,
    );
  }
  try {
    ed25519PublicToX25519(vatId);
  } catch {
    throw new InvalidVatIdError(
      `vat ID ${vatIdHex(vatId)} is not an ed25519 public key`,
    );
  }
}

function challengeMessage(challenge: Uint8Array): Uint8Array {
  const message = new Uint8Array(CHALLENGE_CONTEXT.length + challenge.length);
  message.set(CHALLENGE_CONTEXT, 0);
  message.set(challenge, CHALLENGE_CONTEXT.length);
  return message;
}

/**
 * Verifies that `signature` was made over `challenge` by the owner of
 * `vatId` (see {@link VatIdentity.signChallenge}). False for a bad
 * signature or malformed inputs; never throws on peer bytes.
 */
export function verifyChallenge(
  vatId: Uint8Array,
  challenge: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (vatId.length !== VAT_ID_BYTES || signature.length !== SIGNATURE_BYTES) {
    return false;
  }
  try {
    return ed25519.verify(signature, challengeMessage(challenge), vatId);
  } catch {
    return false;
  }
}

/** A vat's key pair. Holds the secret seed; never logs or exports it except
 * through {@link VatIdentity.save}. */
export class VatIdentity {
  /** The public key: this vat's ID. */
  readonly vatId: Uint8Array;
  readonly #seed: Uint8Array;
  #x25519Secret: Uint8Array | undefined;

  private constructor(seed: Uint8Array) {
    if (seed.length !== SEED_BYTES) {
      throw new RangeError(
        `ed25519 seed must be ${SEED_BYTES} bytes, got ${seed.length}`,
      );
    }
    this.#seed = seed.slice();
    this.vatId = ed25519.getPublicKey(this.#seed);
  }

  /** A fresh identity from the system's random source. */
  static generate(): VatIdentity {
    return new VatIdentity(crypto.getRandomValues(new Uint8Array(SEED_BYTES)));
  }

  /** The identity whose secret is this 32-byte seed. */
  static fromSeed(seed: Uint8Array): VatIdentity {
    return new VatIdentity(seed);
  }

  /**
   * Reads a key file written by {@link VatIdentity.save}. Refuses a file
   * that others can read (mode bits beyond 0600), as ssh does, because a
   * leaked seed lets anyone act as this vat.
   */
  static async load(path: string): Promise<VatIdentity> {
    let info: Deno.FileInfo;
    let bytes: Uint8Array;
    try {
      info = await Deno.stat(path);
      bytes = await Deno.readFile(path);
    } catch (error) {
      throw new VatKeyFileError(`cannot read vat key file ${path}`, {
        cause: error,
      });
    }
    if (info.mode !== null && (info.mode & 0o077) !== 0) {
      throw new VatKeyFileError(
        `vat key file ${path} has mode ${
          (info.mode & 0o777).toString(8)
        }, expected 600`,
      );
    }
    const text = new TextDecoder().decode(bytes).trim();
    if (!/^[0-9a-f]{64}$/.test(text)) {
      throw new VatKeyFileError(
        `vat key file ${path} must hold 64 lower-case hex digits`,
      );
    }
    return new VatIdentity(parseVatIdHex(text));
  }

  /** Loads the key file, or makes a new identity and saves it there. */
  static async loadOrCreate(path: string): Promise<VatIdentity> {
    try {
      await Deno.lstat(path);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      const identity = VatIdentity.generate();
      await identity.save(path);
      return identity;
    }
    return await VatIdentity.load(path);
  }

  /**
   * Writes the seed as hex to a new file created with mode 0600 (never
   * widened by the umask, and never over an existing file, so a key is
   * not silently replaced).
   */
  async save(path: string): Promise<void> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, {
        write: true,
        createNew: true,
        mode: 0o600,
      });
    } catch (error) {
      throw new VatKeyFileError(`cannot create vat key file ${path}`, {
        cause: error,
      });
    }
    try {
      await Deno.chmod(path, 0o600);
      const text = new TextEncoder().encode(vatIdHex(this.#seed) + "\n");
      let written = 0;
      while (written < text.length) {
        written += await file.write(text.subarray(written));
      }
      await file.sync();
    } finally {
      file.close();
    }
  }

  /** Signs a peer's challenge, proving this process owns the vat ID. */
  signChallenge(challenge: Uint8Array): Uint8Array {
    return ed25519.sign(challengeMessage(challenge), this.#seed);
  }

  /**
   * The keys sealing traffic with `peerVatId`, derived without talking to
   * the peer. Both vats compute the same pair, mirrored. Throws
   * InvalidVatIdError for bytes that are not an ed25519 public key (or a
   * low-order point, which would give every such peer the same key).
   */
  pairKeys(peerVatId: Uint8Array): PairKeys {
    checkVatId(peerVatId);
    this.#x25519Secret ??= ed25519SeedToX25519(this.#seed);
    let shared: Uint8Array;
    try {
      shared = x25519(this.#x25519Secret, ed25519PublicToX25519(peerVatId));
    } catch {
      throw new InvalidVatIdError(
        `vat ID ${vatIdHex(peerVatId)} is a low-order point`,
      );
    }
    const selfFirst = compareVatIds(this.vatId, peerVatId) < 0;
    const [low, high] = selfFirst
      ? [this.vatId, peerVatId]
      : [peerVatId, this.vatId];
    const salt = new Uint8Array(VAT_ID_BYTES * 2);
    salt.set(low, 0);
    salt.set(high, VAT_ID_BYTES);
    const okm = hkdf(sha256, shared, salt, KDF_INFO, 64);
    shared.fill(0);
    // The first half seals traffic from the lower vat ID to the higher.
    const lowToHigh = okm.slice(0, 32);
    const highToLow = okm.slice(32, 64);
    okm.fill(0);
    return selfFirst
      ? { sendKey: lowToHigh, receiveKey: highToLow }
      : { sendKey: highToLow, receiveKey: lowToHigh };
  }
}
