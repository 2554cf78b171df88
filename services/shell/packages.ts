/**
 * Uploads of app packages: the size limit, verification through the shared
 * package reader (services/spk/), and the package files the shell keeps.
 *
 * An upload is written to a temporary file while it streams in, counted
 * against the limit as it goes, verified, and only then renamed into the
 * package folder and recorded; any failure removes the temporary file, so
 * a refused upload leaves nothing behind.
 *
 * @module
 */
import { DEFAULT_LIMITS, readSpk, type SpkLimits } from "../spk/read.ts";
import { SpkError } from "../spk/errors.ts";
import type { AppRole, PackageInfo } from "./repo/types.ts";

/** Why an upload was refused, in words a person can act on. */
export class UploadError extends Error {
  readonly status: number;
  constructor(message: string, status = 400) {
    super(message);
    this.name = "UploadError";
    this.status = status;
  }
}

/** What the shell needs to know of a verified package. */
export interface PackageSummary {
  packageId: string;
  appId: string;
  title: string;
  version: string;
  newGrainTitle: string;
  roles: AppRole[];
}

/** Verifies a package file; throws UploadError when it is not acceptable. */
export interface PackageVerifier {
  verify(path: string, sizeBytes: number): Promise<PackageSummary>;
}

/** Sandstorm's roles when an app declares none: one that may change the
 * grain and one that may only look. Apps declare their own through
 * UiView.getViewInfo, which the shell reads once grains run on workers. */
export const DEFAULT_ROLES: AppRole[] = [
  { title: "editor", canWrite: true },
  { title: "viewer", canWrite: false },
];

/** Messages for each check the package reader can fail. */
const SPK_MESSAGES: Record<string, string> = {
  "bad-magic": "This file is not a Sandstorm package (.spk).",
  "corrupt": "This package is damaged and cannot be read.",
  "unsigned": "This package is not signed.",
  "bad-signature": "This package's signature does not verify.",
  "too-large": "This package is too large.",
  "bad-name": "This package contains a file with an unsafe name.",
  "symlink-escape": "This package contains a link pointing outside it.",
  "bad-manifest": "This package has no valid manifest.",
};

/** What an uploaded package may unpack to by default. The reader holds
 * the whole decompressed archive in memory (about twice over while it
 * walks it), so this bounds what one upload can make a shell allocate;
 * a tiny .spk of zeros could otherwise expand to Sandstorm's 1 GiB cap. */
export const DEFAULT_MAX_UNPACKED_BYTES = 256 * 1024 * 1024;

/** Room in the archive message beyond the files' bytes: names, sizes and
 * the tree's structure. */
const ARCHIVE_OVERHEAD_BYTES = 16 * 1024 * 1024;

/** Reader limits for an upload that may unpack to `maxUnpackedBytes`;
 * the xz decoder is stopped as soon as its output passes the archive
 * limit derived from it. */
export function uploadLimits(
  maxUnpackedBytes = DEFAULT_MAX_UNPACKED_BYTES,
): SpkLimits {
  return {
    ...DEFAULT_LIMITS,
    maxUnpackedBytes,
    maxArchiveBytes: maxUnpackedBytes + ARCHIVE_OVERHEAD_BYTES,
  };
}

/** A verifier backed by services/spk/read.ts, with these limits. */
export function spkVerifierWith(
  limits: SpkLimits = uploadLimits(),
): PackageVerifier {
  return {
    verify: (path) => verifySpk(path, limits),
  };
}

/** The verifier backed by services/spk/read.ts with upload limits. */
export const spkVerifier: PackageVerifier = spkVerifierWith();

async function verifySpk(
  path: string,
  limits: SpkLimits,
): Promise<PackageSummary> {
  try {
    const spk = await readSpk(path, limits);
    const firstAction = spk.manifest.actions[0];
    return {
      packageId: spk.packageId,
      appId: spk.appId,
      title: spk.manifest.appTitle || "Untitled app",
      version: spk.manifest.appMarketingVersion ||
        String(spk.manifest.appVersion),
      newGrainTitle: firstAction?.nounPhrase
        ? `Untitled ${firstAction.nounPhrase}`
        : `Untitled ${spk.manifest.appTitle || "grain"}`,
      roles: DEFAULT_ROLES,
    };
  } catch (error) {
    if (error instanceof SpkError) {
      const text = SPK_MESSAGES[error.kind] ?? "This package is invalid.";
      throw new UploadError(`${text} (${error.message})`);
    }
    throw error;
  }
}

/** Where package files live: one file per package ID. */
export class PackageStore {
  readonly dir: string;
  readonly maxUploadBytes: number;

  constructor(dir: string, maxUploadBytes: number) {
    this.dir = dir;
    this.maxUploadBytes = maxUploadBytes;
  }

  pathOf(packageId: string): string {
    if (!/^[0-9a-f]{32}$/.test(packageId)) {
      throw new RangeError(`bad package id ${JSON.stringify(packageId)}`);
    }
    return `${this.dir}/${packageId}.spk`;
  }

  /**
   * Streams `body` to a temporary file, refusing it as soon as it passes
   * the limit, verifies it, and moves it into place. Returns the summary;
   * on any error nothing is left in the folder.
   */
  async accept(
    body: ReadableStream<Uint8Array>,
    verifier: PackageVerifier,
  ): Promise<PackageSummary & { sizeBytes: number }> {
    await Deno.mkdir(this.dir, { recursive: true });
    const temp = await Deno.makeTempFile({ dir: this.dir, suffix: ".upload" });
    let moved = false;
    try {
      const file = await Deno.open(temp, { write: true, truncate: true });
      let sizeBytes = 0;
      try {
        for await (const chunk of body) {
          sizeBytes += chunk.length;
          if (sizeBytes > this.maxUploadBytes) {
            throw new UploadError(
              `This file is larger than the upload limit of ${
                formatBytes(this.maxUploadBytes)
              }.`,
              413,
            );
          }
          let written = 0;
          while (written < chunk.length) {
            written += await file.write(chunk.subarray(written));
          }
        }
      } finally {
        file.close();
      }
      if (sizeBytes === 0) throw new UploadError("The uploaded file is empty.");
      const summary = await verifier.verify(temp, sizeBytes);
      await Deno.rename(temp, this.pathOf(summary.packageId));
      moved = true;
      return { ...summary, sizeBytes };
    } finally {
      if (!moved) await Deno.remove(temp).catch(() => {});
    }
  }

  /**
   * Removes temporary files of uploads that were cut off by a crash. Other
   * replicas may be receiving uploads into the same folder, so only files
   * older than `olderThanMs` go. Returns how many were removed.
   */
  async sweepAbandoned(olderThanMs = 3600_000): Promise<number> {
    let removed = 0;
    try {
      for await (const entry of Deno.readDir(this.dir)) {
        if (!entry.isFile || !entry.name.endsWith(".upload")) continue;
        const path = `${this.dir}/${entry.name}`;
        const info = await Deno.stat(path);
        if (Date.now() - (info.mtime?.getTime() ?? 0) > olderThanMs) {
          await Deno.remove(path).catch(() => {});
          removed++;
        }
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    return removed;
  }

  async remove(packageId: string): Promise<void> {
    await Deno.remove(this.pathOf(packageId)).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }
}

/** "1.5 MiB" style sizes for people. */
export function formatBytes(bytes: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const text = unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0);
  return `${text} ${units[unit]}`;
}

/** Turns a verified summary into the repository's record. */
export function packageRecord(
  summary: PackageSummary & { sizeBytes: number },
  uploadedBy: string,
  now: number,
): PackageInfo {
  return {
    id: summary.packageId,
    appId: summary.appId,
    title: summary.title,
    version: summary.version,
    newGrainTitle: summary.newGrainTitle,
    roles: summary.roles,
    sizeBytes: summary.sizeBytes,
    uploadedBy,
    createdAt: now,
  };
}
