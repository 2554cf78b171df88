/**
 * The house rule of ARCHITECTURE.md, checked on the source: a role never
 * imports another role's code, and a shared library never imports a role.
 * Roles meet only through proto/ schemas over RPC.
 */
import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";

const ROOT = resolve(dirname(new URL(import.meta.url).pathname), "..");

/** Folders under services/ that any role may import. */
const SHARED = new Set(["rpc", "runtime", "spk", "web_session"]);

/**
 * The block daemon is the worker's own: it runs beside the worker on worker
 * machines, is started and driven by it, and serves no other role. The
 * worker may import its client side (attach, control, storage nodes).
 */
const COMPANIONS = new Set(["worker -> blockd"]);

/**
 * Test code (`*_test.ts` and the `_*testing.ts` harnesses beside it) may
 * start another role's process through that role's test harness: a
 * cross-role test needs the real thing. The rule is for code that runs in
 * production.
 */
function isTestCode(path: string): boolean {
  const name = path.slice(path.lastIndexOf("/") + 1);
  return name.endsWith("_test.ts") || /^_.*testing\.ts$/.test(name);
}

/** Module specifiers of static imports, re-exports and dynamic imports. */
export function importSpecifiers(source: string): string[] {
  const found: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^;]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const pattern of patterns) {
    for (const match of source.matchAll(pattern)) found.push(match[1]);
  }
  return found;
}

/** The services/ folder a path lies in, or undefined. */
function serviceOf(path: string): string | undefined {
  const parts = relative(ROOT, path).split("/");
  return parts[0] === "services" && parts.length > 2 ? parts[1] : undefined;
}

/**
 * Imports in `file` (under services/) that break the rule, as
 * "file -> target" lines.
 */
export function violations(file: string, source: string): string[] {
  const from = serviceOf(file);
  if (from === undefined || isTestCode(file)) return [];
  const bad: string[] = [];
  for (const specifier of importSpecifiers(source)) {
    if (!specifier.startsWith(".")) continue;
    const target = resolve(dirname(file), specifier);
    const to = serviceOf(target);
    if (to === undefined || to === from || SHARED.has(to)) continue;
    if (COMPANIONS.has(`${from} -> ${to}`)) continue;
    bad.push(`${relative(ROOT, file)} -> ${relative(ROOT, target)}`);
  }
  return bad;
}

function* sourceFiles(dir: string): Generator<string> {
  for (const entry of Deno.readDirSync(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) yield* sourceFiles(path);
    else if (/\.(ts|tsx|js|mjs)$/.test(entry.name)) yield path;
  }
}

Deno.test("the checker catches a role importing another role, and allows shared modules", () => {
  const file = join(ROOT, "services/gateway/example.ts");
  assert.deepEqual(
    violations(
      file,
      `import { a } from "../worker/supervisor.ts";\n` +
        `import type {\n  B,\n} from "../shell/server.ts";\n` +
        `export { c } from "../coordinator/main.ts";\n` +
        `const d = await import("../master/master.ts");\n` +
        `import * as rpc from "../rpc/mod.ts";\n` +
        `import { e } from "../web_session/mod.ts";\n` +
        `import { f } from "./proxy.ts";\n` +
        `import { G } from "../../proto/gen/worker.ts";\n`,
    ),
    [
      "services/gateway/example.ts -> services/worker/supervisor.ts",
      "services/gateway/example.ts -> services/shell/server.ts",
      "services/gateway/example.ts -> services/coordinator/main.ts",
      "services/gateway/example.ts -> services/master/master.ts",
    ],
  );
  assert.deepEqual(
    violations(
      join(ROOT, "services/web_session/relay.ts"),
      `import { x } from "../worker/grains.ts";`,
    ),
    ["services/web_session/relay.ts -> services/worker/grains.ts"],
  );
  assert.deepEqual(
    violations(
      join(ROOT, "services/blockd/daemon.ts"),
      `import { x } from "../storage/errors.ts";`,
    ),
    ["services/blockd/daemon.ts -> services/storage/errors.ts"],
  );
  assert.deepEqual(
    violations(
      join(ROOT, "services/worker/volumes.ts"),
      `import { x } from "../blockd/control.ts";`,
    ),
    [],
  );
});

Deno.test("no role imports another role's code, and shared modules import no role", () => {
  const bad: string[] = [];
  for (const file of sourceFiles(join(ROOT, "services"))) {
    bad.push(...violations(file, Deno.readTextFileSync(file)));
  }
  assert.deepEqual(bad, []);
});
