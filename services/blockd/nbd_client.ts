/**
 * A small sequential NBD client over a unix socket: fixed newstyle
 * handshake with NBD_OPT_GO, then one request at a time with simple
 * replies. Used to flush an export on detach and by tests that need to
 * send requests real clients refuse to send (past the end, bad flags).
 *
 * @module
 */
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  Command,
  IHAVEOPT,
  NBD_MAGIC,
  Option,
  OPTION_REPLY_MAGIC,
  Reply,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
} from "./nbd_protocol.ts";

/** The server said or did something a client cannot accept. */
export class NbdClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NbdClientError";
  }
}

/** A reply to one request: its NBD error (0 for success) and read data. */
export interface ClientReply {
  errno: number;
  data: Uint8Array;
}

/** See the module documentation. */
export class NbdClient {
  readonly conn: Deno.Conn;
  readonly sizeBytes: number;
  readonly flags: number;
  #cookie = 1n;

  private constructor(conn: Deno.Conn, sizeBytes: number, flags: number) {
    this.conn = conn;
    this.sizeBytes = sizeBytes;
    this.flags = flags;
  }

  /** Connects to `socketPath` and selects `exportName` with NBD_OPT_GO. */
  static async connect(
    socketPath: string,
    exportName: string,
  ): Promise<NbdClient> {
    const conn = await Deno.connect({ transport: "unix", path: socketPath });
    try {
      const greeting = await readExact(conn, 18);
      const view = new DataView(greeting.buffer);
      if (
        view.getBigUint64(0) !== NBD_MAGIC || view.getBigUint64(8) !== IHAVEOPT
      ) {
        throw new NbdClientError("server greeting is not fixed newstyle");
      }
      await writeAll(
        conn,
        u32(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES),
      );
      const name = new TextEncoder().encode(exportName);
      const data = new Uint8Array(6 + name.length);
      new DataView(data.buffer).setUint32(0, name.length);
      data.set(name, 4);
      await sendOption(conn, Option.GO, data);
      let size: number | undefined;
      let flags = 0;
      for (;;) {
        const reply = await readOptionReply(conn);
        if (reply.type === Reply.ACK) break;
        if (reply.type !== Reply.INFO) {
          throw new NbdClientError(
            `NBD_OPT_GO refused with reply 0x${reply.type.toString(16)}`,
          );
        }
        const info = new DataView(reply.data.buffer);
        if (reply.data.length >= 12 && info.getUint16(0) === 0) {
          size = Number(info.getBigUint64(2));
          flags = info.getUint16(10);
        }
      }
      if (size === undefined) {
        throw new NbdClientError("server sent no NBD_INFO_EXPORT");
      }
      return new NbdClient(conn, size, flags);
    } catch (error) {
      conn.close();
      throw error;
    }
  }

  /** Sends one request and waits for its simple reply; `replyBytes` is how
   * much data a successful reply carries (the read length). */
  async request(
    type: number,
    offset: bigint,
    length: number,
    options: { flags?: number; payload?: Uint8Array; replyBytes?: number } = {},
  ): Promise<ClientReply> {
    const cookie = this.#cookie++;
    const header = new Uint8Array(28 + (options.payload?.length ?? 0));
    const view = new DataView(header.buffer);
    view.setUint32(0, REQUEST_MAGIC);
    view.setUint16(4, options.flags ?? 0);
    view.setUint16(6, type);
    view.setBigUint64(8, cookie);
    view.setBigUint64(16, offset);
    view.setUint32(24, length);
    if (options.payload) header.set(options.payload, 28);
    await writeAll(this.conn, header);
    const reply = await readExact(this.conn, 16);
    const replyView = new DataView(reply.buffer);
    if (replyView.getUint32(0) !== SIMPLE_REPLY_MAGIC) {
      throw new NbdClientError("reply without the simple reply magic");
    }
    if (replyView.getBigUint64(8) !== cookie) {
      throw new NbdClientError("reply for another request");
    }
    const errno = replyView.getUint32(4);
    const data = errno === 0 && (options.replyBytes ?? 0) > 0
      ? await readExact(this.conn, options.replyBytes!)
      : new Uint8Array(0);
    return { errno, data };
  }

  read(offset: number, length: number): Promise<ClientReply> {
    return this.request(Command.READ, BigInt(offset), length, {
      replyBytes: length,
    });
  }

  write(offset: number, data: Uint8Array, flags = 0): Promise<ClientReply> {
    return this.request(Command.WRITE, BigInt(offset), data.length, {
      payload: data,
      flags,
    });
  }

  flush(): Promise<ClientReply> {
    return this.request(Command.FLUSH, 0n, 0);
  }

  /** Sends NBD_CMD_DISC and closes the socket. */
  async disconnect(): Promise<void> {
    const header = new Uint8Array(28);
    const view = new DataView(header.buffer);
    view.setUint32(0, REQUEST_MAGIC);
    view.setUint16(6, Command.DISC);
    try {
      await writeAll(this.conn, header);
    } finally {
      this.conn.close();
    }
  }
}

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value);
  return bytes;
}

/** Sends one option with its payload. */
export async function sendOption(
  conn: Deno.Conn,
  option: number,
  data: Uint8Array,
): Promise<void> {
  const bytes = new Uint8Array(16 + data.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, IHAVEOPT);
  view.setUint32(8, option);
  view.setUint32(12, data.length);
  bytes.set(data, 16);
  await writeAll(conn, bytes);
}

/** Reads one option reply. */
export async function readOptionReply(
  conn: Deno.Conn,
): Promise<{ option: number; type: number; data: Uint8Array }> {
  const header = await readExact(conn, 20);
  const view = new DataView(header.buffer);
  if (view.getBigUint64(0) !== OPTION_REPLY_MAGIC) {
    throw new NbdClientError("option reply without its magic");
  }
  const length = view.getUint32(16);
  return {
    option: view.getUint32(8),
    type: view.getUint32(12),
    data: await readExact(conn, length),
  };
}

/** Reads exactly `count` bytes or throws at the end of the stream. */
export async function readExact(
  conn: Deno.Conn,
  count: number,
): Promise<Uint8Array> {
  const bytes = new Uint8Array(count);
  let done = 0;
  while (done < count) {
    const got = await conn.read(bytes.subarray(done));
    if (got === null) {
      throw new NbdClientError(`stream ended after ${done} of ${count} bytes`);
    }
    done += got;
  }
  return bytes;
}

/** Writes all of `bytes`. */
export async function writeAll(
  conn: Deno.Conn,
  bytes: Uint8Array,
): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await conn.write(bytes.subarray(done));
}
