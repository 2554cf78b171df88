/**
 * The standard Cap'n Proto stream framing, as far as the package reader
 * needs it: how long the message at the start of a buffer is, checked
 * before any parser sees the bytes.
 *
 * @module
 */
import * as $ from "capnp-es";
import { SpkError } from "./errors.ts";

/** More segments than this is not something a packer writes. */
const MAX_SEGMENTS = 512;

/**
 * The byte length of the framed message at the start of `bytes`, or an
 * SpkError("corrupt") naming what is wrong with its segment table.
 */
export function framedLength(bytes: Uint8Array, what: string): number {
  if (bytes.length < 8) {
    throw new SpkError(
      "corrupt",
      `${what}: ${bytes.length} bytes cannot hold a segment table`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const segmentCount = view.getUint32(0, true) + 1;
  if (segmentCount > MAX_SEGMENTS) {
    throw new SpkError(
      "corrupt",
      `${what}: ${segmentCount} segments, at most ${MAX_SEGMENTS} expected`,
    );
  }
  const headerBytes = Math.ceil((4 + 4 * segmentCount) / 8) * 8;
  if (headerBytes > bytes.length) {
    throw new SpkError("corrupt", `${what}: segment table is cut short`);
  }
  let total = headerBytes;
  for (let i = 0; i < segmentCount; i++) {
    total += view.getUint32(4 + 4 * i, true) * 8;
  }
  if (total > bytes.length) {
    throw new SpkError(
      "corrupt",
      `${what}: needs ${total} bytes, only ${bytes.length} present`,
    );
  }
  return total;
}

/** A read-only message over exactly the framed bytes given. */
export function openMessage(
  bytes: Uint8Array,
  traversalLimitBytes: number,
): $.Message {
  const message = new $.Message(bytes, false, false);
  // capnp-es counts traversal in bytes of pointers followed; the reader
  // also bounds what it unpacks by its own byte and file counters.
  message._capnp.traversalLimit = traversalLimitBytes;
  return message;
}
