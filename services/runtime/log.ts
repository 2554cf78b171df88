/**
 * Structured logs: one JSON object per line with time, level, role, vat,
 * event and the event's values. Values whose names say they are secret
 * (key, secret, password, token, seed, credential) and raw bytes are
 * replaced before a line is written, so a careless call cannot leak them.
 *
 * @module
 */

/** Severity of a log line, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";

const LEVEL_ORDER: Record<LogLevel, number> = {
  debug: 0,
  info: 1,
  warn: 2,
  error: 3,
};

/** Names of values that are never written, matched case-insensitively. */
const SECRET_NAME =
  /(^|_|[a-z])(key|secret|password|passwd|token|seed|credential|sturdyref)s?($|_|[A-Z])/i;

/** Where a logger's lines go; a test can collect them instead. */
export type LogWriter = (line: string) => void;

const encoder = new TextEncoder();

/** Writes a line to standard error, synchronously so that a line logged just
 * before exit is not lost. */
export const stderrWriter: LogWriter = (line) => {
  const bytes = encoder.encode(line + "\n");
  let written = 0;
  while (written < bytes.length) {
    written += Deno.stderr.writeSync(bytes.subarray(written));
  }
};

/** Replaces what must not be logged and makes errors and bigints printable. */
export function redact(name: string, value: unknown, depth = 0): unknown {
  if (SECRET_NAME.test(name)) return "[redacted]";
  if (value instanceof Uint8Array) return `[${value.length} bytes]`;
  if (value instanceof ArrayBuffer) return `[${value.byteLength} bytes]`;
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) {
    return { name: value.name, message: value.message };
  }
  if (value !== null && typeof value === "object") {
    // Deeper values are not inspected, so they are not written either.
    if (depth >= 4) return "[nested too deep]";
    if (Array.isArray(value)) {
      return value.map((item) => redact("", item, depth + 1));
    }
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = redact(k, v, depth + 1);
    }
    return out;
  }
  return value;
}

/** Options of {@link Logger}. */
export interface LoggerOptions {
  role: string;
  /** The vat ID (hex or base64 of the public key), once known. */
  vat?: string;
  level?: LogLevel;
  writer?: LogWriter;
}

/**
 * Writes structured log lines for one role.
 *
 * @example
 * ```ts
 * import { Logger } from "./log.ts";
 * const lines: string[] = [];
 * const log = new Logger({ role: "storage", writer: (l) => lines.push(l) });
 * log.info("disk-opened", { path: "/var/blackrock", accessKey: "hidden" });
 * const line = JSON.parse(lines[0]);
 * if (line.accessKey !== "[redacted]") throw new Error("leaked");
 * ```
 */
export class Logger {
  readonly role: string;
  vat: string | undefined;
  readonly #level: LogLevel;
  readonly #writer: LogWriter;
  readonly #fields: Record<string, unknown>;

  constructor(options: LoggerOptions, fields: Record<string, unknown> = {}) {
    this.role = options.role;
    this.vat = options.vat;
    this.#level = options.level ?? "info";
    this.#writer = options.writer ?? stderrWriter;
    this.#fields = fields;
  }

  /** A logger that adds the given values to every line it writes. */
  with(fields: Record<string, unknown>): Logger {
    return new Logger({
      role: this.role,
      vat: this.vat,
      level: this.#level,
      writer: this.#writer,
    }, { ...this.#fields, ...fields });
  }

  debug(event: string, values: Record<string, unknown> = {}): void {
    this.write("debug", event, values);
  }

  info(event: string, values: Record<string, unknown> = {}): void {
    this.write("info", event, values);
  }

  warn(event: string, values: Record<string, unknown> = {}): void {
    this.write("warn", event, values);
  }

  error(event: string, values: Record<string, unknown> = {}): void {
    this.write("error", event, values);
  }

  /** Writes one line if `level` is at or above this logger's minimum. */
  write(
    level: LogLevel,
    event: string,
    values: Record<string, unknown>,
  ): void {
    if (LEVEL_ORDER[level] < LEVEL_ORDER[this.#level]) return;
    const line: Record<string, unknown> = {
      time: new Date().toISOString(),
      level,
      role: this.role,
      vat: this.vat,
      event,
    };
    for (const [name, value] of Object.entries(this.#fields)) {
      line[name] = redact(name, value);
    }
    for (const [name, value] of Object.entries(values)) {
      if (name in line && !(name in this.#fields)) {
        line[`value_${name}`] = redact(name, value);
      } else {
        line[name] = redact(name, value);
      }
    }
    this.#writer(JSON.stringify(line));
  }
}
