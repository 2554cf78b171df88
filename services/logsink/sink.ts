/**
 * The log sink: receives structured log lines from the other roles over
 * UDP on loopback and appends them to one file per role, rotating a file
 * once it would grow past a size limit.
 *
 * A datagram holds one or more lines (JSON objects separated by "\n"). A
 * line that is not a JSON object with string `role` and `event` fields is
 * counted by reason and dropped; nothing a sender writes can stop the
 * sink. Lines are buffered per role and written in batches, on a short
 * timer and at shutdown, so a burst costs few writes.
 *
 * @module
 */
import { z } from "zod";
import { type Logger, redact } from "../runtime/log.ts";
import type { RunningService } from "../runtime/service.ts";

/** The sink's configuration. */
export const logSinkConfig = z.strictObject({
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(4510),
  }).default({ hostname: "127.0.0.1", port: 4510 }),
  /** One `<role>.log` per role goes here, with `<role>.log.1` ... beside
   * it after rotation. */
  outputDir: z.string().min(1).default(".data/logsink/logs"),
  /** A file is rotated before a write would take it past this size. */
  maxFileBytes: z.number().int().min(1024).default(10 * 1024 * 1024),
  /** How many rotated files are kept per role; older ones are deleted. */
  maxRotatedFiles: z.number().int().min(0).max(100).default(5),
  /** How long a received line may wait in memory before it is written. */
  flushIntervalMs: z.number().int().min(1).max(600_000).default(200),
  /** Distinct roles beyond this are dropped (as `too-many-roles`), so a
   * sender inventing role names cannot exhaust file handles. */
  maxRoles: z.number().int().min(1).default(256),
});

/** The sink's configuration after validation. */
export type LogSinkConfig = z.infer<typeof logSinkConfig>;

/** Longest accepted line, in characters. A UDP datagram is at most 64 KiB
 * anyway; this bounds what one line can cost. */
export const MAX_LINE_CHARS = 60_000;

/** Role names double as file names, so they are kept to a safe alphabet. */
const ROLE_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

/** Why a line was dropped. */
export type DropReason =
  | "not-json"
  | "not-object"
  | "bad-role"
  | "bad-event"
  | "too-long"
  | "too-many-roles"
  | "write-failed";

/** A line that passed validation. */
export interface LogEntry {
  role: string;
  event: string;
  /** The line as received, or re-serialised when redaction changed it. */
  text: string;
}

/** Checks one line. Never throws, whatever the input. */
export function parseLogLine(
  text: string,
): { ok: true; entry: LogEntry } | { ok: false; reason: DropReason } {
  if (text.length > MAX_LINE_CHARS) return { ok: false, reason: "too-long" };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, reason: "not-json" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, reason: "not-object" };
  }
  const { role, event } = value as Record<string, unknown>;
  if (typeof role !== "string" || !ROLE_NAME.test(role)) {
    return { ok: false, reason: "bad-role" };
  }
  if (typeof event !== "string" || event.length === 0) {
    return { ok: false, reason: "bad-event" };
  }
  // The sink applies the runtime's redaction again: a role built without
  // the runtime's Logger, or any local process, could send a secret.
  const redacted = JSON.stringify(redact("", value));
  const clean = redacted === JSON.stringify(value) ? text : redacted;
  return { ok: true, entry: { role, event, text: clean } };
}

/** Counters of a running sink. */
export interface LogSinkStats {
  datagrams: number;
  /** Lines accepted (and written, or waiting to be). */
  lines: number;
  /** Lines written to files. */
  written: number;
  dropped: Record<DropReason, number>;
  rotations: number;
}

const encoder = new TextEncoder();

/** One role's file, its pending lines and its size on disk. */
class RoleFile {
  readonly path: string;
  #file: Deno.FsFile | undefined;
  #sizeBytes = 0;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;

  constructor(path: string) {
    this.path = path;
  }

  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  get pendingLines(): number {
    return this.#pending.length;
  }

  add(text: string): void {
    const bytes = encoder.encode(text + "\n");
    this.#pending.push(bytes);
    this.#pendingBytes += bytes.length;
  }

  async #open(): Promise<Deno.FsFile> {
    if (this.#file === undefined) {
      this.#file = await Deno.open(this.path, {
        append: true,
        create: true,
      });
      this.#sizeBytes = (await this.#file.stat()).size;
    }
    return this.#file;
  }

  /** Moves `<role>.log` to `.1`, `.1` to `.2`, ..., dropping the last. */
  async #rotate(keep: number): Promise<void> {
    this.#file?.close();
    this.#file = undefined;
    if (keep === 0) {
      await Deno.remove(this.path).catch(ignoreNotFound);
    } else {
      await Deno.remove(`${this.path}.${keep}`).catch(ignoreNotFound);
      for (let index = keep - 1; index >= 1; index--) {
        await Deno.rename(`${this.path}.${index}`, `${this.path}.${index + 1}`)
          .catch(ignoreNotFound);
      }
      await Deno.rename(this.path, `${this.path}.1`).catch(ignoreNotFound);
    }
    this.#sizeBytes = 0;
  }

  /** Writes every pending line; returns how many and how many rotations.
   * A file never passes `maxBytes` unless a single line is that long. */
  async flush(
    maxBytes: number,
    keep: number,
  ): Promise<{ lines: number; rotations: number }> {
    const lines = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    let rotations = 0;
    let batch: Uint8Array[] = [];
    let batchBytes = 0;
    const writeBatch = async () => {
      if (batch.length === 0) return;
      const file = await this.#open();
      const joined = concat(batch, batchBytes);
      let offset = 0;
      while (offset < joined.length) {
        offset += await file.write(joined.subarray(offset));
      }
      this.#sizeBytes += joined.length;
      batch = [];
      batchBytes = 0;
    };
    await this.#open();
    for (const line of lines) {
      const size = this.#sizeBytes + batchBytes;
      if (size > 0 && size + line.length > maxBytes) {
        await writeBatch();
        await this.#rotate(keep);
        await this.#open();
        rotations++;
      }
      batch.push(line);
      batchBytes += line.length;
    }
    await writeBatch();
    return { lines: lines.length, rotations };
  }

  close(): void {
    this.#file?.close();
    this.#file = undefined;
  }
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function ignoreNotFound(error: unknown): void {
  if (!(error instanceof Deno.errors.NotFound)) throw error;
}

/** Pending bytes of one role that trigger a write before the timer. */
const FLUSH_BYTES = 64 * 1024;
/** At shutdown, datagrams are still read until none came for this long,
 * so lines sent just before the stop signal are not lost. */
const DRAIN_QUIET_MS = 50;
/** Longest the shutdown drain may take. */
const DRAIN_MAX_MS = 2_000;

/** `receiving`, or "quiet" if it takes longer than {@link DRAIN_QUIET_MS}. */
async function quietOr(
  receiving: Promise<Uint8Array>,
): Promise<Uint8Array | "quiet"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const quiet = new Promise<"quiet">((resolve) => {
    timer = setTimeout(() => resolve("quiet"), DRAIN_QUIET_MS);
  });
  try {
    return await Promise.race([receiving, quiet]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A running log sink.
 *
 * @example
 * ```ts
 * import { LogSink, logSinkConfig } from "./sink.ts";
 * import { Logger } from "../runtime/log.ts";
 * const dir = await Deno.makeTempDir();
 * const config = logSinkConfig.parse({ outputDir: dir, listen: { port: 0 } });
 * const sink = await LogSink.start(config, new Logger({ role: "logsink" }));
 * console.log(sink.address.port, sink.stats.lines);
 * await sink.stop();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class LogSink implements RunningService {
  readonly address: Deno.NetAddr;
  readonly stats: LogSinkStats = {
    datagrams: 0,
    lines: 0,
    written: 0,
    dropped: {
      "not-json": 0,
      "not-object": 0,
      "bad-role": 0,
      "bad-event": 0,
      "too-long": 0,
      "too-many-roles": 0,
      "write-failed": 0,
    },
    rotations: 0,
  };
  /** Resolves if receiving fails (the socket broke) before stop(). */
  readonly done: Promise<void>;
  readonly #config: LogSinkConfig;
  readonly #log: Logger;
  readonly #socket: Deno.DatagramConn;
  readonly #files = new Map<string, RoleFile>();
  readonly #decoder = new TextDecoder();
  readonly #drain = Promise.withResolvers<void>();
  readonly #receiveLoop: Promise<void>;
  #flushing: Promise<void> = Promise.resolve();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #draining = false;
  #closed = false;
  #lastDropReport = 0;

  private constructor(config: LogSinkConfig, log: Logger) {
    this.#config = config;
    this.#log = log;
    this.#socket = Deno.listenDatagram({
      transport: "udp",
      hostname: config.listen.hostname,
      port: config.listen.port,
    });
    this.address = this.#socket.addr as Deno.NetAddr;
    this.#receiveLoop = this.#receive();
    this.done = this.#receiveLoop;
  }

  /** Creates the output directory, binds the socket and starts receiving. */
  static async start(config: LogSinkConfig, log: Logger): Promise<LogSink> {
    await Deno.mkdir(config.outputDir, { recursive: true });
    const sink = new LogSink(config, log);
    log.info("listening", {
      hostname: sink.address.hostname,
      port: sink.address.port,
      outputDir: config.outputDir,
    });
    return sink;
  }

  async #receive(): Promise<void> {
    let receiving: Promise<Uint8Array> | undefined;
    const drain = this.#drain.promise.then(() => "drain" as const);
    while (true) {
      receiving ??= this.#socket.receive().then(([data]) => data);
      let next: Uint8Array | "drain" | "quiet";
      try {
        next = this.#draining
          ? await quietOr(receiving)
          : await Promise.race([receiving, drain]);
      } catch (error) {
        if (this.#closed) return;
        this.#log.error("receive-failed", { error });
        return;
      }
      if (next === "quiet") return;
      if (next === "drain") {
        // The pending receive is kept: a datagram already queued on the
        // socket is still read before the quiet timer ends the loop.
        this.#draining = true;
        continue;
      }
      receiving = undefined;
      this.#accept(next);
    }
  }

  #accept(data: Uint8Array): void {
    this.stats.datagrams++;
    const text = this.#decoder.decode(data);
    for (const line of text.split("\n")) {
      if (line.trim() === "") continue;
      const parsed = parseLogLine(line);
      if (!parsed.ok) {
        this.#drop(parsed.reason);
        continue;
      }
      const { role, text: lineText } = parsed.entry;
      let file = this.#files.get(role);
      if (file === undefined) {
        if (this.#files.size >= this.#config.maxRoles) {
          this.#drop("too-many-roles");
          continue;
        }
        file = new RoleFile(`${this.#config.outputDir}/${role}.log`);
        this.#files.set(role, file);
      }
      file.add(lineText);
      this.stats.lines++;
      if (file.pendingBytes >= FLUSH_BYTES) this.#flushSoon(0);
    }
    this.#flushSoon(this.#config.flushIntervalMs);
  }

  #drop(reason: DropReason, count = 1): void {
    this.stats.dropped[reason] += count;
    // One line per ten seconds at most: a flood of garbage must not turn
    // into a flood of log lines.
    const now = Date.now();
    if (now - this.#lastDropReport >= 10_000) {
      this.#lastDropReport = now;
      this.#log.warn("lines-dropped", { reason, dropped: this.stats.dropped });
    }
  }

  #flushSoon(delayMs: number): void {
    if (this.#timer !== undefined) {
      if (delayMs > 0) return;
      clearTimeout(this.#timer);
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, delayMs);
  }

  /** Writes every pending line. Concurrent calls are serialised. */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.#flushAll());
    return this.#flushing;
  }

  async #flushAll(): Promise<void> {
    for (const [role, file] of this.#files) {
      if (file.pendingLines === 0) continue;
      const count = file.pendingLines;
      try {
        const { lines, rotations } = await file.flush(
          this.#config.maxFileBytes,
          this.#config.maxRotatedFiles,
        );
        this.stats.written += lines;
        this.stats.rotations += rotations;
      } catch (error) {
        // A full or vanished disk loses these lines but not the sink; the
        // file is reopened on the next write.
        file.close();
        this.#drop("write-failed", count);
        this.#log.error("write-failed", { role, path: file.path, error });
      }
    }
  }

  /** Reads what is still queued on the socket, writes every line, closes
   * the files. */
  async stop(): Promise<void> {
    this.#drain.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#receiveLoop,
      new Promise((resolve) => {
        // A sender that never pauses cannot hold the shutdown forever.
        timer = setTimeout(resolve, DRAIN_MAX_MS);
      }),
    ]);
    clearTimeout(timer);
    this.#closed = true;
    this.#socket.close();
    await this.#receiveLoop;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
    for (const file of this.#files.values()) file.close();
    this.#log.info("flushed", {
      lines: this.stats.lines,
      written: this.stats.written,
      dropped: this.stats.dropped,
      rotations: this.stats.rotations,
    });
  }
}
