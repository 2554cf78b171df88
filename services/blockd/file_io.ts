/**
 * Positional reads and writes on a Deno file. Deno has no pread/pwrite, so
 * each is a seek followed by a read or write; both are synchronous, which
 * makes the pair atomic with respect to everything else on the event loop.
 * On a warm page cache a synchronous call costs a few microseconds, far
 * less than a trip through Deno's blocking thread pool.
 *
 * @module
 */

/** Fills `target` from `position`; bytes past the end of the file read as
 * zeros (a sparse cache file may be shorter than the volume). */
export function readAt(
  file: Deno.FsFile,
  target: Uint8Array,
  position: number,
): void {
  file.seekSync(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < target.length) {
    const got = file.readSync(target.subarray(done));
    if (got === null || got === 0) {
      target.fill(0, done);
      return;
    }
    done += got;
  }
}

/** Writes all of `source` at `position`. */
export function writeAt(
  file: Deno.FsFile,
  source: Uint8Array,
  position: number,
): void {
  file.seekSync(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < source.length) {
    done += file.writeSync(source.subarray(done));
  }
}

/** Writes a small file so that a crash leaves either the old or the new
 * contents: a temporary file, fsynced, renamed over the old one, and the
 * directory fsynced. */
export async function writeFileDurably(
  path: string,
  data: Uint8Array,
): Promise<void> {
  const temporary = `${path}.tmp`;
  const file = await Deno.open(temporary, {
    write: true,
    create: true,
    truncate: true,
  });
  try {
    writeAt(file, data, 0);
    await file.sync();
  } finally {
    file.close();
  }
  await Deno.rename(temporary, path);
  await syncDirectory(path.slice(0, path.lastIndexOf("/")) || "/");
}

/** Makes a directory's entries (a rename, a new file) durable. */
export async function syncDirectory(path: string): Promise<void> {
  const directory = await Deno.open(path, { read: true });
  try {
    await directory.sync();
  } finally {
    directory.close();
  }
}

/** Reads a whole file, or returns null if it does not exist. */
export async function readFileIfExists(
  path: string,
): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}
