/**
 * Cap'n Proto's standard message framing, checked before any decoding: a
 * little-endian u32 holding the segment count minus one, one u32 size (in
 * 8-byte words) per segment, zero padding to a word boundary, then the
 * segments. capnp-es trusts the header, so every message from a peer
 * passes through {@link frameLength} first.
 *
 * @module
 */

import { TransportClosedError } from "./transport.ts";

/** A little-endian u32 (no DataView: this runs for every message). */
function readUint32(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] | (bytes[offset + 1] << 8) |
    (bytes[offset + 2] << 16)) + bytes[offset + 3] * 0x1000000;
}

/** Frames larger than this are refused unless a limit is given. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 << 20;

/** Messages with more segments are refused (the C++ reader's limit). */
export const MAX_SEGMENTS = 512;

/**
 * The peer sent bytes that are not a valid frame: too many segments, or a
 * frame over the size limit. The stream cannot be resynchronized, so the
 * connection ends; the RPC engine answers with Abort first.
 */
export class FrameError extends TransportClosedError {
  /** Marks an error caused by the peer's bytes, not by the network. */
  readonly badInput = true;

  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}

/**
 * Reads the size of the frame at the start of `bytes`: the total length
 * (header included), or -1 when more bytes are needed to know. Throws
 * FrameError for an impossible or oversized frame.
 */
export function frameLength(
  bytes: Uint8Array,
  maxMessageBytes: number = DEFAULT_MAX_MESSAGE_BYTES,
): number {
  if (bytes.length < 4) return -1;
  const segmentCount = readUint32(bytes, 0) + 1;
  if (segmentCount > MAX_SEGMENTS || segmentCount === 0) {
    throw new FrameError(
      `frame declares ${segmentCount} segments; at most ${MAX_SEGMENTS} are allowed`,
    );
  }
  const headerBytes = (4 + 4 * segmentCount + 7) & ~7;
  if (headerBytes > maxMessageBytes) {
    throw new FrameError(
      `frame header of ${headerBytes} bytes is over the limit of ${maxMessageBytes}`,
    );
  }
  if (bytes.length < 4 + 4 * segmentCount) return -1;
  let total = headerBytes;
  for (let i = 0; i < segmentCount; i++) {
    total += readUint32(bytes, 4 + 4 * i) * 8;
    if (total > maxMessageBytes) {
      throw new FrameError(
        `frame of at least ${total} bytes is over the limit of ${maxMessageBytes}`,
      );
    }
  }
  return total;
}
