/**
 * Reads and verifies a Sandstorm package (.spk): magic number, xz stream,
 * signature, archive and manifest, each under a limit. Nothing is written
 * to disk here; see unpack.ts for that.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { ed25519 } from "@noble/curves/ed25519.js";
import {
  Archive,
  type Archive_File,
  Archive_File_Which,
  Manifest,
  Signature,
} from "../../proto/gen/sandstorm/package.ts";
import type { LocalizedText } from "../../proto/gen/sandstorm/util.ts";
import { SpkError } from "./errors.ts";
import { framedLength, openMessage } from "./framing.ts";
import { appIdFromPublicKey, PackageIdHasher } from "./ids.ts";

/** The eight bytes every .spk starts with, before the xz stream. */
export const SPK_MAGIC = new Uint8Array([
  0x8f,
  0xc6,
  0xcd,
  0xef,
  0x45,
  0x1a,
  0xea,
  0x96,
]);

/** Name of the manifest file at the top of the archive. */
export const MANIFEST_NAME = "sandstorm-manifest";

/** Bounds on what a package may make the reader hold or write. */
export interface SpkLimits {
  /** Size of the .spk file itself. */
  maxSpkBytes: number;
  /** Size of the decompressed archive message. */
  maxArchiveBytes: number;
  /** Sum of the sizes of all files and symlink targets once unpacked. */
  maxUnpackedBytes: number;
  /** Files, directories and symlinks together. */
  maxFiles: number;
  /** Directory nesting. */
  maxDepth: number;
}

/** Limits for real apps: Sandstorm's own cap is 1 GiB uncompressed. */
export const DEFAULT_LIMITS: SpkLimits = {
  maxSpkBytes: 1 << 30,
  maxArchiveBytes: 1 << 30,
  maxUnpackedBytes: 1 << 30,
  maxFiles: 200_000,
  maxDepth: 64,
};

/** Sandstorm caps a manifest at 1 Mi words of eight bytes. */
const MANIFEST_MAX_BYTES = 1048576 * 8;

/** Largest signature message accepted; a real one is under 300 bytes. */
const MAX_SIGNATURE_BYTES = 4096;

/** What a Command in the manifest says to run. */
export interface CommandInfo {
  argv: string[];
  environ: { key: string; value: string }[];
}

/** The manifest fields the platform acts on, as plain data. */
export interface ManifestInfo {
  appTitle: string;
  appVersion: number;
  minUpgradableAppVersion: number;
  appMarketingVersion: string;
  minApiVersion: number;
  maxApiVersion: number;
  actions: { title: string; nounPhrase: string; command: CommandInfo }[];
  continueCommand: CommandInfo;
}

/** One entry of the unpacked tree, in an order where parents come first. */
export type PackageEntry =
  | { path: string; kind: "directory" }
  | { path: string; kind: "regular" | "executable"; data: Uint8Array }
  | { path: string; kind: "symlink"; target: string };

/** A package whose signature verified and whose tree passed every check. */
export interface VerifiedPackage {
  appId: string;
  packageId: string;
  publicKey: Uint8Array;
  manifest: ManifestInfo;
  /** The manifest message exactly as stored, for readers of other fields
   * (metadata, icons). */
  manifestBytes: Uint8Array;
  entries: PackageEntry[];
  unpackedBytes: number;
}

/**
 * Reads a package from a file path or from its bytes, verifies it and
 * checks its tree. Throws SpkError for anything wrong with the package.
 */
export async function readSpk(
  source: string | Uint8Array,
  limits: SpkLimits = DEFAULT_LIMITS,
): Promise<VerifiedPackage> {
  const spk = typeof source === "string"
    ? await readFileBounded(source, limits.maxSpkBytes)
    : source;
  if (spk.length > limits.maxSpkBytes) {
    throw new SpkError(
      "too-large",
      `package is ${spk.length} bytes, limit ${limits.maxSpkBytes}`,
    );
  }
  if (
    spk.length < SPK_MAGIC.length ||
    !SPK_MAGIC.every((byte, i) => spk[i] === byte)
  ) {
    throw new SpkError("bad-magic", "file does not start with .spk magic");
  }

  const hasher = new PackageIdHasher();
  hasher.update(spk);
  const packageId = hasher.finish();

  const plain = await xzDecompress(
    spk.subarray(SPK_MAGIC.length),
    limits.maxArchiveBytes + MAX_SIGNATURE_BYTES,
  );
  if (plain.length === 0) {
    throw new SpkError("unsigned", "the xz stream is empty");
  }

  const { publicKey, signedHash, signatureLength } = readSignature(plain);
  const archiveBytes = plain.subarray(signatureLength);
  if (archiveBytes.length > limits.maxArchiveBytes) {
    throw new SpkError(
      "too-large",
      `archive is ${archiveBytes.length} bytes, limit ${limits.maxArchiveBytes}`,
    );
  }
  const archiveHash = createHash("sha512").update(archiveBytes).digest();
  if (!constantTimeEqual(archiveHash, signedHash)) {
    throw new SpkError(
      "bad-signature",
      "signature is valid but signs different package contents",
    );
  }

  const archiveLength = framedLength(archiveBytes, "archive");
  if (archiveLength !== archiveBytes.length) {
    throw new SpkError(
      "corrupt",
      `${archiveBytes.length - archiveLength} bytes follow the archive`,
    );
  }
  const { entries, unpackedBytes, manifestBytes } = walkArchive(
    archiveBytes,
    limits,
  );
  if (manifestBytes === undefined) {
    throw new SpkError("bad-manifest", `no top-level ${MANIFEST_NAME} file`);
  }
  return {
    appId: appIdFromPublicKey(publicKey),
    packageId,
    publicKey,
    manifest: decodeManifest(manifestBytes),
    manifestBytes,
    entries,
    unpackedBytes,
  };
}

async function readFileBounded(
  path: string,
  maxBytes: number,
): Promise<Uint8Array> {
  const info = await Deno.stat(path);
  if (!info.isFile) {
    throw new SpkError("corrupt", `${path} is not a regular file`);
  }
  if (info.size > maxBytes) {
    throw new SpkError(
      "too-large",
      `package is ${info.size} bytes, limit ${maxBytes}`,
    );
  }
  return await Deno.readFile(path);
}

/**
 * Runs `xz -dc` over the input and collects at most `maxBytes` of output.
 * xz's own memory is capped too, so that a stream asking for a huge
 * dictionary is refused instead of obeyed.
 */
async function xzDecompress(
  input: Uint8Array,
  maxBytes: number,
): Promise<Uint8Array> {
  const child = new Deno.Command("xz", {
    args: ["--decompress", "--stdout", "--memlimit-decompress=256MiB"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  const writer = child.stdin.getWriter();
  const writing = writer.write(input).then(() => writer.close()).catch(
    () => {/* xz exited early; its status says why */},
  );
  const stderr = new Response(child.stderr).text();

  const chunks: Uint8Array[] = [];
  let total = 0;
  let overflow = false;
  for await (const chunk of child.stdout) {
    total += chunk.length;
    if (total > maxBytes) {
      overflow = true;
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      break;
    }
    chunks.push(chunk);
  }
  const status = await child.status;
  await writing;
  const message = (await stderr).trim();
  if (overflow) {
    throw new SpkError(
      "too-large",
      `archive decompresses past ${maxBytes} bytes`,
    );
  }
  if (!status.success) {
    throw new SpkError("corrupt", `xz stream is invalid: ${message}`);
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

function readSignature(plain: Uint8Array): {
  publicKey: Uint8Array;
  signedHash: Uint8Array;
  signatureLength: number;
} {
  let length: number;
  try {
    length = framedLength(plain, "signature message");
  } catch (error) {
    throw new SpkError("unsigned", "no signature message", { cause: error });
  }
  if (length > MAX_SIGNATURE_BYTES) {
    throw new SpkError(
      "unsigned",
      `signature message is ${length} bytes, a signature is far smaller`,
    );
  }
  let publicKey: Uint8Array;
  let signature: Uint8Array;
  try {
    const root = openMessage(plain.subarray(0, length), 1 << 16).getRoot(
      Signature,
    );
    publicKey = new Uint8Array(root.publicKey.toArrayBuffer());
    signature = new Uint8Array(root.signature.toArrayBuffer());
  } catch (error) {
    throw new SpkError("unsigned", "signature message is malformed", {
      cause: error,
    });
  }
  if (publicKey.length !== 32 || signature.length !== 128) {
    throw new SpkError(
      "unsigned",
      `expected a 32-byte key and 128-byte signature, got ${publicKey.length} and ${signature.length}`,
    );
  }
  const signedHash = signature.subarray(64);
  let valid = false;
  try {
    valid = ed25519.verify(signature.subarray(0, 64), signedHash, publicKey, {
      zip215: false,
    });
  } catch {
    valid = false;
  }
  if (!valid) {
    throw new SpkError("bad-signature", "ed25519 signature does not verify");
  }
  return { publicKey, signedHash, signatureLength: length };
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** Whether a single path component is safe to create in a directory. */
export function isSafeName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." &&
    !name.includes("/") && !name.includes("\0") && name.length <= 255;
}

/**
 * Whether a symlink at `linkDir` (components below the package root)
 * pointing at `target` stays inside the package. Absolute targets are
 * taken from the package root, as they resolve inside the sandbox, where
 * the package is "/". The check is lexical: every symlink in a package is
 * checked, and the worker never follows package symlinks on the host.
 */
export function symlinkStaysInside(
  linkDir: string[],
  target: string,
): boolean {
  if (target === "" || target.includes("\0")) return false;
  const parts = target.startsWith("/") ? [] : [...linkDir];
  for (const part of target.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (parts.length === 0) return false;
      parts.pop();
    } else {
      parts.push(part);
    }
  }
  return true;
}

function walkArchive(archiveBytes: Uint8Array, limits: SpkLimits): {
  entries: PackageEntry[];
  unpackedBytes: number;
  manifestBytes: Uint8Array | undefined;
} {
  const entries: PackageEntry[] = [];
  let unpackedBytes = 0;
  let manifestBytes: Uint8Array | undefined;

  const count = (bytes: number) => {
    unpackedBytes += bytes;
    if (unpackedBytes > limits.maxUnpackedBytes) {
      throw new SpkError(
        "too-large",
        `files add up past ${limits.maxUnpackedBytes} bytes`,
      );
    }
    if (entries.length > limits.maxFiles) {
      throw new SpkError(
        "too-large",
        `more than ${limits.maxFiles} files in the package`,
      );
    }
  };

  const visit = (files: Iterable<Archive_File>, dir: string[]) => {
    if (dir.length > limits.maxDepth) {
      throw new SpkError(
        "too-large",
        `directories nest deeper than ${limits.maxDepth}`,
      );
    }
    const seen = new Set<string>();
    for (const file of files) {
      const name = file.name;
      if (!isSafeName(name)) {
        throw new SpkError(
          "bad-name",
          `unsafe file name ${JSON.stringify(name)} in /${dir.join("/")}`,
        );
      }
      if (seen.has(name)) {
        throw new SpkError(
          "bad-name",
          `${JSON.stringify(name)} appears twice in /${dir.join("/")}`,
        );
      }
      seen.add(name);
      const path = [...dir, name].join("/");
      switch (file.which()) {
        case Archive_File_Which.REGULAR:
        case Archive_File_Which.EXECUTABLE: {
          const executable = file._isExecutable;
          const data = (executable ? file.executable : file.regular)
            .toUint8Array();
          entries.push({
            path,
            kind: executable ? "executable" : "regular",
            data,
          });
          count(data.length);
          if (dir.length === 0 && name === MANIFEST_NAME && !executable) {
            manifestBytes = data;
          }
          break;
        }
        case Archive_File_Which.SYMLINK: {
          const target = file.symlink;
          if (!symlinkStaysInside(dir, target)) {
            throw new SpkError(
              "symlink-escape",
              `/${path} points to ${
                JSON.stringify(target)
              }, outside the package`,
            );
          }
          entries.push({ path, kind: "symlink", target });
          count(target.length);
          break;
        }
        case Archive_File_Which.DIRECTORY:
          entries.push({ path, kind: "directory" });
          count(0);
          visit(file.directory, [...dir, name]);
          break;
        default:
          throw new SpkError(
            "corrupt",
            `/${path} has unknown file kind ${file.which()}`,
          );
      }
    }
  };

  try {
    const root = openMessage(archiveBytes, archiveBytes.length * 4 + (1 << 20))
      .getRoot(Archive);
    visit(root.files, []);
  } catch (error) {
    if (error instanceof SpkError) throw error;
    throw new SpkError("corrupt", "archive message is malformed", {
      cause: error,
    });
  }
  return { entries, unpackedBytes, manifestBytes };
}

function text(value: LocalizedText | undefined): string {
  return value?.defaultText ?? "";
}

function decodeCommand(command: Manifest["continueCommand"]): CommandInfo {
  const argv = [...command.argv];
  const legacy = command.deprecatedExecutablePath;
  return {
    argv: legacy !== "" && argv[0] !== legacy ? [legacy, ...argv] : argv,
    environ: [...command.environ].map((kv) => ({
      key: kv.key,
      value: kv.value,
    })),
  };
}

/** Decodes the manifest message bytes into the fields the platform uses. */
export function decodeManifest(bytes: Uint8Array): ManifestInfo {
  if (bytes.length > MANIFEST_MAX_BYTES) {
    throw new SpkError(
      "bad-manifest",
      `manifest is ${bytes.length} bytes, limit ${MANIFEST_MAX_BYTES}`,
    );
  }
  try {
    framedLength(bytes, "manifest");
    const manifest = openMessage(bytes, MANIFEST_MAX_BYTES).getRoot(Manifest);
    const info: ManifestInfo = {
      appTitle: text(manifest.appTitle),
      appVersion: manifest.appVersion,
      minUpgradableAppVersion: manifest.minUpgradableAppVersion,
      appMarketingVersion: text(manifest.appMarketingVersion),
      minApiVersion: manifest.minApiVersion,
      maxApiVersion: manifest.maxApiVersion,
      actions: [...manifest.actions].map((action) => ({
        title: text(action.title),
        nounPhrase: text(action.nounPhrase),
        command: decodeCommand(action.command),
      })),
      continueCommand: decodeCommand(manifest.continueCommand),
    };
    if (info.continueCommand.argv.length === 0) {
      throw new SpkError("bad-manifest", "continueCommand has no argv");
    }
    return info;
  } catch (error) {
    if (error instanceof SpkError) {
      throw error.kind === "bad-manifest"
        ? error
        : new SpkError("bad-manifest", error.message, { cause: error });
    }
    throw new SpkError("bad-manifest", "manifest message is malformed", {
      cause: error,
    });
  }
}
