/**
 * An NBD server: the fixed newstyle handshake (EXPORT_NAME, INFO, GO,
 * LIST, ABORT; everything else refused with NBD_REP_ERR_UNSUP) and the
 * transmission phase with simple replies. Requests run concurrently, up to
 * a bound; replies go out whole, one at a time.
 *
 * A peer's bytes never throw out of a connection: a request that can be
 * answered gets an NBD error reply, and a stream that cannot be followed
 * any more (bad magic, early end) closes that connection only.
 *
 * @module
 */
import type { Logger } from "../runtime/log.ts";
import { BlockRangeError, LeaseError } from "./block_store.ts";
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  Command,
  CommandFlag,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeOptionReply,
  encodeServerReply,
  Errno,
  Info,
  MAX_OPTION_BYTES,
  MAX_PAYLOAD_BYTES,
  Option,
  OPTION_HEADER_BYTES,
  OptionError,
  parseExportName,
  parseInfoRequest,
  parseOptionHeader,
  parseRequestHeader,
  ProtocolError,
  Reply,
  type Request,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
  TransmissionFlag,
  validateRequest,
  writeSimpleReply,
} from "./nbd_protocol.ts";

/** What the server needs from an export. Offsets and lengths are already
 * checked against `sizeBytes` when these are called. */
export interface BlockDevice {
  readonly sizeBytes: number;
  /** Fills `target` with the bytes at `offset`. */
  read(offset: number, target: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void>;
  /** Makes the range read as zeros (TRIM and WRITE_ZEROES). */
  zero(offset: number, length: number, fua: boolean): Promise<void>;
  /** Resolves once every completed write is durable. */
  flush(): Promise<void>;
}

/** One export of the server. */
export interface ExportEntry {
  name: string;
  description?: string;
  device: BlockDevice;
}

/** The transmission flags of every export: writable, flush, FUA, trim and
 * write-zeroes. Multi-connection is safe because a flush on any connection
 * writes back the whole export. */
export const EXPORT_FLAGS = TransmissionFlag.HAS_FLAGS |
  TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA |
  TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES |
  TransmissionFlag.CAN_MULTI_CONN;

/** Requests served at once per connection; the reader waits beyond. */
const MAX_IN_FLIGHT = 64;
const READ_BUFFER_BYTES = 256 * 1024;

/** The stream ended where the protocol needs more bytes. */
class EndOfStream extends Error {
  constructor() {
    super("connection closed by the peer");
    this.name = "EndOfStream";
  }
}

/** Reads exact byte counts from a connection through one buffer. */
class ConnectionReader {
  readonly #conn: Deno.Conn;
  readonly #buffer = new Uint8Array(READ_BUFFER_BYTES);
  #start = 0;
  #end = 0;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** `count` bytes as a view that stays valid until the next call;
   * `count` must fit the buffer. Resolves null on a clean end of stream
   * before the first byte when `endOk` is set. */
  async view(count: number, endOk = false): Promise<Uint8Array | null> {
    if (this.#end - this.#start < count) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
      while (this.#end < count) {
        const got = await this.#conn.read(this.#buffer.subarray(this.#end));
        if (got === null) {
          if (endOk && this.#end === 0) return null;
          throw new EndOfStream();
        }
        this.#end += got;
      }
    }
    const view = this.#buffer.subarray(this.#start, this.#start + count);
    this.#start += count;
    return view;
  }

  /** Fills `target` completely. */
  async fill(target: Uint8Array): Promise<void> {
    const buffered = Math.min(this.#end - this.#start, target.length);
    target.set(this.#buffer.subarray(this.#start, this.#start + buffered));
    this.#start += buffered;
    let done = buffered;
    while (done < target.length) {
      const got = await this.#conn.read(target.subarray(done));
      if (got === null) throw new EndOfStream();
      done += got;
    }
  }

  /** Reads and drops `count` bytes. */
  async skip(count: number): Promise<void> {
    let left = count;
    while (left > 0) {
      const step = Math.min(left, READ_BUFFER_BYTES);
      await this.view(step);
      left -= step;
    }
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await conn.write(bytes.subarray(done));
}

/** Replies smaller than this are gathered into one write with the others
 * waiting; larger ones go out alone rather than being copied. */
const GATHER_BYTES = 64 * 1024;

/**
 * Sends replies whole and in turn. Replies that complete while a write is
 * in progress queue up and leave in one write, so that a deep queue of
 * small requests costs one system call per batch, not per reply.
 */
class ReplyWriter {
  readonly #conn: Deno.Conn;
  readonly #onError: (error: unknown) => void;
  #queue: { bytes: Uint8Array; done: PromiseWithResolvers<void> }[] = [];
  #writing: Promise<void> | null = null;
  broken = false;

  constructor(conn: Deno.Conn, onError: (error: unknown) => void) {
    this.#conn = conn;
    this.#onError = onError;
  }

  /** Resolves once the reply is written (or the connection is broken). */
  send(bytes: Uint8Array): Promise<void> {
    if (this.broken) return Promise.resolve();
    const done = Promise.withResolvers<void>();
    this.#queue.push({ bytes, done });
    this.#writing ??= this.#drain();
    return done.promise;
  }

  /** Resolves when every queued reply has been written. */
  async drained(): Promise<void> {
    while (this.#writing !== null) await this.#writing;
  }

  async #drain(): Promise<void> {
    // Starting a turn later lets replies completed in this turn join the
    // first batch, and keeps #writing set until after send() returns.
    await Promise.resolve();
    while (this.#queue.length > 0) {
      const batch = this.#takeBatch();
      try {
        if (!this.broken) {
          await writeAll(
            this.#conn,
            batch.length === 1 ? batch[0].bytes : concat(batch),
          );
        }
      } catch (error) {
        this.broken = true;
        this.#onError(error);
      }
      for (const item of batch) item.done.resolve();
    }
    this.#writing = null;
  }

  #takeBatch() {
    const first = this.#queue[0];
    if (first.bytes.length >= GATHER_BYTES) return this.#queue.splice(0, 1);
    let count = 1;
    let total = first.bytes.length;
    while (
      count < this.#queue.length &&
      total + this.#queue[count].bytes.length <= GATHER_BYTES * 4 &&
      this.#queue[count].bytes.length < GATHER_BYTES
    ) {
      total += this.#queue[count].bytes.length;
      count++;
    }
    return this.#queue.splice(0, count);
  }
}

function concat(batch: { bytes: Uint8Array }[]): Uint8Array {
  const total = batch.reduce((sum, item) => sum + item.bytes.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const item of batch) {
    out.set(item.bytes, at);
    at += item.bytes.length;
  }
  return out;
}

/** Maps a device failure to the NBD error to send. */
function errnoOf(error: unknown): number {
  if (error instanceof BlockRangeError) return Errno.EINVAL;
  if (error instanceof LeaseError) return Errno.EPERM;
  return Errno.EIO;
}

/** Serves a fixed set of exports to any number of connections. */
export class NbdServer {
  readonly #exports: Map<string, ExportEntry>;
  readonly #log: Logger;
  readonly #connections = new Set<Deno.Conn>();
  readonly #sessions = new Set<Promise<void>>();
  readonly #listeners = new Set<Deno.Listener>();
  #closing = false;

  constructor(exports: ExportEntry[], log: Logger) {
    this.#exports = new Map(exports.map((entry) => [entry.name, entry]));
    this.#log = log;
  }

  /** Accepts connections on `listener` until it closes. */
  async serve(listener: Deno.Listener): Promise<void> {
    this.#listeners.add(listener);
    try {
      for await (const conn of listener) {
        const session = this.handle(conn);
        this.#sessions.add(session);
        session.finally(() => this.#sessions.delete(session));
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    } finally {
      this.#listeners.delete(listener);
    }
  }

  /** Runs one connection to its end; never rejects. */
  async handle(conn: Deno.Conn): Promise<void> {
    this.#connections.add(conn);
    const reader = new ConnectionReader(conn);
    try {
      const chosen = await this.#handshake(conn, reader);
      if (chosen !== null) await this.#transmit(conn, reader, chosen);
    } catch (error) {
      const closedHere = this.#closing &&
        (error instanceof Deno.errors.Interrupted ||
          error instanceof Deno.errors.BadResource);
      if (error instanceof ProtocolError) {
        this.#log.info("connection-refused", { error });
      } else if (
        error instanceof Deno.errors.BrokenPipe ||
        error instanceof Deno.errors.ConnectionReset
      ) {
        this.#log.debug("connection-lost", { error });
      } else if (!(error instanceof EndOfStream) && !closedHere) {
        this.#log.warn("connection-dropped", { error });
      }
    } finally {
      this.#connections.delete(conn);
      try {
        conn.close();
      } catch {
        // Already closed by close() below.
      }
    }
  }

  /** Closes listeners and connections and waits for sessions to end. */
  async close(): Promise<void> {
    this.#closing = true;
    for (const listener of this.#listeners) listener.close();
    for (const conn of this.#connections) {
      try {
        conn.close();
      } catch {
        // The session closed it first.
      }
    }
    await Promise.allSettled([...this.#sessions]);
  }

  #lookup(name: string): ExportEntry | undefined {
    if (name === "" && this.#exports.size === 1) {
      return this.#exports.values().next().value;
    }
    return this.#exports.get(name);
  }

  /** Negotiates options; returns the export to serve, or null when the
   * client aborted. */
  async #handshake(
    conn: Deno.Conn,
    reader: ConnectionReader,
  ): Promise<ExportEntry | null> {
    await writeAll(conn, encodeGreeting());
    const clientFlagsBytes = (await reader.view(4))!;
    const clientFlags = new DataView(
      clientFlagsBytes.buffer,
      clientFlagsBytes.byteOffset,
      4,
    ).getUint32(0);
    const known = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;
    if ((clientFlags & ~known) !== 0) {
      throw new ProtocolError(
        `unknown client flags 0x${clientFlags.toString(16)}`,
      );
    }
    const noZeroes = (clientFlags & CLIENT_FLAG_NO_ZEROES) !== 0;

    for (;;) {
      const header = parseOptionHeader(
        (await reader.view(OPTION_HEADER_BYTES))!,
      );
      const { option, length } = header;
      const reply = (type: number, data?: Uint8Array) =>
        writeAll(conn, encodeOptionReply(option, type, data));
      if (length > MAX_OPTION_BYTES) {
        await reader.skip(length);
        if (option === Option.EXPORT_NAME) {
          throw new ProtocolError(`export name of ${length} bytes`);
        }
        await reply(Reply.ERR_TOO_BIG);
        continue;
      }
      const data = new Uint8Array(length);
      await reader.fill(data);

      switch (option) {
        case Option.EXPORT_NAME: {
          // This option has no error reply: an unknown name ends the
          // connection, as the protocol says.
          const entry = this.#lookup(parseExportName(data));
          if (entry === undefined) {
            throw new ProtocolError("EXPORT_NAME of an unknown export");
          }
          await writeAll(
            conn,
            encodeExportNameReply(
              entry.device.sizeBytes,
              EXPORT_FLAGS,
              noZeroes,
            ),
          );
          return entry;
        }
        case Option.ABORT:
          await reply(Reply.ACK);
          return null;
        case Option.LIST:
          if (length !== 0) {
            await reply(Reply.ERR_INVALID);
            continue;
          }
          for (const name of this.#exports.keys()) {
            await reply(Reply.SERVER, encodeServerReply(name));
          }
          await reply(Reply.ACK);
          continue;
        case Option.INFO:
        case Option.GO: {
          let request;
          try {
            request = parseInfoRequest(data);
          } catch (error) {
            if (!(error instanceof OptionError)) throw error;
            await reply(Reply.ERR_INVALID);
            continue;
          }
          const entry = this.#lookup(request.name);
          if (entry === undefined) {
            await reply(Reply.ERR_UNKNOWN);
            continue;
          }
          await reply(
            Reply.INFO,
            encodeInfoExport(entry.device.sizeBytes, EXPORT_FLAGS),
          );
          for (const item of new Set(request.items)) {
            if (item === Info.NAME) {
              await reply(Reply.INFO, encodeInfoText(Info.NAME, entry.name));
            } else if (item === Info.DESCRIPTION) {
              await reply(
                Reply.INFO,
                encodeInfoText(Info.DESCRIPTION, entry.description ?? ""),
              );
            } else if (item === Info.BLOCK_SIZE) {
              await reply(Reply.INFO, encodeInfoBlockSize());
            }
          }
          await reply(Reply.ACK);
          if (option === Option.GO) return entry;
          continue;
        }
        default:
          await reply(Reply.ERR_UNSUP);
      }
    }
  }

  async #transmit(
    conn: Deno.Conn,
    reader: ConnectionReader,
    entry: ExportEntry,
  ): Promise<void> {
    const device = entry.device;
    const limits = { sizeBytes: device.sizeBytes, readOnly: false };
    const inFlight = new Set<Promise<void>>();
    const replies = new ReplyWriter(conn, (error) => {
      this.#log.debug("reply-failed", { error });
    });
    const send = (bytes: Uint8Array) => replies.send(bytes);
    const replyError = (errno: number, cookie: bigint) => {
      const bytes = new Uint8Array(SIMPLE_REPLY_BYTES);
      writeSimpleReply(bytes, 0, errno, cookie);
      return send(bytes);
    };

    try {
      while (!replies.broken) {
        const header = await reader.view(REQUEST_HEADER_BYTES, true);
        if (header === null) break;
        const request = parseRequestHeader(header);
        let payload: Uint8Array | undefined;
        if (request.type === Command.WRITE) {
          if (request.length > MAX_PAYLOAD_BYTES) {
            await reader.skip(request.length);
            await replyError(Errno.EOVERFLOW, request.cookie);
            continue;
          }
          payload = new Uint8Array(request.length);
          await reader.fill(payload);
        }
        const errno = validateRequest(request, limits);
        if (errno !== Errno.OK) {
          this.#log.debug("request-refused", {
            type: request.type,
            offset: request.offset,
            length: request.length,
            errno,
          });
          await replyError(errno, request.cookie);
          continue;
        }
        if (request.type === Command.DISC) break;
        while (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight);
        const work = this.#execute(device, request, payload, send, replyError);
        inFlight.add(work);
        work.finally(() => inFlight.delete(work));
      }
    } finally {
      await Promise.allSettled([...inFlight]);
      await replies.drained();
    }
  }

  async #execute(
    device: BlockDevice,
    request: Request,
    payload: Uint8Array | undefined,
    send: (bytes: Uint8Array) => Promise<void>,
    replyError: (errno: number, cookie: bigint) => Promise<void>,
  ): Promise<void> {
    const offset = Number(request.offset);
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    try {
      switch (request.type) {
        case Command.READ: {
          const bytes = new Uint8Array(SIMPLE_REPLY_BYTES + request.length);
          await device.read(offset, bytes.subarray(SIMPLE_REPLY_BYTES));
          writeSimpleReply(bytes, 0, Errno.OK, request.cookie);
          await send(bytes);
          return;
        }
        case Command.WRITE:
          await device.write(offset, payload!, fua);
          break;
        case Command.FLUSH:
          await device.flush();
          break;
        case Command.TRIM:
        case Command.WRITE_ZEROES:
          await device.zero(offset, request.length, fua);
          break;
      }
      await replyError(Errno.OK, request.cookie);
    } catch (error) {
      const errno = errnoOf(error);
      this.#log.warn("request-failed", {
        type: request.type,
        offset,
        length: request.length,
        errno,
        error,
      });
      await replyError(errno, request.cookie);
    }
  }
}
