/**
 * App IDs and package IDs in the textual forms Sandstorm uses.
 *
 * An app ID is the app's 32-byte ed25519 public key in Sandstorm's base32
 * (alphabet `0-9a-z` without b, i, l, o; five bits a character, most
 * significant first, the last group padded with zero bits): 52 characters.
 * A package ID is the first 16 bytes of the SHA-256 of the whole .spk file,
 * in lower-case hex: 32 characters.
 *
 * @module
 */
import { createHash } from "node:crypto";

const ALPHABET = "0123456789acdefghjkmnpqrstuvwxyz";

/**
 * Sandstorm's base32 form of some bytes.
 *
 * @example
 * ```ts
 * import { base32Encode } from "./ids.ts";
 * if (base32Encode(new Uint8Array([0xff])) !== "zw") throw new Error();
 * ```
 */
export function base32Encode(bytes: Uint8Array): string {
  let out = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = ((buffer << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(buffer >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(buffer << (5 - bits)) & 31];
  return out;
}

/** The bytes of a base32 string, or undefined if it is not one. */
export function base32Decode(text: string): Uint8Array | undefined {
  const out: number[] = [];
  let buffer = 0;
  let bits = 0;
  for (const char of text) {
    const value = ALPHABET.indexOf(char);
    if (value < 0) return undefined;
    buffer = ((buffer << 5) | value) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((buffer >> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  // Leftover bits are padding and must be zero.
  if ((buffer & ((1 << bits) - 1)) !== 0) return undefined;
  return new Uint8Array(out);
}

/** The app ID of a package signed with this public key. */
export function appIdFromPublicKey(publicKey: Uint8Array): string {
  if (publicKey.length !== 32) {
    throw new RangeError(
      `public key must be 32 bytes, got ${publicKey.length}`,
    );
  }
  return base32Encode(publicKey);
}

/** Whether text is a well-formed app ID (52 base32 characters). */
export function isAppId(text: string): boolean {
  return text.length === 52 && base32Decode(text)?.length === 32;
}

/** Whether text is a well-formed package ID (32 lower-case hex). */
export function isPackageId(text: string): boolean {
  return /^[0-9a-f]{32}$/.test(text);
}

/** Incremental package ID: feed the .spk bytes in order, then finish. */
export class PackageIdHasher {
  #hash = createHash("sha256");

  update(chunk: Uint8Array): void {
    this.#hash.update(chunk);
  }

  finish(): string {
    return this.#hash.digest("hex").slice(0, 32);
  }
}
