/**
 * The stream transport over a file descriptor this process inherited, such
 * as the socket a grain's supervisor passes on fd 3. Deno cannot wrap an
 * arbitrary fd as a connection, so this calls libc's read(2), write(2) and
 * shutdown(2) through FFI (`nonblocking` calls run on Deno's thread pool);
 * it needs `--allow-ffi` for libc's absolute path ({@link libcPath} gives
 * it to whoever builds the command line). Messages use the same framing as
 * TCP.
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

/**
 * Where Debian-style (multiarch) and other common layouts keep libc. A
 * bare "libc.so.6" is not usable: under a scoped `--allow-ffi=PATH` Deno
 * resolves a bare name against the working directory and refuses it.
 */
export const LIBC_CANDIDATES: readonly string[] = [
  "/lib/x86_64-linux-gnu/libc.so.6",
  "/usr/lib/x86_64-linux-gnu/libc.so.6",
  "/lib/aarch64-linux-gnu/libc.so.6",
  "/usr/lib/aarch64-linux-gnu/libc.so.6",
  "/lib64/libc.so.6",
  "/usr/lib64/libc.so.6",
];

let resolvedLibc: string | undefined;

/**
 * The absolute path of this machine's libc, for a role's or grain's
 * `--allow-ffi=PATH` (the process that calls {@link openFd} opens the
 * same file). Resolved once: the first of {@link LIBC_CANDIDATES} that
 * exists, else what `ldconfig -p` names for libc.so.6. Needs read
 * permission for those paths (and `--allow-run=ldconfig` for the
 * fallback); throws if no libc is found.
 *
 * @example
 * ```ts
 * import { libcPath } from "./fd_stream.ts";
 * const flag = `--allow-ffi=${libcPath()}`;
 * console.assert(flag.includes("libc.so.6"));
 * ```
 */
export function libcPath(): string {
  if (resolvedLibc !== undefined) return resolvedLibc;
  for (const candidate of LIBC_CANDIDATES) {
    try {
      if (Deno.statSync(candidate).isFile) return resolvedLibc = candidate;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  const listed = fromLdconfig();
  if (listed === undefined) {
    throw new Error(
      `libc.so.6 is in none of ${LIBC_CANDIDATES.join(", ")} ` +
        "and ldconfig -p does not list it",
    );
  }
  return resolvedLibc = listed;
}

/** The 64-bit libc.so.6 that `ldconfig -p` lists, if any. */
function fromLdconfig(): string | undefined {
  let output: Deno.CommandOutput;
  try {
    output = new Deno.Command("ldconfig", { args: ["-p"] }).outputSync();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
  if (!output.success) return undefined;
  const lines = new TextDecoder().decode(output.stdout).split("\n");
  const found = lines
    .map((line) => /^\s*libc\.so\.6 \(([^)]*)\) => (\/\S+)$/.exec(line))
    .filter((match) => match !== null);
  const wide = found.find((match) => /64/.test(match[1])) ?? found[0];
  return wide?.[2];
}

let libc: Deno.DynamicLibrary<typeof libcSymbols> | undefined;

/**
 * Opens libc by absolute path. A process with scoped permissions may be
 * allowed only one of several names for the same file (e.g. the /lib or
 * the /usr/lib alias) and may not read the filesystem to find out which,
 * so each candidate is tried until one opens.
 */
function openLibc(): Deno.DynamicLibrary<typeof libcSymbols>["symbols"] {
  if (libc !== undefined) return libc.symbols;
  const failures: string[] = [];
  for (const candidate of LIBC_CANDIDATES) {
    try {
      libc = Deno.dlopen(candidate, libcSymbols);
      return libc.symbols;
    } catch (error) {
      failures.push(`${candidate}: ${(error as Error).message}`);
    }
  }
  let path: string;
  try {
    path = libcPath();
  } catch (error) {
    failures.push(`finding libc: ${(error as Error).message}`);
    throw new Error(`cannot open libc:\n${failures.join("\n")}`);
  }
  try {
    libc = Deno.dlopen(path, libcSymbols);
  } catch (error) {
    failures.push(`${path}: ${(error as Error).message}`);
    throw new Error(`cannot open libc:\n${failures.join("\n")}`);
  }
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
