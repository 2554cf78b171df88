/**
 * The two-party stream transport: Cap'n Proto's standard message framing
 * over a byte stream (TCP, a unix socket, or an inherited file descriptor),
 * as a {@link MessageConnection}. This is what the C++ reference's
 * `TwoPartyVatNetwork` speaks, so a grain's fd 3 can carry it.
 *
 * Framing: a little-endian u32 holding the segment count minus one, one u32
 * size (in 8-byte words) per segment, zero padding to a word boundary, then
 * the segments.
 *
 * @module
 */

import { type MessageConnection, TransportClosedError } from "./transport.ts";
import type { RpcMetrics } from "./metrics.ts";
import { rpcMetrics } from "./metrics.ts";
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  FrameError,
  frameLength,
} from "./framing.ts";

export {
  DEFAULT_MAX_MESSAGE_BYTES,
  FrameError,
  frameLength,
  MAX_SEGMENTS,
} from "./framing.ts";

/** The byte stream under a {@link StreamConnection}. `Deno.Conn` fits. */
export interface ByteStream {
  read(buffer: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  close(): void;
}

/** Options of a stream connection. */
export interface StreamOptions {
  /** Largest frame accepted, header included. */
  maxMessageBytes?: number;
  /** The peer's vat ID when something outside the stream proved it (for
   * example the unix socket's path is private to that peer). */
  peerVatId?: Uint8Array;
  /** Counters to add bad frames to. */
  metrics?: RpcMetrics;
}

/**
 * The messages as one view when they lie back to back in one buffer (the
 * engine sends a Finish and the next call that way), else undefined.
 */
function adjacent(
  parts: readonly Uint8Array[],
  totalBytes: number,
): Uint8Array | undefined {
  const first = parts[0];
  let end = first.byteOffset + first.length;
  for (let i = 1; i < parts.length; i++) {
    const part = parts[i];
    if (part.buffer !== first.buffer || part.byteOffset !== end) {
      return undefined;
    }
    end += part.length;
  }
  return new Uint8Array(first.buffer, first.byteOffset, totalBytes);
}

const READ_CHUNK_BYTES = 64 << 10;

/**
 * A {@link MessageConnection} over a byte stream with standard framing.
 * Messages sent in one turn of the event loop go out in one write.
 *
 * A received message is a view into the read buffer, valid until the next
 * `receive` or `tryReceive` call (the RPC engine decodes it at once, so
 * nothing is copied twice); copy it to keep it longer.
 *
 * @example
 * ```ts
 * import { connectTcp, listenTcp } from "./stream.ts";
 * const listener = listenTcp({ hostname: "127.0.0.1", port: 0 });
 * const accepted = listener.accept();
 * const client = await connectTcp({ hostname: "127.0.0.1", port: listener.port });
 * const server = await accepted;
 * // One empty message: a single segment of one zero word.
 * client.send(new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
 * console.assert((await server.receive())?.length === 16);
 * client.close();
 * server.close();
 * listener.close();
 * ```
 */
export class StreamConnection implements MessageConnection {
  readonly peerVatId: Uint8Array | undefined;
  readonly maxMessageBytes: number;
  readonly #stream: ByteStream;
  readonly #metrics: RpcMetrics;
  #buffer = new Uint8Array(READ_CHUNK_BYTES);
  #start = 0;
  #end = 0;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #writing = false;
  #closed = false;
  #error: TransportClosedError | undefined;
  #eof = false;

  constructor(stream: ByteStream, options: StreamOptions = {}) {
    this.#stream = stream;
    this.peerVatId = options.peerVatId;
    this.maxMessageBytes = options.maxMessageBytes ??
      DEFAULT_MAX_MESSAGE_BYTES;
    this.#metrics = options.metrics ?? rpcMetrics;
  }

  send(message: Uint8Array): void {
    if (this.#closed) {
      throw this.#error ?? new TransportClosedError("stream is closed");
    }
    this.#pending.push(message);
    this.#pendingBytes += message.length;
    if (!this.#writing) {
      this.#writing = true;
      queueMicrotask(() => this.#flush());
    }
  }

  async #flush(): Promise<void> {
    try {
      while (this.#pending.length > 0 && !this.#closed) {
        let chunk: Uint8Array;
        const joined = adjacent(this.#pending, this.#pendingBytes);
        if (joined !== undefined) {
          chunk = joined;
        } else {
          chunk = new Uint8Array(this.#pendingBytes);
          let offset = 0;
          for (const part of this.#pending) {
            chunk.set(part, offset);
            offset += part.length;
          }
        }
        this.#pending = [];
        this.#pendingBytes = 0;
        let written = 0;
        while (written < chunk.length) {
          written += await this.#stream.write(chunk.subarray(written));
        }
      }
    } catch (error) {
      this.#fail(new TransportClosedError(`write failed: ${error}`));
    } finally {
      this.#writing = false;
    }
  }

  /**
   * The next message if a whole one is already buffered, else undefined,
   * without waiting: the RPC engine drains a burst of messages (many
   * returns in one read) in one turn, so that the calls they trigger leave
   * in one write. Throws like {@link receive} on a bad frame.
   */
  tryReceive(): Uint8Array | undefined {
    if (this.#error !== undefined || this.#closed) return undefined;
    const length = this.#bufferedFrame();
    if (length < 0 || this.#end - this.#start < length) return undefined;
    const start = this.#start;
    this.#start += length;
    return this.#buffer.subarray(start, start + length);
  }

  /** The length of the frame at the read position, or -1 if unknown yet. */
  #bufferedFrame(): number {
    try {
      return frameLength(
        this.#buffer.subarray(this.#start, this.#end),
        this.maxMessageBytes,
      );
    } catch (error) {
      this.#metrics.badFrames++;
      this.#fail(error as FrameError);
      throw error;
    }
  }

  async receive(): Promise<Uint8Array | null> {
    for (;;) {
      if (this.#error !== undefined) throw this.#error;
      if (this.#closed) return null;
      const length = this.#bufferedFrame();
      const available = this.#buffer.subarray(this.#start, this.#end);
      if (length >= 0 && available.length >= length) {
        this.#start += length;
        return available.subarray(0, length);
      }
      if (this.#eof) {
        if (available.length === 0) return null;
        this.#metrics.badFrames++;
        const error = new FrameError(
          `stream ended inside a frame (${available.length} bytes of ${
            length < 0 ? "an unknown size" : length
          })`,
        );
        this.#fail(error);
        throw error;
      }
      this.#makeRoom(length);
      let count: number | null;
      try {
        count = await this.#stream.read(this.#buffer.subarray(this.#end));
      } catch (error) {
        if (this.#closed) return null;
        const failure = new TransportClosedError(`read failed: ${error}`, {
          cause: error,
        });
        this.#fail(failure);
        throw failure;
      }
      if (count === null) this.#eof = true;
      else this.#end += count;
    }
  }

  /** Compacts the buffer and grows it to hold a frame of `needed` bytes. */
  #makeRoom(needed: number): void {
    const used = this.#end - this.#start;
    const want = Math.max(needed, used + READ_CHUNK_BYTES);
    if (this.#start > 0 && this.#buffer.length - this.#end < READ_CHUNK_BYTES) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end = used;
      this.#start = 0;
    }
    if (this.#buffer.length < want) {
      const grown = new Uint8Array(Math.max(want, this.#buffer.length * 2));
      grown.set(this.#buffer.subarray(this.#start, this.#end));
      this.#buffer = grown;
      this.#end = used;
      this.#start = 0;
    }
  }

  /** Ends reading. A bad frame leaves the write side open so that the
   * engine can still send Abort before it closes the connection. */
  #fail(error: TransportClosedError): void {
    if (this.#error === undefined) this.#error = error;
    if (!(error instanceof FrameError)) this.close();
  }

  close(_reason?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    // Whatever was queued still goes out (an Abort, most of all) before
    // the stream closes.
    const pending = this.#pending;
    this.#pending = [];
    const finish = async () => {
      try {
        for (const chunk of pending) {
          let written = 0;
          while (written < chunk.length) {
            written += await this.#stream.write(chunk.subarray(written));
          }
        }
      } catch {
        // The peer is gone; there is nobody left to tell.
      }
      try {
        this.#stream.close();
      } catch {
        // Already closed by the other side of the runtime.
      }
    };
    void finish();
  }
}

/** Where to reach or listen on TCP. */
export interface TcpAddress {
  hostname: string;
  port: number;
}

/** Opens a TCP stream connection (Nagle off: RPC messages are small). */
export async function connectTcp(
  address: TcpAddress,
  options?: StreamOptions,
): Promise<StreamConnection> {
  const conn = await Deno.connect({ ...address, transport: "tcp" });
  conn.setNoDelay(true);
  return new StreamConnection(conn, options);
}

/** Opens a stream connection to a unix socket. */
export async function connectUnix(
  path: string,
  options?: StreamOptions,
): Promise<StreamConnection> {
  const conn = await Deno.connect({ path, transport: "unix" });
  return new StreamConnection(conn, options);
}

/** A listening socket whose accepted streams are MessageConnections. */
export class StreamListener {
  readonly #listener: Deno.Listener;
  readonly #options: StreamOptions | undefined;

  constructor(listener: Deno.Listener, options?: StreamOptions) {
    this.#listener = listener;
    this.#options = options;
  }

  /** The TCP port listened on (0 for a unix socket). */
  get port(): number {
    const addr = this.#listener.addr;
    return addr.transport === "tcp" ? addr.port : 0;
  }

  /** The next connection a peer opens. */
  async accept(): Promise<StreamConnection> {
    const conn = await this.#listener.accept();
    if (conn.remoteAddr.transport === "tcp") {
      (conn as Deno.TcpConn).setNoDelay(true);
    }
    return new StreamConnection(conn, this.#options);
  }

  close(): void {
    try {
      this.#listener.close();
    } catch {
      // Closing twice is harmless.
    }
  }
}

/** Listens on TCP; port 0 picks a free port (see `listener.port`). */
export function listenTcp(
  address: TcpAddress,
  options?: StreamOptions,
): StreamListener {
  return new StreamListener(
    Deno.listen({ ...address, transport: "tcp" }),
    options,
  );
}

/** Listens on a unix socket path. */
export function listenUnix(
  path: string,
  options?: StreamOptions,
): StreamListener {
  return new StreamListener(
    Deno.listen({ path, transport: "unix" }),
    options,
  );
}
