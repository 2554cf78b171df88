/**
 * Vat key files as the agent makes them for its machine and its roles: an
 * ed25519 seed as 64 hex digits in a file of mode 0600, the format
 * services/rpc/vat_id.ts reads, so that a role loads the key the agent made
 * for it. The agent needs only to create a key and learn its public half.
 *
 * @module
 */
import { ed25519 } from "@noble/curves/ed25519.js";

/** A key file that cannot be used. */
export class VatKeyError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "VatKeyError";
  }
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
  }
  return out;
}

/**
 * The vat ID (hex of the ed25519 public key) of the key in `path`, making a
 * new key there first if there is none. A file others may read is refused:
 * a leaked seed lets anyone act as the vat.
 */
export async function loadOrCreateVatKey(path: string): Promise<string> {
  let text: string;
  try {
    const info = await Deno.stat(path);
    if (info.mode !== null && (info.mode & 0o077) !== 0) {
      throw new VatKeyError(
        `vat key file ${path} has mode ${
          (info.mode & 0o777).toString(8)
        }, expected 600`,
      );
    }
    text = (await Deno.readTextFile(path)).trim();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    const seed = ed25519.utils.randomSecretKey();
    const file = await Deno.open(path, {
      write: true,
      createNew: true,
      mode: 0o600,
    });
    try {
      await Deno.chmod(path, 0o600);
      await file.write(new TextEncoder().encode(hex(seed) + "\n"));
      await file.sync();
    } finally {
      file.close();
    }
    return hex(ed25519.getPublicKey(seed));
  }
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw new VatKeyError(`vat key file ${path} must hold 64 hex digits`);
  }
  return hex(ed25519.getPublicKey(unhex(text)));
}
