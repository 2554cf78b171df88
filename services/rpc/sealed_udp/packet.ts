/**
 * Wire format of the sealed UDP network.
 *
 * A datagram is a clear header, then the sealed frames, then the 16-byte
 * Poly1305 tag. The header is the associated data of the seal, so every
 * byte of it is authenticated:
 *
 * ```
 * offset size field
 *      0    1 version (1)
 *      1    3 reserved, zero
 *      4    8 recipient: first 8 bytes of the receiving vat's ID
 *     12   32 sender vat ID (ed25519 public key)
 *     44    8 sender epoch stamp: ms since 1970 when the sender booted
 *     52    8 sender boot ID: random per boot
 *     60    8 packet number, big-endian, per sender boot and recipient
 *     68    8 recipient boot ID as the sender knows it, zero if unknown
 *     76    4 tenths of a second from the sender's boot stamp to sending
 *     80  ... frames (encrypted)
 *    end   16 tag
 * ```
 *
 * The nonce is header bytes 44..68 (stamp, boot ID, packet number): unique
 * for a key as long as the sender never reuses a packet number within one
 * boot, and a new boot draws a new random boot ID.
 *
 * Frames, all integers big-endian:
 * - DATA  (1): conn u32, fragment u32, flags u8, length u16, bytes
 * - ACK   (2): conn u32, cumulative u32, count u8, count x (start u32,
 *              end u32) ranges received beyond the cumulative point
 * - PING  (3): conn u32 (asks for an ACK)
 * - RESET (4): conn u32, reason u8
 *
 * @module
 */

/** Version byte of this format. */
export const VERSION = 1;
/** Bytes of clear header (the associated data). */
export const HEADER_BYTES = 80;
/** Bytes of the AEAD tag after the frames. */
export const TAG_BYTES = 16;
/** Largest datagram sent or accepted. 1280 bytes stays under every IPv4
 * path MTU this cluster meets without relying on fragmentation. */
export const MAX_DATAGRAM_BYTES = 1280;
/** Room for frames in one datagram. */
export const MAX_FRAMES_BYTES = MAX_DATAGRAM_BYTES - HEADER_BYTES - TAG_BYTES;
/** Bytes of a DATA frame before its payload. */
export const DATA_FRAME_HEADER_BYTES = 12;
/** Largest payload of one DATA frame. */
export const MAX_FRAGMENT_BYTES = MAX_FRAMES_BYTES - DATA_FRAME_HEADER_BYTES;
/** Most ranges one ACK frame carries. */
export const MAX_ACK_RANGES = 64;

/** Offsets in the header. */
export const OFFSET_RECIPIENT = 4;
export const OFFSET_SENDER = 12;
export const OFFSET_STAMP = 44;
export const OFFSET_BOOT = 52;
export const OFFSET_PACKET_NUMBER = 60;
export const OFFSET_RECIPIENT_BOOT = 68;
export const OFFSET_SENT_TENTHS = 76;
/** The nonce is this many header bytes from OFFSET_STAMP. */
export const NONCE_BYTES = 24;

export const FRAME_DATA = 1;
export const FRAME_ACK = 2;
export const FRAME_PING = 3;
export const FRAME_RESET = 4;

/** DATA flag: the last fragment of a message. */
export const FLAG_END = 1;
/** DATA flag: the sender closed the connection after everything before. */
export const FLAG_CLOSE = 2;

/** Why a RESET was sent. */
export enum ResetReason {
  UnknownConnection = 0,
  MessageTooLarge = 1,
  TooManyConnections = 2,
}

/** Bytes that do not parse as this format. */
export class PacketFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PacketFormatError";
  }
}

/** The clear header of a datagram. */
export interface PacketHeader {
  recipientPrefix: Uint8Array;
  senderVatId: Uint8Array;
  /** Sender boot time stamp (ms); whole numbers below 2^53. */
  stamp: number;
  /** Sender boot ID as two u32 words. */
  bootHigh: number;
  bootLow: number;
  packetNumber: number;
  recipientBootHigh: number;
  recipientBootLow: number;
  /** Tenths of a second from `stamp` to when the packet was sent (a u32
   * lasts 13 years). */
  sentTenths: number;
}

/** A parsed frame. A parsed DATA frame's `data` is a view into the
 * datagram: whoever keeps it beyond the buffer's life copies it. */
export type Frame =
  | {
    type: typeof FRAME_DATA;
    conn: number;
    fragment: number;
    flags: number;
    data: Uint8Array;
  }
  | {
    type: typeof FRAME_ACK;
    conn: number;
    cumulative: number;
    /** Flat start, end pairs (end exclusive), ascending. */
    ranges: number[];
  }
  | { type: typeof FRAME_PING; conn: number }
  | { type: typeof FRAME_RESET; conn: number; reason: number };

const TWO_32 = 0x1_0000_0000;

function readU64(view: DataView, offset: number): number {
  const high = view.getUint32(offset);
  if (high >= 0x20_0000) {
    throw new PacketFormatError(`64-bit field at ${offset} is above 2^53`);
  }
  return high * TWO_32 + view.getUint32(offset + 4);
}

/** Writes a whole number below 2^53 as a big-endian u64. */
export function writeU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, Math.floor(value / TWO_32));
  view.setUint32(offset + 4, value >>> 0);
}

/**
 * Parses the clear header of a datagram of `length` bytes at `offset` of
 * `bytes`. Checks only the format; authenticity comes from opening the
 * seal. Throws PacketFormatError.
 */
export function parseHeader(
  bytes: Uint8Array,
  offset = 0,
  length = bytes.length - offset,
): PacketHeader {
  if (length < HEADER_BYTES + TAG_BYTES) {
    throw new PacketFormatError(
      `datagram of ${length} bytes is shorter than header and tag (${
        HEADER_BYTES + TAG_BYTES
      })`,
    );
  }
  if (length > MAX_DATAGRAM_BYTES) {
    throw new PacketFormatError(
      `datagram of ${length} bytes exceeds ${MAX_DATAGRAM_BYTES}`,
    );
  }
  if (offset < 0 || offset + length > bytes.length) {
    throw new RangeError(`datagram lies outside its buffer`);
  }
  if (bytes[offset] !== VERSION) {
    throw new PacketFormatError(
      `version ${bytes[offset]} is not ${VERSION}`,
    );
  }
  if (bytes[offset + 1] | bytes[offset + 2] | bytes[offset + 3]) {
    throw new PacketFormatError(`reserved header bytes are not zero`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, length);
  return {
    recipientPrefix: bytes.subarray(
      offset + OFFSET_RECIPIENT,
      offset + OFFSET_RECIPIENT + 8,
    ),
    senderVatId: bytes.subarray(
      offset + OFFSET_SENDER,
      offset + OFFSET_SENDER + 32,
    ),
    stamp: readU64(view, OFFSET_STAMP),
    bootHigh: view.getUint32(OFFSET_BOOT),
    bootLow: view.getUint32(OFFSET_BOOT + 4),
    packetNumber: readU64(view, OFFSET_PACKET_NUMBER),
    recipientBootHigh: view.getUint32(OFFSET_RECIPIENT_BOOT),
    recipientBootLow: view.getUint32(OFFSET_RECIPIENT_BOOT + 4),
    sentTenths: view.getUint32(OFFSET_SENT_TENTHS),
  };
}

/** What goes into a header; see {@link writeHeader}. */
export interface HeaderFields {
  recipientVatId: Uint8Array;
  senderVatId: Uint8Array;
  stamp: number;
  boot: Uint8Array;
  packetNumber: number;
  recipientBoot: Uint8Array | undefined;
  sentTenths: number;
}

/** Writes a header at `offset` of `bytes`. */
export function writeHeader(
  bytes: Uint8Array,
  view: DataView,
  offset: number,
  fields: HeaderFields,
): void {
  bytes[offset] = VERSION;
  bytes[offset + 1] = 0;
  bytes[offset + 2] = 0;
  bytes[offset + 3] = 0;
  bytes.set(fields.recipientVatId.subarray(0, 8), offset + OFFSET_RECIPIENT);
  bytes.set(fields.senderVatId, offset + OFFSET_SENDER);
  writeU64(view, offset + OFFSET_STAMP, fields.stamp);
  bytes.set(fields.boot, offset + OFFSET_BOOT);
  writeU64(view, offset + OFFSET_PACKET_NUMBER, fields.packetNumber);
  if (fields.recipientBoot === undefined) {
    bytes.fill(0, offset + OFFSET_RECIPIENT_BOOT, offset + OFFSET_SENT_TENTHS);
  } else {
    bytes.set(fields.recipientBoot, offset + OFFSET_RECIPIENT_BOOT);
  }
  view.setUint32(offset + OFFSET_SENT_TENTHS, fields.sentTenths);
}

/**
 * Parses the opened frames of a datagram. Throws PacketFormatError for an
 * unknown frame type, a frame running past the end, or ACK ranges that
 * are not ascending; a peer holding the key can still send such bytes,
 * so they must never reach the connection logic.
 */
export function parseFrames(bytes: Uint8Array): Frame[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const frames: Frame[] = [];
  let at = 0;
  const need = (n: number, what: string) => {
    if (at + n > bytes.length) {
      throw new PacketFormatError(
        `${what} at byte ${at} needs ${n} bytes, ${bytes.length - at} remain`,
      );
    }
  };
  while (at < bytes.length) {
    const type = bytes[at];
    switch (type) {
      case FRAME_DATA: {
        need(DATA_FRAME_HEADER_BYTES, "DATA frame");
        const conn = view.getUint32(at + 1);
        const fragment = view.getUint32(at + 5);
        const flags = bytes[at + 9];
        const length = view.getUint16(at + 10);
        if (flags & ~(FLAG_END | FLAG_CLOSE)) {
          throw new PacketFormatError(`DATA flags ${flags} are unknown`);
        }
        if ((flags & FLAG_CLOSE) && length !== 0) {
          throw new PacketFormatError(`CLOSE fragment carries ${length} bytes`);
        }
        at += DATA_FRAME_HEADER_BYTES;
        need(length, "DATA payload");
        frames.push({
          type,
          conn,
          fragment,
          flags,
          // A view, not a copy: receive buffers are reused, and the
          // connection copies what it keeps straight into the message.
          data: bytes.subarray(at, at + length),
        });
        at += length;
        break;
      }
      case FRAME_ACK: {
        need(10, "ACK frame");
        const conn = view.getUint32(at + 1);
        const cumulative = view.getUint32(at + 5);
        const count = bytes[at + 9];
        at += 10;
        if (count > MAX_ACK_RANGES) {
          throw new PacketFormatError(
            `ACK has ${count} ranges, at most ${MAX_ACK_RANGES}`,
          );
        }
        need(count * 8, "ACK ranges");
        const ranges: number[] = [];
        let floor = cumulative;
        for (let i = 0; i < count; i++) {
          const start = view.getUint32(at);
          const end = view.getUint32(at + 4);
          at += 8;
          if (start <= floor || end <= start) {
            throw new PacketFormatError(
              `ACK range ${start}..${end} is not above ${floor}`,
            );
          }
          ranges.push(start, end);
          floor = end;
        }
        frames.push({ type, conn, cumulative, ranges });
        break;
      }
      case FRAME_PING:
        need(5, "PING frame");
        frames.push({ type, conn: view.getUint32(at + 1) });
        at += 5;
        break;
      case FRAME_RESET:
        need(6, "RESET frame");
        frames.push({
          type,
          conn: view.getUint32(at + 1),
          reason: bytes[at + 5],
        });
        at += 6;
        break;
      default:
        throw new PacketFormatError(`frame type ${type} at byte ${at}`);
    }
  }
  return frames;
}

/** Bytes a frame takes on the wire. */
export function frameBytes(frame: Frame): number {
  switch (frame.type) {
    case FRAME_DATA:
      return DATA_FRAME_HEADER_BYTES + frame.data.length;
    case FRAME_ACK:
      return 10 + frame.ranges.length * 4;
    case FRAME_PING:
      return 5;
    case FRAME_RESET:
      return 6;
  }
}

/** Writes one frame at `at`; returns the offset after it. The caller has
 * checked that it fits. */
export function writeFrame(
  bytes: Uint8Array,
  view: DataView,
  at: number,
  frame: Frame,
): number {
  bytes[at] = frame.type;
  view.setUint32(at + 1, frame.conn);
  switch (frame.type) {
    case FRAME_DATA:
      view.setUint32(at + 5, frame.fragment);
      bytes[at + 9] = frame.flags;
      view.setUint16(at + 10, frame.data.length);
      bytes.set(frame.data, at + DATA_FRAME_HEADER_BYTES);
      return at + DATA_FRAME_HEADER_BYTES + frame.data.length;
    case FRAME_ACK: {
      view.setUint32(at + 5, frame.cumulative);
      const count = frame.ranges.length / 2;
      bytes[at + 9] = count;
      let p = at + 10;
      for (const value of frame.ranges) {
        view.setUint32(p, value);
        p += 4;
      }
      return p;
    }
    case FRAME_PING:
      return at + 5;
    case FRAME_RESET:
      bytes[at + 5] = frame.reason;
      return at + 6;
  }
}
