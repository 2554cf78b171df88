/**
 * The NBD wire format as this daemon speaks it: fixed newstyle handshake,
 * simple replies only, and the pure parsers and validators that turn a
 * peer's bytes into typed requests or typed errors. Nothing here touches a
 * socket, so every function can be fuzzed on its own.
 *
 * @module
 */

/** "NBDMAGIC": the first eight bytes a newstyle server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": sent by the server after NBD_MAGIC and before every option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Starts every option reply. */
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
/** Starts every transmission request. */
export const REQUEST_MAGIC = 0x25609513;
/** Starts every simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;

/** Handshake flags the server announces. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags: the same two bits; any other bit ends the handshake. */
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;

/** Options a client may send during the handshake. */
export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** Option reply types; the error ones have bit 31 set. */
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
  ERR_TOO_BIG: 0x80000009,
} as const;

/** Information items of NBD_REP_INFO. */
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags, sent with the export's size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
} as const;

/** Request types of the transmission phase. */
export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** Per-request flags. */
export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

/** Error numbers of replies, fixed by the protocol (not the host's). */
export const Errno = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Size of a transmission request header. */
export const REQUEST_HEADER_BYTES = 28;
/** Size of an option header after the client flags. */
export const OPTION_HEADER_BYTES = 16;
/** Size of a simple reply header. */
export const SIMPLE_REPLY_BYTES = 16;
/** Largest option payload read into memory; longer ones are skipped. */
export const MAX_OPTION_BYTES = 64 * 1024;
/** Largest export name accepted (the protocol's own limit is 4096). */
export const MAX_NAME_BYTES = 4096;
/** Largest READ or WRITE payload; advertised as the maximum block size. */
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
/** Advertised preferred block size: the volume's block. */
export const PREFERRED_BLOCK_BYTES = 4096;

/** The peer broke the protocol in a way that leaves no way to go on (the
 * stream cannot be resynchronised); the connection must be closed. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** One transmission request as read from the wire. */
export interface Request {
  flags: number;
  type: number;
  /** Opaque to the server; echoed in the reply. */
  cookie: bigint;
  /** Offset in bytes; a bigint because a peer may send any 64-bit value. */
  offset: bigint;
  length: number;
}

/**
 * Parses the 28-byte header of a request. Throws {@link ProtocolError} on a
 * bad magic, the only header fault that cannot be answered with an error
 * reply.
 *
 * @example
 * ```ts
 * import { parseRequestHeader, REQUEST_MAGIC } from "./nbd_protocol.ts";
 * const bytes = new Uint8Array(28);
 * new DataView(bytes.buffer).setUint32(0, REQUEST_MAGIC);
 * if (parseRequestHeader(bytes).type !== 0) throw new Error("not a read");
 * ```
 */
export function parseRequestHeader(bytes: Uint8Array): Request {
  if (bytes.length !== REQUEST_HEADER_BYTES) {
    throw new ProtocolError(
      `request header must be ${REQUEST_HEADER_BYTES} bytes, got ${bytes.length}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const magic = view.getUint32(0);
  if (magic !== REQUEST_MAGIC) {
    throw new ProtocolError(
      `bad request magic 0x${magic.toString(16)}, expected 0x25609513`,
    );
  }
  return {
    flags: view.getUint16(4),
    type: view.getUint16(6),
    cookie: view.getBigUint64(8),
    offset: view.getBigUint64(16),
    length: view.getUint32(24),
  };
}

/** What the server offers on one export, as far as validation needs. */
export interface ExportLimits {
  sizeBytes: number;
  readOnly: boolean;
}

/** Whether a request carries a payload that must be read off the wire
 * before anything else, even when the request is refused. */
export function hasPayload(request: Request): boolean {
  return request.type === Command.WRITE;
}

const ALLOWED_FLAGS: Record<number, number> = {
  [Command.READ]: 0,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: 0,
  [Command.FLUSH]: 0,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE,
};

/**
 * Checks a parsed request against the export and returns the NBD error to
 * reply with, or {@link Errno.OK}. Unknown commands and flags the server
 * did not advertise get EINVAL; a range past the end gets ENOSPC for
 * writes (the device is full there) and EINVAL otherwise, as the spec
 * recommends; a payload above the advertised maximum gets EOVERFLOW.
 *
 * @example
 * ```ts
 * import { Command, Errno, validateRequest } from "./nbd_protocol.ts";
 * const request = {
 *   flags: 0, type: Command.WRITE, cookie: 1n, offset: 4096n, length: 1,
 * };
 * const errno = validateRequest(request, { sizeBytes: 4096, readOnly: false });
 * if (errno !== Errno.ENOSPC) throw new Error(`got ${errno}`);
 * ```
 */
export function validateRequest(
  request: Request,
  limits: ExportLimits,
): number {
  const allowed = ALLOWED_FLAGS[request.type];
  if (allowed === undefined) return Errno.EINVAL;
  if ((request.flags & ~allowed) !== 0) return Errno.EINVAL;
  if (request.type === Command.DISC) return Errno.OK;
  if (request.type === Command.FLUSH) {
    return request.offset === 0n && request.length === 0
      ? Errno.OK
      : Errno.EINVAL;
  }
  const writes = request.type !== Command.READ;
  if (writes && limits.readOnly) return Errno.EPERM;
  if (
    (request.type === Command.READ || request.type === Command.WRITE) &&
    request.length > MAX_PAYLOAD_BYTES
  ) {
    return Errno.EOVERFLOW;
  }
  if (request.length === 0) return Errno.EINVAL;
  const end = request.offset + BigInt(request.length);
  if (end > BigInt(limits.sizeBytes)) {
    return request.type === Command.WRITE ||
        request.type === Command.WRITE_ZEROES
      ? Errno.ENOSPC
      : Errno.EINVAL;
  }
  return Errno.OK;
}

/** An option sent during the handshake, payload included. */
export interface OptionRequest {
  option: number;
  data: Uint8Array;
}

/** Parses the 16-byte option header; returns the option and the length of
 * its payload. Throws {@link ProtocolError} on a bad magic. */
export function parseOptionHeader(
  bytes: Uint8Array,
): { option: number; length: number } {
  if (bytes.length !== OPTION_HEADER_BYTES) {
    throw new ProtocolError(
      `option header must be ${OPTION_HEADER_BYTES} bytes, got ${bytes.length}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const magic = view.getBigUint64(0);
  if (magic !== IHAVEOPT) {
    throw new ProtocolError(
      `bad option magic 0x${magic.toString(16)}, expected IHAVEOPT`,
    );
  }
  return { option: view.getUint32(8), length: view.getUint32(12) };
}

/** A well-formed NBD_OPT_INFO or NBD_OPT_GO payload. */
export interface InfoRequest {
  name: string;
  /** Information items the client asked for, in its order. */
  items: number[];
}

/** Why an option payload was refused; becomes NBD_REP_ERR_INVALID. */
export class OptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OptionError";
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function decodeName(bytes: Uint8Array): string {
  if (bytes.length > MAX_NAME_BYTES) {
    throw new OptionError(
      `export name is ${bytes.length} bytes, at most ${MAX_NAME_BYTES} allowed`,
    );
  }
  try {
    return utf8.decode(bytes);
  } catch {
    throw new OptionError("export name is not valid UTF-8");
  }
}

/**
 * Parses the payload of NBD_OPT_INFO or NBD_OPT_GO: a 32-bit name length,
 * the name, a 16-bit count and that many 16-bit information types. The
 * lengths must add up exactly.
 *
 * @example
 * ```ts
 * import { parseInfoRequest } from "./nbd_protocol.ts";
 * const data = new Uint8Array([0, 0, 0, 1, 0x61, 0, 1, 0, 3]);
 * const info = parseInfoRequest(data);
 * if (info.name !== "a" || info.items[0] !== 3) throw new Error("bad parse");
 * ```
 */
export function parseInfoRequest(data: Uint8Array): InfoRequest {
  const view = new DataView(data.buffer, data.byteOffset, data.length);
  if (data.length < 6) {
    throw new OptionError(`info request of ${data.length} bytes is too short`);
  }
  const nameBytes = view.getUint32(0);
  if (nameBytes > data.length - 6) {
    throw new OptionError(
      `name length ${nameBytes} exceeds the ${data.length}-byte payload`,
    );
  }
  const name = decodeName(data.subarray(4, 4 + nameBytes));
  const count = view.getUint16(4 + nameBytes);
  const expected = 6 + nameBytes + 2 * count;
  if (data.length !== expected) {
    throw new OptionError(
      `info request is ${data.length} bytes, expected ${expected}`,
    );
  }
  const items: number[] = [];
  for (let i = 0; i < count; i++) {
    items.push(view.getUint16(6 + nameBytes + 2 * i));
  }
  return { name, items };
}

/** Parses the payload of the old NBD_OPT_EXPORT_NAME: the bare name. */
export function parseExportName(data: Uint8Array): string {
  return decodeName(data);
}

/** Encodes the greeting: NBDMAGIC, IHAVEOPT and the handshake flags. */
export function encodeGreeting(): Uint8Array {
  const bytes = new Uint8Array(18);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, NBD_MAGIC);
  view.setBigUint64(8, IHAVEOPT);
  view.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  return bytes;
}

/** Encodes one option reply. */
export function encodeOptionReply(
  option: number,
  type: number,
  data: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(20 + data.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, OPTION_REPLY_MAGIC);
  view.setUint32(8, option);
  view.setUint32(12, type);
  view.setUint32(16, data.length);
  bytes.set(data, 20);
  return bytes;
}

const utf8Encoder = new TextEncoder();

/** Payload of NBD_REP_SERVER: the name's length, then the name. */
export function encodeServerReply(name: string): Uint8Array {
  const nameBytes = utf8Encoder.encode(name);
  const bytes = new Uint8Array(4 + nameBytes.length);
  new DataView(bytes.buffer).setUint32(0, nameBytes.length);
  bytes.set(nameBytes, 4);
  return bytes;
}

/** Payload of NBD_REP_INFO / NBD_INFO_EXPORT: size and transmission flags. */
export function encodeInfoExport(sizeBytes: number, flags: number) {
  const bytes = new Uint8Array(12);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, Info.EXPORT);
  view.setBigUint64(2, BigInt(sizeBytes));
  view.setUint16(10, flags);
  return bytes;
}

/** Payload of NBD_INFO_NAME or NBD_INFO_DESCRIPTION. */
export function encodeInfoText(type: number, text: string): Uint8Array {
  const textBytes = utf8Encoder.encode(text);
  const bytes = new Uint8Array(2 + textBytes.length);
  new DataView(bytes.buffer).setUint16(0, type);
  bytes.set(textBytes, 2);
  return bytes;
}

/** Payload of NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum. */
export function encodeInfoBlockSize(): Uint8Array {
  const bytes = new Uint8Array(14);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, Info.BLOCK_SIZE);
  view.setUint32(2, 1);
  view.setUint32(6, PREFERRED_BLOCK_BYTES);
  view.setUint32(10, MAX_PAYLOAD_BYTES);
  return bytes;
}

/** Reply to the old NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes
 * unless the client asked for none. */
export function encodeExportNameReply(
  sizeBytes: number,
  flags: number,
  noZeroes: boolean,
): Uint8Array {
  const bytes = new Uint8Array(10 + (noZeroes ? 0 : 124));
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(sizeBytes));
  view.setUint16(8, flags);
  return bytes;
}

/** Writes a simple reply header into `target` (16 bytes at `at`). */
export function writeSimpleReply(
  target: Uint8Array,
  at: number,
  errno: number,
  cookie: bigint,
): void {
  const view = new DataView(target.buffer, target.byteOffset + at, 16);
  view.setUint32(0, SIMPLE_REPLY_MAGIC);
  view.setUint32(4, errno);
  view.setBigUint64(8, cookie);
}
