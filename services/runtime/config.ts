/**
 * Role configuration: a JSON file, then `--set path=value` flags on top,
 * validated with a zod schema. A bad field is reported by its dotted path
 * with what was expected, and the service refuses to start.
 *
 * @module
 */
import { z } from "zod";

/** Thrown when configuration cannot be read or does not validate. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** What a role was started with, before validation. */
export interface ConfigSource {
  /** Path of a JSON file, or undefined for embedded defaults only. */
  file?: string;
  /** `path=value` overrides, applied in order. Values parse as JSON when
   * they can (numbers, booleans, arrays) and are strings otherwise. */
  overrides: string[];
  /** `host:port` of the log sink given with `--log-sink`, if any. */
  logSink?: { hostname: string; port: number };
}

/** Parses `host:port` (IPv4 or a name; IPv6 in brackets) for --log-sink. */
export function parseHostPort(
  text: string,
): { hostname: string; port: number } {
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port < 1 || port > 65535) {
    throw new ConfigError(
      `${JSON.stringify(text)} is not host:port with a port from 1 to 65535`,
    );
  }
  return { hostname: match[1].replace(/^\[|\]$/g, ""), port };
}

/**
 * Reads `--config FILE`, any number of `--set a.b=value` and an optional
 * `--log-sink host:port` from the arguments. Anything else is an error, so a typo is not silently ignored.
 */
export function parseConfigArgs(args: string[]): ConfigSource {
  const source: ConfigSource = { overrides: [] };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const [flag, inline] = arg.startsWith("--") && arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      const next = args[++i];
      if (next === undefined) {
        throw new ConfigError(`flag ${flag} needs a value`);
      }
      return next;
    };
    if (flag === "--config") source.file = value();
    else if (flag === "--set") source.overrides.push(value());
    else if (flag === "--log-sink") source.logSink = parseHostPort(value());
    else {
      throw new ConfigError(
        `unknown argument ${
          JSON.stringify(arg)
        }: expected --config FILE or --set path=value`,
      );
    }
  }
  return source;
}

function parseValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Sets `path` (dotted) inside `target`, making objects on the way. */
function setPath(
  target: Record<string, unknown>,
  path: string,
  value: unknown,
) {
  const parts = path.split(".");
  if (parts.some((p) => p === "" || p === "__proto__")) {
    throw new ConfigError(`bad configuration path ${JSON.stringify(path)}`);
  }
  let node = target;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    if (next === undefined) node[part] = {};
    else if (typeof next !== "object" || next === null || Array.isArray(next)) {
      throw new ConfigError(
        `cannot set ${path}: ${part} is already a ${typeof next}, not an object`,
      );
    }
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]] = value;
}

/** Formats zod's issues as "field: problem" lines. */
function describeIssues(error: z.ZodError): string {
  return error.issues.map((issue) => {
    const path = issue.path.length > 0 ? issue.path.join(".") : "(root)";
    return `  ${path}: ${issue.message}`;
  }).join("\n");
}

/**
 * Loads and validates configuration. Defaults belong in the schema
 * (`.default(...)`), so that the embedded defaults and their documentation
 * live in one place.
 *
 * @example
 * ```ts
 * import { z } from "zod";
 * import { loadConfig } from "./config.ts";
 * const schema = z.object({ port: z.number().int().default(8080) });
 * const config = await loadConfig(schema, { overrides: ["port=9000"] });
 * if (config.port !== 9000) throw new Error("override ignored");
 * ```
 */
export async function loadConfig<T extends z.ZodType>(
  schema: T,
  source: ConfigSource,
): Promise<z.infer<T>> {
  let raw: Record<string, unknown> = {};
  if (source.file !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(source.file);
    } catch (error) {
      throw new ConfigError(`cannot read ${source.file}: ${error}`);
    }
    try {
      raw = JSON.parse(text);
    } catch (error) {
      throw new ConfigError(`${source.file} is not valid JSON: ${error}`);
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw new ConfigError(`${source.file} must hold a JSON object`);
    }
  }
  for (const override of source.overrides) {
    const eq = override.indexOf("=");
    if (eq <= 0) {
      throw new ConfigError(
        `override ${JSON.stringify(override)} must look like path=value`,
      );
    }
    setPath(raw, override.slice(0, eq), parseValue(override.slice(eq + 1)));
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    const where = source.file ?? "embedded defaults";
    throw new ConfigError(
      `invalid configuration (${where}):\n${describeIssues(result.error)}`,
    );
  }
  return result.data;
}
