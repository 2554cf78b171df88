/**
 * The stream transport over a file descriptor this process inherited, such
 * as the socket a grain's supervisor passes on fd 3. Deno cannot wrap an
 * arbitrary fd as a connection, so this calls libc's read(2), write(2) and
 * shutdown(2) through FFI (`nonblocking` calls run on Deno's thread pool);
 * it needs `--allow-ffi`. Messages use the same framing as TCP.
 *
 * @module
 */

import {
  type ByteStream,
  StreamConnection,
  type StreamOptions,
} from "./stream.ts";

const libcSymbols = {
  read: {
    parameters: ["i32", "buffer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  write: {
    parameters: ["i32", "buffer", "usize"],
    result: "isize",
    nonblocking: true,
  },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let libc: Deno.DynamicLibrary<typeof libcSymbols> | undefined;

function openLibc(): Deno.DynamicLibrary<typeof libcSymbols>["symbols"] {
  libc ??= Deno.dlopen("libc.so.6", libcSymbols);
  return libc.symbols;
}

const SHUT_RDWR = 2;

/** A byte stream on a raw file descriptor. */
class FdStream implements ByteStream {
  #closed = false;

  constructor(readonly fd: number) {}

  async read(buffer: Uint8Array): Promise<number | null> {
    if (this.#closed) return null;
    const count = Number(
      await openLibc().read(this.fd, buffer, BigInt(buffer.length)),
    );
    if (count === 0 || this.#closed) return null;
    if (count < 0) throw new Error(`read(2) on fd ${this.fd} failed`);
    return count;
  }

  async write(bytes: Uint8Array): Promise<number> {
    if (this.#closed) throw new Error(`fd ${this.fd} is closed`);
    const count = Number(
      await openLibc().write(this.fd, bytes, BigInt(bytes.length)),
    );
    if (count < 0) throw new Error(`write(2) on fd ${this.fd} failed`);
    return count;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // shutdown wakes a read blocked on the thread pool; close alone would
    // leave it waiting.
    openLibc().shutdown(this.fd, SHUT_RDWR);
    openLibc().close(this.fd);
  }
}

/**
 * A stream connection on an inherited socket, e.g. `openFd(3)` in a grain.
 *
 * @example
 * ```ts ignore
 * import { openFd, RpcConnection } from "./mod.ts";
 * const connection = new RpcConnection(openFd(3));
 * ```
 */
export function openFd(fd: number, options?: StreamOptions): StreamConnection {
  if (!Number.isInteger(fd) || fd < 0) {
    throw new RangeError(`fd must be a non-negative integer, got ${fd}`);
  }
  return new StreamConnection(new FdStream(fd), options);
}
