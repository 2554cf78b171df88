/**
 * The one module that opens Blackrock's C shims (ffi/build/libblackrock.so)
 * and wraps each symbol in a typed function that checks its inputs first.
 *
 * A process that imports this needs `--allow-ffi` for the library's path
 * (see {@link libraryPath}). Lengths cross as u32: the measured call cost
 * with u64 arguments is several times higher.
 *
 * @module
 */

/** Size of an XChaCha20-Poly1305 key. */
export const KEY_BYTES = 32;
/** Size of an XChaCha20-Poly1305 nonce. */
export const NONCE_BYTES = 24;
/** Size of the Poly1305 tag that follows each sealed message. */
export const TAG_BYTES = 16;
/** u32 words per packet in a batch descriptor. */
export const DESCRIPTOR_WORDS = 4;

/** Why one packet of a batch failed, as the shim reports it. */
export enum PacketStatus {
  Ok = 0,
  /** The packet (with its tag) does not fit in the buffer. */
  BadBounds = 1,
  /** The key index is past the end of the key array. */
  BadKey = 2,
  /** The tag did not verify: forged, corrupt or wrong key. */
  BadTag = 3,
}

/** Where the shim library is, resolved from this file. */
export const libraryPath = new URL("./build/libblackrock.so", import.meta.url)
  .pathname;

const symbols = {
  br_init: { parameters: [], result: "i32" },
  br_seal_batch: {
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "buffer",
      "u32",
      "buffer",
    ],
    result: "i32",
  },
  br_open_batch: {
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "buffer",
      "u32",
      "buffer",
    ],
    result: "i32",
  },
  br_seal_batch_async: {
    name: "br_seal_batch",
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "buffer",
      "u32",
      "buffer",
    ],
    result: "i32",
    nonblocking: true,
  },
  br_open_batch_async: {
    name: "br_open_batch",
    parameters: [
      "buffer",
      "u32",
      "buffer",
      "u32",
      "buffer",
      "buffer",
      "u32",
      "buffer",
    ],
    result: "i32",
    nonblocking: true,
  },
  br_x25519: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  br_ed25519_pk_to_x25519: { parameters: ["buffer", "buffer"], result: "i32" },
  br_ed25519_seed_to_x25519: {
    parameters: ["buffer", "buffer"],
    result: "i32",
  },
  br_punch_blocks: { parameters: ["buffer", "u32", "u32"], result: "i32" },
  br_file_open: { parameters: ["buffer", "i32"], result: "i32" },
  br_file_close: { parameters: ["i32"], result: "i32" },
  br_pread: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  br_pwrite: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  br_pread_async: {
    name: "br_pread",
    parameters: ["i32", "buffer", "u32", "u64"],
    result: "i32",
    nonblocking: true,
  },
  br_pwrite_async: {
    name: "br_pwrite",
    parameters: ["i32", "buffer", "u32", "u64"],
    result: "i32",
    nonblocking: true,
  },
  br_udp_open: { parameters: ["u32", "u32", "u32", "u32"], result: "i32" },
  br_udp_local_port: { parameters: ["i32"], result: "i32" },
  br_udp_find: { parameters: ["u32", "u32"], result: "i32" },
  br_udp_tune: { parameters: ["i32", "u32", "u32"], result: "i32" },
  br_udp_close: { parameters: ["i32"], result: "i32" },
  br_udp_send_batch: {
    parameters: ["i32", "buffer", "u32", "buffer", "u32"],
    result: "i32",
  },
  br_udp_recv_batch: {
    parameters: ["i32", "buffer", "u32", "u32", "u32", "buffer", "i32"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols> | undefined;

/** Opens the library on first use, so importing this module costs nothing. */
function native(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  if (library === undefined) {
    try {
      library = Deno.dlopen(libraryPath, symbols);
    } catch (error) {
      throw new Error(
        `cannot open ${libraryPath} (run \`deno task setup\`): ${error}`,
      );
    }
    if (library.symbols.br_init() !== 0) {
      throw new Error("libsodium failed to initialize");
    }
  }
  return library.symbols;
}

/** A batch of packets laid out in one buffer, sealed or opened in place. */
export interface PacketBatch {
  /** Holds every packet; each needs TAG_BYTES of room after its message. */
  buffer: Uint8Array;
  /** DESCRIPTOR_WORDS words per packet: offset, adLength, messageLength,
   * keyIndex (see ffi/blackrock.h). */
  descriptors: Uint32Array;
  /** NONCE_BYTES per packet. */
  nonces: Uint8Array;
  /** KEY_BYTES per key. */
  keys: Uint8Array;
  /** How many packets of the descriptor array to process. */
  count: number;
  /** One status byte per packet, written by the call. */
  status: Uint8Array;
}

function checkBatch(batch: PacketBatch): void {
  const { buffer, descriptors, nonces, keys, count, status } = batch;
  if (!Number.isInteger(count) || count < 0) {
    throw new RangeError(`batch count must be a whole number, got ${count}`);
  }
  if (descriptors.length < count * DESCRIPTOR_WORDS) {
    throw new RangeError(
      `descriptors hold ${descriptors.length} words, ${count} packets need ${
        count * DESCRIPTOR_WORDS
      }`,
    );
  }
  if (nonces.length < count * NONCE_BYTES) {
    throw new RangeError(
      `nonces hold ${nonces.length} bytes, ${count} packets need ${
        count * NONCE_BYTES
      }`,
    );
  }
  if (keys.length === 0 || keys.length % KEY_BYTES !== 0) {
    throw new RangeError(
      `keys must be a non-empty multiple of ${KEY_BYTES} bytes, got ${keys.length}`,
    );
  }
  if (status.length < count) {
    throw new RangeError(
      `status holds ${status.length} bytes, ${count} packets need ${count}`,
    );
  }
  if (buffer.length > 0xffffffff) {
    throw new RangeError(`buffer of ${buffer.length} bytes is over 4 GiB`);
  }
}

/**
 * Seals every packet of the batch in place: the message is encrypted, the
 * tag written after it. Returns how many packets failed; their status says
 * why (only bounds and key index can fail when sealing).
 */
export function sealBatch(batch: PacketBatch): number {
  checkBatch(batch);
  return native().br_seal_batch(
    batch.buffer,
    batch.buffer.length,
    batch.descriptors,
    batch.count,
    batch.nonces,
    batch.keys,
    batch.keys.length / KEY_BYTES,
    batch.status,
  );
}

/**
 * Opens every packet of the batch in place. A packet whose tag does not
 * verify gets PacketStatus.BadTag and its message bytes are zeroed:
 * libsodium (1.0.18 and later) wipes its output when the tag fails, and
 * here the output is the message itself, so neither plaintext nor the
 * ciphertext remains (copy the packet first to keep it). The other
 * packets of the batch open as usual.
 */
export function openBatch(batch: PacketBatch): number {
  checkBatch(batch);
  return native().br_open_batch(
    batch.buffer,
    batch.buffer.length,
    batch.descriptors,
    batch.count,
    batch.nonces,
    batch.keys,
    batch.keys.length / KEY_BYTES,
    batch.status,
  );
}

/**
 * {@link sealBatch} on a thread of the runtime's pool, so sealing a large
 * buffer (a storage chunk) overlaps with I/O instead of blocking the event
 * loop. A call costs tens of microseconds more: worth it for megabytes,
 * not for packets. The caller must not touch the batch's arrays until the
 * promise settles.
 */
export function sealBatchAsync(batch: PacketBatch): Promise<number> {
  checkBatch(batch);
  return native().br_seal_batch_async(
    batch.buffer,
    batch.buffer.length,
    batch.descriptors,
    batch.count,
    batch.nonces,
    batch.keys,
    batch.keys.length / KEY_BYTES,
    batch.status,
  );
}

/** {@link openBatch} on the runtime's thread pool; see
 * {@link sealBatchAsync}. */
export function openBatchAsync(batch: PacketBatch): Promise<number> {
  checkBatch(batch);
  return native().br_open_batch_async(
    batch.buffer,
    batch.buffer.length,
    batch.descriptors,
    batch.count,
    batch.nonces,
    batch.keys,
    batch.keys.length / KEY_BYTES,
    batch.status,
  );
}

/** Thrown when a sealed message fails to open: forged, corrupt, wrong key
 * or truncated. Never carries the plaintext or the key. */
export class SealError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SealError";
  }
}

function checkLength(name: string, value: Uint8Array, expected: number) {
  if (value.length !== expected) {
    throw new RangeError(
      `${name} must be ${expected} bytes, got ${value.length}`,
    );
  }
}

/** Seals one message with associated data; returns ciphertext || tag. */
export function seal(
  key: Uint8Array,
  nonce: Uint8Array,
  message: Uint8Array,
  associatedData: Uint8Array = new Uint8Array(0),
): Uint8Array {
  checkLength("key", key, KEY_BYTES);
  checkLength("nonce", nonce, NONCE_BYTES);
  const adLength = associatedData.length;
  const buffer = new Uint8Array(adLength + message.length + TAG_BYTES);
  buffer.set(associatedData, 0);
  buffer.set(message, adLength);
  const status = new Uint8Array(1);
  const failed = sealBatch({
    buffer,
    descriptors: new Uint32Array([0, adLength, message.length, 0]),
    nonces: nonce,
    keys: key,
    count: 1,
    status,
  });
  if (failed !== 0) throw new Error(`seal failed with status ${status[0]}`);
  return buffer.subarray(adLength);
}

/** Opens ciphertext || tag made by {@link seal}; throws SealError if it
 * does not verify, returning no bytes of it. `sealed` is never changed:
 * it is opened in a copy (which libsodium zeroes on failure). */
export function open(
  key: Uint8Array,
  nonce: Uint8Array,
  sealed: Uint8Array,
  associatedData: Uint8Array = new Uint8Array(0),
): Uint8Array {
  checkLength("key", key, KEY_BYTES);
  checkLength("nonce", nonce, NONCE_BYTES);
  if (sealed.length < TAG_BYTES) {
    throw new SealError(
      `sealed message of ${sealed.length} bytes is shorter than its ${TAG_BYTES}-byte tag`,
    );
  }
  const adLength = associatedData.length;
  const messageLength = sealed.length - TAG_BYTES;
  const buffer = new Uint8Array(adLength + sealed.length);
  buffer.set(associatedData, 0);
  buffer.set(sealed, adLength);
  const status = new Uint8Array(1);
  openBatch({
    buffer,
    descriptors: new Uint32Array([0, adLength, messageLength, 0]),
    nonces: nonce,
    keys: key,
    count: 1,
    status,
  });
  if (status[0] !== PacketStatus.Ok) {
    throw new SealError("sealed message failed authentication");
  }
  return buffer.subarray(adLength, adLength + messageLength);
}

/** x25519(secret, publicKey). Throws for a low-order public key, which
 * would give an all-zero shared secret. */
export function x25519(secret: Uint8Array, publicKey: Uint8Array): Uint8Array {
  checkLength("x25519 secret", secret, 32);
  checkLength("x25519 public key", publicKey, 32);
  const shared = new Uint8Array(32);
  if (native().br_x25519(shared, secret, publicKey) !== 0) {
    throw new RangeError("x25519 public key is of low order");
  }
  return shared;
}

/** Maps an ed25519 public key to its x25519 (Montgomery) form. Throws if
 * the bytes are not a valid ed25519 point. */
export function ed25519PublicToX25519(edPublicKey: Uint8Array): Uint8Array {
  checkLength("ed25519 public key", edPublicKey, 32);
  const out = new Uint8Array(32);
  if (native().br_ed25519_pk_to_x25519(out, edPublicKey) !== 0) {
    throw new RangeError("bytes are not a valid ed25519 public key");
  }
  return out;
}

/** Maps an ed25519 secret seed to the matching x25519 secret scalar. */
export function ed25519SeedToX25519(seed: Uint8Array): Uint8Array {
  checkLength("ed25519 seed", seed, 32);
  const out = new Uint8Array(32);
  native().br_ed25519_seed_to_x25519(out, seed);
  return out;
}

/**
 * Frees the space behind `blockCount` whole 4 KiB blocks of the file at
 * `path`, starting at `firstBlock`; the file keeps its size and the range
 * reads as zeros afterwards (fallocate with PUNCH_HOLE). Throws an Error
 * naming the errno when the filesystem refuses.
 */
export function punchBlocks(
  path: string,
  firstBlock: number,
  blockCount: number,
): void {
  for (
    const [name, value] of [["firstBlock", firstBlock], [
      "blockCount",
      blockCount,
    ]] as const
  ) {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new RangeError(`${name} must be a u32, got ${value}`);
    }
  }
  const pathBytes = new TextEncoder().encode(path + "\0");
  const status = native().br_punch_blocks(pathBytes, firstBlock, blockCount);
  if (status !== 0) {
    throw new Error(
      `punching ${blockCount} blocks at block ${firstBlock} of ${path} failed: errno ${-status}`,
    );
  }
}

/** u32 words per packet in a {@link udpSendBatch} descriptor: offset,
 * length, IPv4 address (host order), port. */
export const UDP_SEND_WORDS = 4;
/** u32 words per packet in {@link udpReceiveBatch} metadata: length, source
 * IPv4 address (host order), source port, truncated (1 when the datagram
 * was longer than its slot). */
export const UDP_RECV_WORDS = 4;
/** Most packets one {@link udpReceiveBatch} call returns. */
export const UDP_RECV_MAX = 64;

/** A system call of the UDP shim failed; `errno` is the Linux error number. */
export class UdpError extends Error {
  constructor(message: string, readonly errno: number) {
    super(message);
    this.name = "UdpError";
  }
}

function checkU32(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${name} must be a u32, got ${value}`);
  }
}

/**
 * Opens a UDP socket bound to the IPv4 address `ip` (host order, e.g.
 * 0x7f000001) and `port` (0 picks one), asking for the given kernel buffer
 * sizes (0 keeps the default). Returns the file descriptor.
 */
export function udpOpen(
  ip: number,
  port: number,
  receiveBufferBytes = 0,
  sendBufferBytes = 0,
): number {
  checkU32("ip", ip);
  checkU32("receiveBufferBytes", receiveBufferBytes);
  checkU32("sendBufferBytes", sendBufferBytes);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`port must be 0..65535, got ${port}`);
  }
  const fd = native().br_udp_open(
    ip,
    port,
    receiveBufferBytes,
    sendBufferBytes,
  );
  if (fd < 0) {
    throw new UdpError(
      `cannot bind UDP ${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${
        ip & 255
      }:${port}: errno ${-fd}`,
      -fd,
    );
  }
  return fd;
}

/**
 * The descriptor of this process's IPv4 UDP socket bound to `ip` (host
 * order) and `port`, such as one Deno.listenDatagram opened, so batches
 * can be sent on it. Throws a UdpError when there is none.
 */
export function udpFind(ip: number, port: number): number {
  checkU32("ip", ip);
  checkU32("port", port);
  const fd = native().br_udp_find(ip, port);
  if (fd < 0) {
    throw new UdpError(
      `no UDP socket bound to port ${port}: errno ${-fd}`,
      -fd,
    );
  }
  return fd;
}

/** Asks for kernel buffer sizes on a UDP socket (0 keeps a size); a
 * refusal only means smaller buffers. */
export function udpTune(
  fd: number,
  receiveBufferBytes: number,
  sendBufferBytes: number,
): void {
  checkU32("receiveBufferBytes", receiveBufferBytes);
  checkU32("sendBufferBytes", sendBufferBytes);
  const status = native().br_udp_tune(fd, receiveBufferBytes, sendBufferBytes);
  if (status < 0) throw new UdpError(`bad socket: errno ${-status}`, -status);
}

/** The local port a UDP socket from {@link udpOpen} is bound to. */
export function udpLocalPort(fd: number): number {
  const port = native().br_udp_local_port(fd);
  if (port < 0) throw new UdpError(`getsockname failed: errno ${-port}`, -port);
  return port;
}

/** Closes a socket from {@link udpOpen}. */
export function udpClose(fd: number): void {
  const status = native().br_udp_close(fd);
  if (status < 0) throw new UdpError(`close failed: errno ${-status}`, -status);
}

/**
 * Sends `count` packets from `buffer` with one sendmmsg call per 64,
 * never blocking. `descriptors` holds UDP_SEND_WORDS words per packet.
 * Returns how many went out (a prefix); the rest met a full socket buffer.
 */
export function udpSendBatch(
  fd: number,
  buffer: Uint8Array,
  descriptors: Uint32Array,
  count: number,
): number {
  checkU32("count", count);
  if (descriptors.length < count * UDP_SEND_WORDS) {
    throw new RangeError(
      `descriptors hold ${descriptors.length} words, ${count} packets need ${
        count * UDP_SEND_WORDS
      }`,
    );
  }
  const sent = native().br_udp_send_batch(
    fd,
    buffer,
    buffer.length,
    descriptors,
    count,
  );
  if (sent < 0) throw new UdpError(`sendmmsg failed: errno ${-sent}`, -sent);
  return sent;
}

/**
 * Waits up to `timeoutMs` for datagrams and receives up to `maxCount`
 * (at most UDP_RECV_MAX) into consecutive slots of `slotBytes` in
 * `buffer`; `meta` gets UDP_RECV_WORDS words per packet. Returns the count
 * (0 on timeout). Blocks the calling thread: call it from a Worker.
 */
export function udpReceiveBatch(
  fd: number,
  buffer: Uint8Array,
  slotBytes: number,
  maxCount: number,
  meta: Uint32Array,
  timeoutMs: number,
): number {
  checkU32("slotBytes", slotBytes);
  checkU32("maxCount", maxCount);
  const count = Math.min(maxCount, UDP_RECV_MAX);
  if (slotBytes * count > buffer.length) {
    throw new RangeError(
      `buffer of ${buffer.length} bytes is smaller than ${count} slots of ${slotBytes}`,
    );
  }
  if (meta.length < count * UDP_RECV_WORDS) {
    throw new RangeError(
      `meta holds ${meta.length} words, ${count} packets need ${
        count * UDP_RECV_WORDS
      }`,
    );
  }
  const received = native().br_udp_recv_batch(
    fd,
    buffer,
    buffer.length,
    slotBytes,
    count,
    meta,
    Math.max(-1, Math.min(timeoutMs | 0, 0x7fffffff)),
  );
  if (received < 0) {
    throw new UdpError(`recvmmsg failed: errno ${-received}`, -received);
  }
  return received;
}

function checkIo(what: string, length: number, position: number): void {
  if (length > 0xffffffff) {
    throw new RangeError(`${what} of ${length} bytes is over 4 GiB`);
  }
  if (!Number.isSafeInteger(position) || position < 0) {
    throw new RangeError(`${what} position ${position} is not a byte offset`);
  }
}

/**
 * A file opened by the shim, for positional reads and writes without a
 * seek, either on the calling thread (small copies: a direct call costs
 * nanoseconds) or on Deno's blocking thread pool (large copies: tens of
 * microseconds per call, but the event loop goes on meanwhile).
 */
export class NativeFile {
  readonly path: string;
  #fd: number;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /** Opens an existing file, read-only or read-write. */
  static open(path: string, writable: boolean): NativeFile {
    const fd = native().br_file_open(
      new TextEncoder().encode(path + "\0"),
      writable ? 1 : 0,
    );
    if (fd < 0) throw new Error(`cannot open ${path}: errno ${-fd}`);
    return new NativeFile(path, fd);
  }

  #check(status: number, what: string, length: number, position: number) {
    if (status !== 0) {
      throw new Error(
        `${what} of ${length} bytes at ${position} in ${this.path} failed: errno ${-status}`,
      );
    }
  }

  /** Fills `target` from `position`; past the end reads as zeros. */
  readAt(target: Uint8Array, position: number): void {
    checkIo("read", target.length, position);
    const status = native().br_pread(
      this.#fd,
      target,
      target.length,
      BigInt(position),
    );
    this.#check(status, "read", target.length, position);
  }

  /** {@link readAt} on the blocking thread pool; `target` must not be
   * touched until the promise settles. */
  async readAtAsync(target: Uint8Array, position: number): Promise<void> {
    checkIo("read", target.length, position);
    const status = await native().br_pread_async(
      this.#fd,
      target,
      target.length,
      BigInt(position),
    );
    this.#check(status, "read", target.length, position);
  }

  /** Writes all of `source` at `position`. */
  writeAt(source: Uint8Array, position: number): void {
    checkIo("write", source.length, position);
    const status = native().br_pwrite(
      this.#fd,
      source,
      source.length,
      BigInt(position),
    );
    this.#check(status, "write", source.length, position);
  }

  /** {@link writeAt} on the blocking thread pool. */
  async writeAtAsync(source: Uint8Array, position: number): Promise<void> {
    checkIo("write", source.length, position);
    const status = await native().br_pwrite_async(
      this.#fd,
      source,
      source.length,
      BigInt(position),
    );
    this.#check(status, "write", source.length, position);
  }

  /** Closes the descriptor; later calls fail. */
  close(): void {
    if (this.#fd < 0) return;
    const status = native().br_file_close(this.#fd);
    this.#fd = -1;
    if (status !== 0) throw new Error(`closing ${this.path}: errno ${-status}`);
  }
}
