/**
 * Reading and writing the kernel's control files (cgroup files under
 * /sys/fs/cgroup) through libc. Deno refuses every path under /sys and
 * /proc unless a process runs with --allow-all, which no role may; the
 * worker's one FFI permission (libc) covers these few small calls.
 *
 * @module
 */

const symbols = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  mkdir: { parameters: ["buffer", "u32"], result: "i32" },
  rmdir: { parameters: ["buffer"], result: "i32" },
  access: { parameters: ["buffer", "i32"], result: "i32" },
  mount: {
    parameters: ["buffer", "buffer", "buffer", "u64", "buffer"],
    result: "i32",
  },
  umount2: { parameters: ["buffer", "i32"], result: "i32" },
  kill: { parameters: ["i32", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** libc by absolute path: with a scoped --allow-ffi, Deno resolves a bare
 * library name against the working directory. */
export const LIBC_PATH = "/lib/x86_64-linux-gnu/libc.so.6";

let libc: Deno.DynamicLibrary<typeof symbols> | undefined;

function c(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  libc ??= Deno.dlopen(LIBC_PATH, symbols);
  return libc.symbols;
}

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CLOEXEC = 0o2000000;
/** A failed call. errno is not read (Deno allows reading raw memory only
 * with unscoped --allow-ffi); whether the path exists tells the one case
 * callers handle apart. */
export class KernelFileError extends Error {
  constructor(readonly notFound: boolean, what: string, path: string) {
    super(`${what} ${path} failed${notFound ? ": no such file" : ""}`);
    this.name = "KernelFileError";
  }
}

function failure(what: string, path: string): KernelFileError {
  return new KernelFileError(!kernelFileExists(path), what, path);
}

function cString(path: string): Uint8Array {
  return new TextEncoder().encode(`${path}\0`);
}

/** The file's whole content (these files are small). */
export function readKernelFile(path: string): string {
  const fd = c().open(cString(path), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) throw failure("open", path);
  try {
    const chunks: Uint8Array[] = [];
    for (;;) {
      const buffer = new Uint8Array(65536);
      const n = Number(c().read(fd, buffer, BigInt(buffer.length)));
      if (n < 0) throw failure("read", path);
      if (n === 0) break;
      chunks.push(buffer.subarray(0, n));
    }
    const decoder = new TextDecoder();
    return chunks.map((chunk) => decoder.decode(chunk)).join("");
  } finally {
    c().close(fd);
  }
}

/** Writes `text` in one write(2), as control files expect. */
export function writeKernelFile(path: string, text: string): void {
  const fd = c().open(cString(path), O_WRONLY | O_CLOEXEC, 0);
  if (fd < 0) throw failure("open", path);
  try {
    const bytes = new TextEncoder().encode(text);
    const n = Number(c().write(fd, bytes, BigInt(bytes.length)));
    if (n !== bytes.length) throw failure("write", path);
  } finally {
    c().close(fd);
  }
}

/** Whether the path exists (and is reachable). */
export function kernelFileExists(path: string): boolean {
  return c().access(cString(path), 0) === 0;
}

/** Makes a directory (a new cgroup); an existing one is fine. */
export function makeKernelDirectory(path: string): void {
  if (c().mkdir(cString(path), 0o755) === 0 || kernelFileExists(path)) return;
  throw new KernelFileError(true, "mkdir", path);
}

/** Removes an empty directory (a cgroup); a missing one is fine. */
export function removeKernelDirectory(path: string): void {
  if (c().rmdir(cString(path)) === 0 || !kernelFileExists(path)) return;
  throw new KernelFileError(false, "rmdir", path);
}

const MS_BIND = 4096n;
const MS_SHARED = 1n << 20n;
const MNT_DETACH = 2;

/** Bind-mounts `source` on `target` (both directories). */
export function bindMount(source: string, target: string): void {
  const none = cString("none");
  if (
    c().mount(cString(source), cString(target), none, MS_BIND, null) !== 0
  ) {
    throw new KernelFileError(false, `bind mount of ${source} on`, target);
  }
}

/** Makes the mount at `target` shared, so that mounts made on it later
 * also appear in its bind-mounted copies (a sandbox's /var). */
export function makeShared(target: string): void {
  const none = cString("none");
  if (c().mount(none, cString(target), none, MS_SHARED, null) !== 0) {
    throw new KernelFileError(false, "making shared", target);
  }
}

/** Detaches the mount at `target`; false when nothing was mounted. */
export function detachMount(target: string): boolean {
  return c().umount2(cString(target), MNT_DETACH) === 0;
}

/** SIGKILL to a pid. Deno.kill needs an unscoped --allow-run, which the
 * worker does not have; its processes' pids come from its own cgroups. */
export function killProcess(pid: number): boolean {
  return c().kill(pid, 9) === 0;
}
