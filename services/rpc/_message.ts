/**
 * Allocation of capnp-es messages for the engine. capnp-es starts every
 * message with a zeroed 4 KiB buffer and copies received bytes twice;
 * RPC messages are mostly under 256 bytes, and that allocation was the
 * largest cost of a call. capnp-es does not export its arena classes, so
 * they are taken from instances (their constructors are stable API in
 * all 0.0.x releases: `new (buffer)` and `new (segments)`).
 *
 * @module
 */

import * as $ from "capnp-es";

type ArenaClass = new (buffer: ArrayBuffer | ArrayBuffer[]) => object;
type SegmentClass = new (
  id: number,
  message: $.Message,
  buffer: ArrayBuffer,
  byteLength: number,
) => unknown;

const sample = new $.Message(
  new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  false,
);
const MultiSegmentArena = (sample._capnp.arena as object)
  .constructor as ArenaClass;
const SingleSegmentArena = (new $.Message()._capnp.arena as object)
  .constructor as ArenaClass;
const Segment = sample.getSegment(0).constructor as SegmentClass;
const TRAVERSAL_LIMIT = sample._capnp.traversalLimit;

/** First buffer of an outgoing message; it grows when needed. */
const INITIAL_BYTES = 512;

/**
 * A message with the given arena and segments, made without the capnp-es
 * constructor, whose generic set-up was a visible part of every call. The
 * result is what the constructor would build: `_capnp` with the arena,
 * one Segment per buffer and the default traversal limit.
 */
function assemble(
  arena: object,
  buffers: readonly ArrayBuffer[],
  usedBytes: (index: number) => number,
): $.Message {
  const message = Object.create($.Message.prototype) as $.Message;
  const segments: unknown[] = [];
  (message as { _capnp: unknown })._capnp = {
    arena,
    segments,
    traversalLimit: TRAVERSAL_LIMIT,
  };
  for (let i = 0; i < buffers.length; i++) {
    segments.push(new Segment(i, message, buffers[i], usedBytes(i)));
  }
  return message;
}

/** A new, empty message for the engine to build. */
export function newMessage(): $.Message {
  const buffer = new ArrayBuffer(INITIAL_BYTES);
  // Only the root pointer is in use, as in a fresh capnp-es message.
  return assemble(new SingleSegmentArena(buffer), [buffer], () => 8);
}

/**
 * A message read from framed bytes whose frame was already checked
 * (framing.ts `frameLength` equals `bytes.length`). Copies each segment
 * once, so the message never aliases the caller's buffer.
 */
export function readMessage(bytes: Uint8Array): $.Message {
  const count = readUint32(bytes, 0) + 1;
  let offset = (4 + 4 * count + 7) & ~7;
  const segments: ArrayBuffer[] = [];
  for (let i = 0; i < count; i++) {
    const length = readUint32(bytes, 4 + 4 * i) * 8;
    const start = bytes.byteOffset + offset;
    segments.push(bytes.buffer.slice(start, start + length) as ArrayBuffer);
    offset += length;
  }
  return assemble(
    new MultiSegmentArena(segments),
    segments,
    (i) => segments[i].byteLength,
  );
}

/** A little-endian u32 (no DataView: this runs for every message). */
export function readUint32(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] | (bytes[offset + 1] << 8) |
    (bytes[offset + 2] << 16)) + bytes[offset + 3] * 0x1000000;
}

/** Writes a little-endian u32. */
export function writeUint32(
  bytes: Uint8Array,
  offset: number,
  value: number,
): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

/** The length of a message's framed bytes (see {@link serializeInto}). */
export function serializedLength(message: $.Message): number {
  const segments = message._capnp.segments;
  if (segments.length === 0) message.getSegment(0);
  const count = segments.length;
  let total = (4 + 4 * count + 7) & ~7;
  for (let i = 0; i < count; i++) {
    total += (segments[i].byteLength + 7) & ~7;
  }
  return total;
}

/** Writes a message's framed bytes (standard stream framing) at `offset`
 * of `out`, which must have {@link serializedLength} bytes free there. */
export function serializeInto(
  message: $.Message,
  out: Uint8Array,
  offset: number,
): void {
  const segments = message._capnp.segments;
  const count = segments.length;
  writeUint32(out, offset, count - 1);
  let at = offset + ((4 + 4 * count + 7) & ~7);
  for (let i = 0; i < count; i++) {
    const segment = segments[i];
    const length = (segment.byteLength + 7) & ~7;
    writeUint32(out, offset + 4 + 4 * i, length / 8);
    out.set(new Uint8Array(segment.buffer, 0, length), at);
    at += length;
  }
}

/** The framed bytes of a message, in one allocation. */
export function serialize(message: $.Message): Uint8Array {
  const out = new Uint8Array(serializedLength(message));
  serializeInto(message, out, 0);
  return out;
}
