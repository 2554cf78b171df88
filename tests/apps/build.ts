/**
 * Builds the test apps from source and packs them with the project's
 * packer: the raw Cap'n Proto "files" app (C++ against Debian's libcapnp),
 * the "notes" HTTP app behind the grain-side HTTP bridge, and the probe
 * the sandbox tests run. Output is cached under .data/apps-build/ by a hash
 * of every input, so a second run costs nothing.
 *
 * ```sh
 * deno run -A tests/apps/build.ts   # prints the build directory
 * ```
 *
 * @module
 */
import { createHash } from "node:crypto";
import { packDirectory, writeNewKey } from "../../tasks/pack.ts";

const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

const SCHEMAS = [
  "util",
  "powerbox",
  "identity",
  "grain",
  "web-session",
].map((name) => `proto/sandstorm/${name}.capnp`);

const SOURCES = [
  ...SCHEMAS,
  "tests/apps/files/files.c++",
  "tests/apps/files/manifest.json",
  "tests/apps/files/static/hello.txt",
  "tests/apps/http/notes.c",
  "tests/apps/http/manifest.json",
  "tests/apps/probe/probe.c",
  "services/worker/bridge/http-bridge.c++",
];

/** Where the built apps are. */
export interface TestApps {
  dir: string;
  /** The packed apps. */
  filesSpk: string;
  notesSpk: string;
  probeSpk: string;
  /** The notes app alone, to run without any sandbox (benchmarks). */
  notesBinary: string;
}

async function run(command: string, args: string[], cwd = root) {
  const output = await new Deno.Command(command, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) {
    throw new Error(
      `${command} ${args.join(" ")} failed:\n${
        new TextDecoder().decode(output.stderr)
      }`,
    );
  }
}

const CXX_LIBS = [
  "-static",
  "-lcapnp-rpc",
  "-lcapnp",
  "-lkj-http",
  "-lkj-async",
  "-lkj",
  "-lz",
  "-pthread",
];

async function buildInto(dir: string): Promise<void> {
  const gen = `${dir}/gen`;
  await Deno.mkdir(gen, { recursive: true });
  await run(
    "capnp",
    [
      "compile",
      "-I.",
      "--src-prefix=.",
      `-oc++:${gen}`,
      ...SCHEMAS.map((s) => s.slice("proto/".length)),
    ],
    `${root}/proto`,
  );
  const generated = SCHEMAS.map((s) =>
    `${gen}/${s.slice("proto/".length)}.c++`
  );
  const cxx = (source: string, output: string) =>
    run("g++", [
      "-std=c++17",
      "-O1",
      "-I",
      gen,
      "-o",
      output,
      `${root}/${source}`,
      ...generated,
      ...CXX_LIBS,
    ]);
  const cc = (source: string, output: string) =>
    run("gcc", ["-O2", "-static", "-o", output, `${root}/${source}`]);

  for (const pkg of ["files-pkg/static", "notes-pkg", "probe-pkg"]) {
    await Deno.mkdir(`${dir}/${pkg}`, { recursive: true });
  }
  await Promise.all([
    cxx("tests/apps/files/files.c++", `${dir}/files-pkg/files`),
    cxx(
      "services/worker/bridge/http-bridge.c++",
      `${dir}/notes-pkg/http-bridge`,
    ),
    cc("tests/apps/http/notes.c", `${dir}/notes-pkg/notes`),
    cc("tests/apps/probe/probe.c", `${dir}/probe-pkg/probe`),
  ]);
  await Deno.copyFile(
    `${root}/tests/apps/files/static/hello.txt`,
    `${dir}/files-pkg/static/hello.txt`,
  );
  await Deno.copyFile(`${dir}/notes-pkg/notes`, `${dir}/notes`);
  await Deno.writeTextFile(
    `${dir}/probe-manifest.json`,
    JSON.stringify({
      appTitle: "Probe",
      appVersion: 1,
      actions: [],
      continueCommand: { argv: ["/probe", "sleep"] },
    }),
  );

  await writeNewKey(`${dir}/test-apps.key`);
  const pack = (name: string, manifest: string) =>
    packDirectory({
      directory: `${dir}/${name}-pkg`,
      manifestFile: manifest,
      keyFile: `${dir}/test-apps.key`,
      output: `${dir}/${name}.spk`,
      xzPreset: 1,
    });
  await pack("files", `${root}/tests/apps/files/manifest.json`);
  await pack("notes", `${root}/tests/apps/http/manifest.json`);
  await pack("probe", `${dir}/probe-manifest.json`);
}

/** Builds the apps unless a build of the same sources exists. */
export async function buildTestApps(): Promise<TestApps> {
  const hash = createHash("sha256");
  for (const source of SOURCES) {
    hash.update(source).update(await Deno.readFile(`${root}/${source}`));
  }
  const base = `${root}/.data/apps-build`;
  const dir = `${base}/${hash.digest("hex").slice(0, 16)}`;
  const apps: TestApps = {
    dir,
    filesSpk: `${dir}/files.spk`,
    notesSpk: `${dir}/notes.spk`,
    probeSpk: `${dir}/probe.spk`,
    notesBinary: `${dir}/notes`,
  };
  try {
    await Deno.stat(`${dir}/probe.spk`);
    return apps;
  } catch { /* not built yet */ }

  await Deno.mkdir(base, { recursive: true });
  const staging = await Deno.makeTempDir({ dir: base, prefix: ".building-" });
  try {
    await buildInto(staging);
    await Deno.rename(staging, dir);
  } catch (error) {
    await Deno.remove(staging, { recursive: true });
    // Another test process may have finished the same build first.
    try {
      await Deno.stat(`${dir}/probe.spk`);
      return apps;
    } catch {
      throw error;
    }
  }
  return apps;
}

if (import.meta.main) {
  console.log((await buildTestApps()).dir);
}
