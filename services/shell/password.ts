/**
 * Password hashing with scrypt (node:crypto). A stored hash names its
 * parameters, so they can be raised later without breaking old hashes.
 *
 * @module
 */
import { randomBytes, scrypt, timingSafeEqual } from "node:crypto";

const N = 16384;
const R = 8;
const P = 1;
const KEY_BYTES = 32;

function derive(
  password: string,
  salt: Buffer,
  n: number,
  r: number,
  p: number,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_BYTES, { N: n, r, p, maxmem: 256 * n * r }, (
      error,
      key,
    ) => error ? reject(error) : resolve(key));
  });
}

/**
 * Hashes a password as "scrypt$N$r$p$salt$hash" (salt and hash base64).
 *
 * @example
 * ```ts
 * import { hashPassword, verifyPassword } from "./password.ts";
 * const hash = await hashPassword("correct horse");
 * if (!(await verifyPassword("correct horse", hash))) throw new Error();
 * if (await verifyPassword("wrong", hash)) throw new Error();
 * ```
 */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, N, R, P);
  return ["scrypt", N, R, P, salt.toString("base64"), key.toString("base64")]
    .join("$");
}

/** Whether `password` matches `stored`; a malformed hash never matches. */
export async function verifyPassword(
  password: string,
  stored: string,
): Promise<boolean> {
  const parts = stored.split("$");
  if (parts.length !== 6 || parts[0] !== "scrypt") return false;
  const [n, r, p] = parts.slice(1, 4).map(Number);
  if (![n, r, p].every(Number.isSafeInteger) || n > 1 << 20) return false;
  const expected = Buffer.from(parts[5], "base64");
  if (expected.length !== KEY_BYTES) return false;
  const key = await derive(password, Buffer.from(parts[4], "base64"), n, r, p);
  return timingSafeEqual(key, expected);
}

/** A random secret printable in a URL: `bytes` of entropy, base64url. */
export function randomToken(bytes = 24): string {
  return randomBytes(bytes).toString("base64url");
}

/** A random lowercase host label (DNS-safe, 128 bits). */
export function randomHostLabel(): string {
  const alphabet = "0123456789abcdefghijklmnopqrstuv";
  return Array.from(randomBytes(26), (b) => alphabet[b & 31]).join("");
}
