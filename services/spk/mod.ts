/**
 * Sandstorm packages (.spk): read, verify, unpack and build them. Shared
 * by the worker, which runs packages, and the shell, which installs them.
 *
 * @example
 * ```ts ignore
 * import { readSpk } from "./mod.ts";
 * const pkg = await readSpk("app.spk");
 * console.log(pkg.appId, pkg.packageId, pkg.manifest.appTitle);
 * ```
 *
 * @module
 */
export { SpkError, type SpkErrorKind } from "./errors.ts";
export {
  appIdFromPublicKey,
  base32Decode,
  base32Encode,
  isAppId,
  isPackageId,
} from "./ids.ts";
export {
  type CommandInfo,
  decodeManifest,
  DEFAULT_LIMITS,
  MANIFEST_NAME,
  type ManifestInfo,
  type PackageEntry,
  readSpk,
  SPK_MAGIC,
  type SpkLimits,
  type VerifiedPackage,
} from "./read.ts";
export { type UnpackedPackage, unpackSpk } from "./unpack.ts";
export {
  assembleSpk,
  buildSpk,
  decodeKeyFile,
  encodeArchive,
  encodeKeyFile,
  encodeManifest,
  generateKey,
  joinPayload,
  keyAppId,
  type ManifestInput,
  type PackNode,
  signArchive,
  type SigningKey,
  treeFromDirectory,
} from "./write.ts";
