/**
 * Builds Sandstorm packages: the archive message, the manifest message,
 * the signature, and the final .spk bytes. tasks/pack.ts uses this to pack
 * a directory; tests use the pieces to make broken packages on purpose, so
 * nothing here refuses an unsafe name (the reader does that).
 *
 * @module
 */
import { createHash } from "node:crypto";
import * as $ from "capnp-es";
import { ed25519 } from "@noble/curves/ed25519.js";
import {
  Archive,
  type Archive_File,
  KeyFile,
  Manifest,
  type Manifest_Command,
  Signature,
} from "../../proto/gen/sandstorm/package.ts";
import type { LocalizedText } from "../../proto/gen/sandstorm/util.ts";
import { appIdFromPublicKey } from "./ids.ts";
import { type CommandInfo, MANIFEST_NAME, SPK_MAGIC } from "./read.ts";

/** A file tree to pack: a directory maps names to nodes. */
export type PackNode =
  | { kind: "regular" | "executable"; data: Uint8Array }
  | { kind: "symlink"; target: string }
  | { kind: "directory"; children: Map<string, PackNode> };

/** The manifest as a packer's input, in JSON-friendly form. */
export interface ManifestInput {
  appTitle: string;
  appVersion: number;
  appMarketingVersion?: string;
  minUpgradableAppVersion?: number;
  actions: { title: string; nounPhrase?: string; command: CommandInfo }[];
  continueCommand: CommandInfo;
}

/** An ed25519 signing key in libsodium's layout. */
export interface SigningKey {
  publicKey: Uint8Array;
  /** 64 bytes: seed then public key. */
  privateKey: Uint8Array;
}

/** A fresh random signing key. */
export function generateKey(): SigningKey {
  const seed = crypto.getRandomValues(new Uint8Array(32));
  const publicKey = ed25519.getPublicKey(seed);
  const privateKey = new Uint8Array(64);
  privateKey.set(seed);
  privateKey.set(publicKey, 32);
  return { publicKey, privateKey };
}

/** The app ID that packages signed with this key get. */
export function keyAppId(key: SigningKey): string {
  return appIdFromPublicKey(key.publicKey);
}

/** A key as a KeyFile message, the form Sandstorm keyrings keep. */
export function encodeKeyFile(key: SigningKey): Uint8Array {
  const message = new $.Message();
  const root = message.initRoot(KeyFile);
  root._initPublicKey(32).copyBuffer(key.publicKey);
  root._initPrivateKey(64).copyBuffer(key.privateKey);
  return new Uint8Array(message.toArrayBuffer());
}

/** Reads a KeyFile message; throws RangeError if the key is not sound. */
export function decodeKeyFile(bytes: Uint8Array): SigningKey {
  const root = new $.Message(bytes, false).getRoot(KeyFile);
  const publicKey = new Uint8Array(root.publicKey.toArrayBuffer());
  const privateKey = new Uint8Array(root.privateKey.toArrayBuffer());
  if (publicKey.length !== 32 || privateKey.length !== 64) {
    throw new RangeError(
      `key file holds a ${publicKey.length}-byte public and ${privateKey.length}-byte private key, expected 32 and 64`,
    );
  }
  const derived = ed25519.getPublicKey(privateKey.subarray(0, 32));
  if (!derived.every((byte, i) => byte === publicKey[i])) {
    throw new RangeError("key file's public key does not match its seed");
  }
  return { publicKey, privateKey };
}

function setText(target: LocalizedText, value: string) {
  target.defaultText = value;
}

function setCommand(target: Manifest_Command, command: CommandInfo) {
  const argv = target._initArgv(command.argv.length);
  command.argv.forEach((arg, i) => argv.set(i, arg));
  const environ = target._initEnviron(command.environ.length);
  command.environ.forEach(({ key, value }, i) => {
    environ.get(i).key = key;
    environ.get(i).value = value;
  });
}

/** The manifest message bytes for the given fields. */
export function encodeManifest(input: ManifestInput): Uint8Array {
  const message = new $.Message();
  const root = message.initRoot(Manifest);
  setText(root._initAppTitle(), input.appTitle);
  root.appVersion = input.appVersion;
  root.minUpgradableAppVersion = input.minUpgradableAppVersion ?? 0;
  setText(root._initAppMarketingVersion(), input.appMarketingVersion ?? "");
  root.minApiVersion = 0;
  root.maxApiVersion = 0;
  const actions = root._initActions(input.actions.length);
  input.actions.forEach((action, i) => {
    const target = actions.get(i);
    target.input.none = true;
    setText(target._initTitle(), action.title);
    setText(target._initNounPhrase(), action.nounPhrase ?? "");
    setCommand(target._initCommand(), action.command);
  });
  setCommand(root._initContinueCommand(), input.continueCommand);
  return new Uint8Array(message.toArrayBuffer());
}

function fillFiles(list: $.List<Archive_File>, nodes: Map<string, PackNode>) {
  let i = 0;
  for (const [name, node] of [...nodes].sort(([a], [b]) => a < b ? -1 : 1)) {
    const file = list.get(i++);
    file.name = name;
    switch (node.kind) {
      case "regular":
        file._initRegular(node.data.length).copyBuffer(node.data);
        break;
      case "executable":
        file._initExecutable(node.data.length).copyBuffer(node.data);
        break;
      case "symlink":
        file.symlink = node.target;
        break;
      case "directory":
        fillFiles(file._initDirectory(node.children.size), node.children);
        break;
    }
  }
}

/** The archive message for a tree (the manifest must already be in it). */
export function encodeArchive(root: Map<string, PackNode>): Uint8Array {
  const message = new $.Message();
  const archive = message.initRoot(Archive);
  fillFiles(archive._initFiles(root.size), root);
  return new Uint8Array(message.toArrayBuffer());
}

/** The signature message over an archive message, signed with `key`. */
export function signArchive(
  archiveBytes: Uint8Array,
  key: SigningKey,
): Uint8Array {
  const hash = createHash("sha512").update(archiveBytes).digest();
  const signature = ed25519.sign(hash, key.privateKey.subarray(0, 32));
  const message = new $.Message();
  const root = message.initRoot(Signature);
  root._initPublicKey(32).copyBuffer(key.publicKey);
  const combined = root._initSignature(128);
  combined.copyBuffer(new Uint8Array([...signature, ...hash]));
  return new Uint8Array(message.toArrayBuffer());
}

/** Magic number, then xz over the given bytes (signature then archive). */
export async function assembleSpk(
  payload: Uint8Array,
  options: { xzPreset?: number } = {},
): Promise<Uint8Array> {
  const child = new Deno.Command("xz", {
    args: [
      `-${options.xzPreset ?? 6}`,
      "--compress",
      "--stdout",
      "--threads=0",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  const writing = writer.write(payload).then(() => writer.close());
  const output = await child.output();
  await writing;
  if (!output.success) {
    throw new Error(
      `xz failed: ${new TextDecoder().decode(output.stderr).trim()}`,
    );
  }
  const spk = new Uint8Array(SPK_MAGIC.length + output.stdout.length);
  spk.set(SPK_MAGIC);
  spk.set(output.stdout, SPK_MAGIC.length);
  return spk;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * A complete signed package of `tree` with `manifest` added at the top.
 *
 * @example
 * ```ts ignore
 * const key = generateKey();
 * const spk = await buildSpk(new Map(), {
 *   appTitle: "Hello", appVersion: 1, actions: [],
 *   continueCommand: { argv: ["/hello"], environ: [] },
 * }, key);
 * ```
 */
export async function buildSpk(
  tree: Map<string, PackNode>,
  manifest: ManifestInput,
  key: SigningKey,
  options: { xzPreset?: number } = {},
): Promise<Uint8Array> {
  const root = new Map(tree);
  root.set(MANIFEST_NAME, { kind: "regular", data: encodeManifest(manifest) });
  const archive = encodeArchive(root);
  return await assembleSpk(concat(signArchive(archive, key), archive), options);
}

/** Joins a signature message and an archive message into one payload. */
export function joinPayload(
  signature: Uint8Array,
  archive: Uint8Array,
): Uint8Array {
  return concat(signature, archive);
}

/**
 * Reads a directory into a tree, keeping the executable bit and symlinks
 * as they are. Other kinds of files (sockets, devices) are refused.
 */
export async function treeFromDirectory(
  path: string,
): Promise<Map<string, PackNode>> {
  const children = new Map<string, PackNode>();
  for await (const entry of Deno.readDir(path)) {
    const full = `${path}/${entry.name}`;
    const info = await Deno.lstat(full);
    if (info.isSymlink) {
      children.set(entry.name, {
        kind: "symlink",
        target: await Deno.readLink(full),
      });
    } else if (info.isDirectory) {
      children.set(entry.name, {
        kind: "directory",
        children: await treeFromDirectory(full),
      });
    } else if (info.isFile) {
      const executable = ((info.mode ?? 0) & 0o111) !== 0;
      children.set(entry.name, {
        kind: executable ? "executable" : "regular",
        data: await Deno.readFile(full),
      });
    } else {
      throw new Error(`${full} is neither a file, directory nor symlink`);
    }
  }
  return children;
}
