/**
 * The packer: builds signed Sandstorm packages (.spk) from a directory.
 *
 * ```sh
 * deno task pack keygen app.key                 # prints the app ID
 * deno task pack pack --key app.key --manifest manifest.json DIR out.spk
 * deno task pack verify out.spk                 # prints app and package ID
 * ```
 *
 * The manifest is JSON with the fields of {@link ManifestInput}: appTitle,
 * appVersion, appMarketingVersion, actions (title, nounPhrase, command)
 * and continueCommand ({ argv, environ: [{ key, value }] }). The key file
 * is a Sandstorm KeyFile message, as `spk keygen` keeps them.
 *
 * @module
 */
import { z } from "zod";
import {
  buildSpk,
  decodeKeyFile,
  encodeKeyFile,
  generateKey,
  keyAppId,
  type ManifestInput,
  readSpk,
  SpkError,
  treeFromDirectory,
} from "../services/spk/mod.ts";

const commandSchema = z.strictObject({
  argv: z.array(z.string()).min(1),
  environ: z.array(z.strictObject({ key: z.string(), value: z.string() }))
    .default([]),
});

const manifestSchema = z.strictObject({
  appTitle: z.string().min(1),
  appVersion: z.number().int().min(0).max(0xffffffff),
  appMarketingVersion: z.string().optional(),
  minUpgradableAppVersion: z.number().int().min(0).max(0xffffffff)
    .optional(),
  actions: z.array(z.strictObject({
    title: z.string(),
    nounPhrase: z.string().optional(),
    command: commandSchema,
  })),
  continueCommand: commandSchema,
});

/** Parses a packer manifest; throws with each bad field named. */
export function parseManifestJson(text: string): ManifestInput {
  const result = manifestSchema.safeParse(JSON.parse(text));
  if (!result.success) {
    throw new Error(
      "manifest: " +
        result.error.issues.map((issue) =>
          `${issue.path.join(".") || "(root)"}: ${issue.message}`
        ).join("; "),
    );
  }
  return result.data;
}

/** Packs `directory` into a signed .spk and returns its app ID. */
export async function packDirectory(options: {
  directory: string;
  manifestFile: string;
  keyFile: string;
  output: string;
  xzPreset?: number;
}): Promise<{ appId: string; packageId: string }> {
  const manifest = parseManifestJson(
    await Deno.readTextFile(options.manifestFile),
  );
  const key = decodeKeyFile(await Deno.readFile(options.keyFile));
  const tree = await treeFromDirectory(options.directory);
  if (tree.has("sandstorm-manifest")) {
    throw new Error(
      `${options.directory} already holds a sandstorm-manifest; the packer writes it`,
    );
  }
  const spk = await buildSpk(tree, manifest, key, {
    xzPreset: options.xzPreset,
  });
  // Reading it back checks the result against the same rules as install.
  const pkg = await readSpk(spk);
  await Deno.writeFile(options.output, spk);
  return { appId: pkg.appId, packageId: pkg.packageId };
}

/** Writes a new key file and returns the app ID it signs for. */
export async function writeNewKey(path: string): Promise<string> {
  const key = generateKey();
  await Deno.writeFile(path, encodeKeyFile(key), {
    createNew: true,
    mode: 0o600,
  });
  return keyAppId(key);
}

function usage(): never {
  console.error(
    "usage: pack keygen KEYFILE\n" +
      "       pack pack --key KEYFILE --manifest MANIFEST.json DIR OUT.spk\n" +
      "       pack verify FILE.spk",
  );
  Deno.exit(2);
}

async function main(args: string[]) {
  const [command, ...rest] = args;
  if (command === "keygen" && rest.length === 1) {
    console.log(await writeNewKey(rest[0]));
    return;
  }
  if (command === "verify" && rest.length === 1) {
    const pkg = await readSpk(rest[0]);
    console.log(`app ${pkg.appId}\npackage ${pkg.packageId}`);
    return;
  }
  if (command !== "pack") usage();
  let keyFile: string | undefined;
  let manifestFile: string | undefined;
  const positional: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--key") keyFile = rest[++i];
    else if (rest[i] === "--manifest") manifestFile = rest[++i];
    else positional.push(rest[i]);
  }
  if (!keyFile || !manifestFile || positional.length !== 2) usage();
  const { appId, packageId } = await packDirectory({
    directory: positional[0],
    output: positional[1],
    keyFile,
    manifestFile,
  });
  console.log(`app ${appId}\npackage ${packageId}`);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(
      error instanceof SpkError || error instanceof Error
        ? error.message
        : String(error),
    );
    Deno.exit(1);
  }
}
