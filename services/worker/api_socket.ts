/**
 * How a grain's file descriptor 3 reaches the worker: one end of a unix
 * stream connection to a socket the worker listens on.
 *
 * Deno cannot hand a descriptor to a child, but a child inherits every
 * descriptor opened without close-on-exec. So, for each grain, the hub
 * opens a client socket through libc (no CLOEXEC), connects it to its own
 * listener, writes the grain's one-time token into it, spawns the
 * launcher, and closes its copy, all in one synchronous step: no other
 * child can be spawned in between, so only this grain's launcher holds
 * the socket, which it moves to fd 3. The listener side is an ordinary
 * Deno unix connection, so an idle grain costs no thread.
 *
 * Unix sockets also keep small RPC messages free of TCP's Nagle delays.
 *
 * @module
 */

import { LIBC_PATH } from "./kernel_files.ts";

const TOKEN_BYTES = 16;
const TOKEN_LINE_BYTES = TOKEN_BYTES * 2 + 1;

const AF_UNIX = 1;
const SOCK_STREAM = 1;

const libcSymbols = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let libc: Deno.DynamicLibrary<typeof libcSymbols> | undefined;

function openLibc(): Deno.DynamicLibrary<typeof libcSymbols>["symbols"] {
  libc ??= Deno.dlopen(LIBC_PATH, libcSymbols);
  return libc.symbols;
}

/** A struct sockaddr_un for `path`. */
function unixAddress(path: string): Uint8Array {
  const bytes = new TextEncoder().encode(path);
  if (bytes.length >= 108) {
    throw new RangeError(`socket path ${path} is longer than 107 bytes`);
  }
  const address = new Uint8Array(2 + 108);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(bytes, 2);
  return address;
}

/** Accepts grain connections on a unix socket and routes them by token. */
export class ApiSocketHub {
  #listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  #path: string;
  #waiting = new Map<string, PromiseWithResolvers<Deno.UnixConn>>();
  #closed = false;
  readonly accepting: Promise<void>;

  private constructor(path: string) {
    this.#path = path;
    this.#listener = Deno.listen({ transport: "unix", path });
    Deno.chmodSync(path, 0o600);
    this.accepting = this.#acceptLoop();
  }

  /** Listens on `path` (replacing a stale socket left there). */
  static open(path: string): ApiSocketHub {
    try {
      Deno.removeSync(path);
    } catch { /* none left */ }
    return new ApiSocketHub(path);
  }

  /**
   * Opens the grain's end of a new connection and calls `spawn` with its
   * descriptor number and token, synchronously; the descriptor is closed
   * in this process when `spawn` returns. `spawn` must start the child
   * right away (Deno.Command.spawn). Resolves with the worker's end.
   */
  connectChild<T>(
    spawn: (fd: number, token: string) => T,
  ): { child: T; connection: Promise<Deno.UnixConn>; token: string } {
    const bytes = crypto.getRandomValues(new Uint8Array(TOKEN_BYTES));
    const token = [...bytes].map((b) => b.toString(16).padStart(2, "0"))
      .join("");
    const waiter = Promise.withResolvers<Deno.UnixConn>();
    waiter.promise.catch(() => {});
    this.#waiting.set(token, waiter);

    const c = openLibc();
    const fd = c.socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) throw new Error("socket(AF_UNIX) failed");
    try {
      const address = unixAddress(this.#path);
      if (c.connect(fd, address, address.length) !== 0) {
        throw new Error(`connect to ${this.#path} failed`);
      }
      const line = new TextEncoder().encode(`${token}\n`);
      if (Number(c.write(fd, line, BigInt(line.length))) !== line.length) {
        throw new Error("writing the grain token failed");
      }
      return { child: spawn(fd, token), connection: waiter.promise, token };
    } catch (error) {
      this.#waiting.delete(token);
      throw error;
    } finally {
      c.close(fd);
    }
  }

  /** Stops waiting for a token; its promise rejects with `reason`. */
  forget(token: string, reason: Error): void {
    this.#waiting.get(token)?.reject(reason);
    this.#waiting.delete(token);
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.UnixConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return;
      }
      this.#admit(conn).catch(() => {
        try {
          conn.close();
        } catch { /* already closed */ }
      });
    }
  }

  async #admit(conn: Deno.UnixConn): Promise<void> {
    // Read exactly the token line, so that nothing the app sends after it
    // is consumed here.
    const line = new Uint8Array(TOKEN_LINE_BYTES);
    let filled = 0;
    const deadline = setTimeout(() => conn.close(), 5_000);
    try {
      while (filled < line.length) {
        const n = await conn.read(line.subarray(filled));
        if (n === null) throw new Error("closed before its token");
        filled += n;
      }
    } finally {
      clearTimeout(deadline);
    }
    const token = new TextDecoder().decode(line.subarray(0, -1));
    const waiter = this.#waiting.get(token);
    if (line[line.length - 1] !== 0x0a || waiter === undefined) {
      throw new Error("unknown grain token");
    }
    this.#waiting.delete(token);
    waiter.resolve(conn);
  }

  close(): void {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    try {
      Deno.removeSync(this.#path);
    } catch { /* already gone */ }
    for (const waiter of this.#waiting.values()) {
      waiter.reject(new Error("worker is shutting down"));
    }
    this.#waiting.clear();
  }
}
