/**
 * Unpacks a verified package into a directory. Everything is written into
 * a fresh sibling directory first and renamed into place at the end, so a
 * refused or failed package leaves nothing behind.
 *
 * @module
 */
import { dirname } from "node:path";
import {
  DEFAULT_LIMITS,
  readSpk,
  type SpkLimits,
  type VerifiedPackage,
} from "./read.ts";

/** What is left of a package once it is on disk. */
export type UnpackedPackage = Omit<VerifiedPackage, "entries">;

/**
 * Verifies the package at `source` and unpacks it to `destination`, which
 * must not exist yet. Throws SpkError for a bad package; the destination
 * and every temporary file are gone when it throws.
 *
 * @example
 * ```ts ignore
 * const info = await unpackSpk("app.spk", "/var/lib/blackrock/pkg/ID");
 * console.log(info.appId, info.manifest.appTitle);
 * ```
 */
export async function unpackSpk(
  source: string | Uint8Array,
  destination: string,
  limits: SpkLimits = DEFAULT_LIMITS,
): Promise<UnpackedPackage> {
  const { entries, ...info } = await readSpk(source, limits);
  const staging = await Deno.makeTempDir({
    dir: dirname(destination),
    prefix: ".unpacking-",
  });
  try {
    for (const entry of entries) {
      const path = `${staging}/${entry.path}`;
      switch (entry.kind) {
        case "directory":
          await Deno.mkdir(path, { mode: 0o755 });
          break;
        case "regular":
        case "executable":
          await Deno.writeFile(path, entry.data, {
            createNew: true,
            mode: entry.kind === "executable" ? 0o755 : 0o644,
          });
          // The process umask may have trimmed the mode.
          await Deno.chmod(path, entry.kind === "executable" ? 0o755 : 0o644);
          break;
        case "symlink":
          await Deno.symlink(entry.target, path);
          break;
      }
    }
    await Deno.chmod(staging, 0o755);
    await Deno.rename(staging, destination);
  } catch (error) {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    throw error;
  }
  return info;
}
