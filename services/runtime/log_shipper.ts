/**
 * Ships a role's log lines to the log sink over UDP on loopback, and still
 * writes them to standard error. Shipping is best effort: the writer never
 * waits for the network, lines queue in memory up to a bound and are sent
 * in batches (several lines per datagram); beyond the bound, or when the
 * sink is unreachable, lines are dropped and counted, and the role goes on.
 *
 * A role that ships needs `--allow-net` for the sink's address and for
 * `127.0.0.1:0` (its own sending socket); {@link shipperNetPermissions}
 * lists both.
 *
 * @module
 */
import { type LogWriter, stderrWriter } from "./log.ts";

/** Options of {@link LogShipper}. */
export interface LogShipperOptions {
  /** The sink's address; loopback by default. */
  hostname?: string;
  port: number;
  /** Whether each line is also written to standard error (default true). */
  stderr?: boolean;
  /** Lines waiting to be sent beyond this are dropped. */
  maxQueuedLines?: number;
  /** Largest datagram sent; lines are packed up to this size. */
  maxDatagramBytes?: number;
}

/** Counters of a {@link LogShipper}. */
export interface LogShipperStats {
  shipped: number;
  /** Lines not sent: queue full, too long, or the socket failed. */
  dropped: number;
  sendErrors: number;
}

const encoder = new TextEncoder();

/** The `--allow-net` entries a role needs to ship to a sink. */
export function shipperNetPermissions(
  port: number,
  hostname = "127.0.0.1",
): string[] {
  return [`${hostname}:0`, `${hostname}:${port}`];
}

/**
 * Sends log lines to the sink.
 *
 * @example
 * ```ts
 * import { Logger } from "./log.ts";
 * import { LogShipper } from "./log_shipper.ts";
 * const shipper = new LogShipper({ port: 4510, stderr: false });
 * const log = new Logger({ role: "storage", writer: shipper.writer });
 * log.info("disk-opened", { path: "/srv" });
 * await shipper.close();
 * ```
 */
export class LogShipper {
  readonly stats: LogShipperStats = { shipped: 0, dropped: 0, sendErrors: 0 };
  /** Pass this as a Logger's `writer`. */
  readonly writer: LogWriter;
  readonly #target: Deno.NetAddr;
  readonly #stderr: boolean;
  readonly #maxQueuedLines: number;
  readonly #maxDatagramBytes: number;
  #queue: Uint8Array[] = [];
  #socket: Deno.DatagramConn | undefined;
  #socketFailed = false;
  #pumping: Promise<void> | undefined;
  #closed = false;
  #lastErrorReport = 0;

  constructor(options: LogShipperOptions) {
    this.#target = {
      transport: "udp",
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port,
    };
    this.#stderr = options.stderr ?? true;
    this.#maxQueuedLines = options.maxQueuedLines ?? 1_000;
    this.#maxDatagramBytes = Math.min(
      options.maxDatagramBytes ?? 16 * 1024,
      60_000,
    );
    this.writer = (line) => this.write(line);
  }

  /** Writes `line` to stderr (if enabled) and queues it for the sink. */
  write(line: string): void {
    if (this.#stderr) stderrWriter(line);
    if (this.#closed || this.#socketFailed) {
      this.stats.dropped++;
      return;
    }
    const bytes = encoder.encode(line + "\n");
    if (
      bytes.length > this.#maxDatagramBytes ||
      this.#queue.length >= this.#maxQueuedLines
    ) {
      this.stats.dropped++;
      return;
    }
    this.#queue.push(bytes);
    this.#kick();
  }

  #kick(): void {
    if (this.#pumping !== undefined) return;
    this.#pumping = this.#pump().finally(() => {
      this.#pumping = undefined;
      // A line queued between the pump's last check and now still goes.
      if (this.#queue.length > 0 && !this.#socketFailed) this.#kick();
    });
  }

  #openSocket(): Deno.DatagramConn | undefined {
    if (this.#socket !== undefined || this.#socketFailed) return this.#socket;
    try {
      this.#socket = Deno.listenDatagram({
        transport: "udp",
        hostname: this.#target.hostname,
        port: 0,
      });
    } catch (error) {
      // Most likely a missing permission: shipping stops for good, and
      // says so once on stderr (not through the logger, which ships).
      this.#socketFailed = true;
      this.stats.dropped += this.#queue.length;
      this.#queue = [];
      stderrWriter(JSON.stringify({
        time: new Date().toISOString(),
        level: "error",
        event: "log-shipping-disabled",
        error: String(error),
      }));
    }
    return this.#socket;
  }

  /** Sends queued lines, packed into datagrams, until the queue is empty.
   * Starts after the current task so a burst of lines shares datagrams. */
  async #pump(): Promise<void> {
    await Promise.resolve();
    while (this.#queue.length > 0) {
      const socket = this.#openSocket();
      if (socket === undefined) return;
      const parts: Uint8Array[] = [];
      let size = 0;
      while (
        this.#queue.length > 0 &&
        size + this.#queue[0].length <= this.#maxDatagramBytes
      ) {
        const part = this.#queue.shift()!;
        parts.push(part);
        size += part.length;
      }
      const datagram = new Uint8Array(size);
      let offset = 0;
      for (const part of parts) {
        datagram.set(part, offset);
        offset += part.length;
      }
      try {
        await socket.send(datagram, this.#target);
        this.stats.shipped += parts.length;
      } catch (error) {
        this.stats.sendErrors++;
        this.stats.dropped += parts.length;
        this.#reportSendError(error);
      }
    }
  }

  #reportSendError(error: unknown): void {
    const now = Date.now();
    if (now - this.#lastErrorReport < 10_000) return;
    this.#lastErrorReport = now;
    stderrWriter(JSON.stringify({
      time: new Date().toISOString(),
      level: "warn",
      event: "log-shipping-failed",
      error: String(error),
      dropped: this.stats.dropped,
    }));
  }

  /** Sends what is queued, then closes the socket; later lines still go
   * to stderr. */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#pumping !== undefined) await this.#pumping;
    this.#socket?.close();
    this.#socket = undefined;
  }
}
