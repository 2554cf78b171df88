/**
 * Deep copy of one Cap'n Proto object from a message into another, for
 * calls and results the engine forwards between vats.
 *
 * capnp-es's `utils.copyFrom` is not used: it copies a struct list's
 * pointer words raw into the new message and then "erases" them there, so
 * it follows the source's relative offsets inside the destination and
 * zeroes (or, past the buffer's end, throws "Invalid typed array length"
 * on) unrelated bytes. Any list of structs with a data section and a text
 * (such as WebSession's Accept list) broke a forwarded call.
 *
 * This copy reads the source strictly by the encoding rules (near, far
 * and double-far pointers, every list element size, capabilities), checks
 * every pointer against its segment's bounds, limits nesting depth and the
 * words copied (a hostile message may point many times at the same
 * object), and throws {@link RpcProtocolError} on anything malformed.
 *
 * @module
 */

import type * as $ from "capnp-es";

type Segment = $.Pointer["segment"];
import { RpcProtocolError } from "./errors.ts";

/** Nesting depth the copy follows, as the C++ reference's default. */
export const MAX_COPY_DEPTH = 64;

/** Where a pointer word sits. */
interface At {
  segment: Segment;
  byteOffset: number;
}

/** The resolved target of a non-far pointer: its tag word and content. */
interface Target {
  /** The word holding kind and size (the pointer or a double-far tag). */
  tag: At;
  /** Content start (for a composite list: its tag word). */
  content: At;
}

class Copier {
  #budgetWords: number;

  constructor(budgetWords: number) {
    this.#budgetWords = budgetWords;
  }

  copy(src: At, dst: At, depth: number): void {
    const segment = src.segment;
    this.#checkRange(segment, src.byteOffset, 8);
    if (isZeroWord(segment, src.byteOffset)) return;
    if (depth <= 0) {
      throw new RpcProtocolError(
        `message nests deeper than ${MAX_COPY_DEPTH} pointers`,
      );
    }
    const target = this.#resolve(src);
    const tagSegment = target.tag.segment;
    const low = tagSegment.getUint32(target.tag.byteOffset);
    const high = tagSegment.getUint32(target.tag.byteOffset + 4);
    switch (low & 3) {
      case 0:
        this.#copyStruct(target.content, high, dst, depth);
        break;
      case 1:
        this.#copyList(target.content, high, dst, depth);
        break;
      case 3:
        if ((low >>> 2) !== 0) {
          throw new RpcProtocolError(
            `unknown "other" pointer 0x${low.toString(16)}`,
          );
        }
        copyCapability(segment.message, high, dst);
        break;
      default:
        throw new RpcProtocolError("far pointer lands on another far pointer");
    }
  }

  /** Follows far pointers to the object's tag and content. */
  #resolve(at: At): Target {
    const low = at.segment.getUint32(at.byteOffset);
    if ((low & 3) !== 2) {
      return { tag: at, content: nearContent(at, low) };
    }
    const pad = this.#landingPad(at, (low & 4) !== 0 ? 16 : 8);
    if ((low & 4) === 0) {
      const padLow = pad.segment.getUint32(pad.byteOffset);
      if ((padLow & 3) === 2) {
        throw new RpcProtocolError("far pointer lands on another far pointer");
      }
      return { tag: pad, content: nearContent(pad, padLow) };
    }
    // Double far: the pad's first word is a far pointer to the content,
    // its second word the tag of the object.
    const farLow = pad.segment.getUint32(pad.byteOffset);
    if ((farLow & 7) !== 2) {
      throw new RpcProtocolError("double-far landing pad is not a far pointer");
    }
    const content = this.#landingPad(pad, 0);
    return {
      tag: { segment: pad.segment, byteOffset: pad.byteOffset + 8 },
      content,
    };
  }

  /** The place a far pointer at `at` names, with `bytes` in bounds. */
  #landingPad(at: At, bytes: number): At {
    const low = at.segment.getUint32(at.byteOffset);
    const segmentId = at.segment.getUint32(at.byteOffset + 4);
    const segments = at.segment.message._capnp.segments;
    if (segmentId >= segments.length) {
      throw new RpcProtocolError(
        `far pointer to segment ${segmentId} of ${segments.length}`,
      );
    }
    const segment = segments[segmentId];
    const byteOffset = (low >>> 3) * 8;
    this.#checkRange(segment, byteOffset, bytes);
    return { segment, byteOffset };
  }

  #copyStruct(content: At, size: number, dst: At, depth: number): void {
    const dataWords = size & 0xffff;
    const pointerCount = size >>> 16;
    const words = dataWords + pointerCount;
    this.#checkRange(content.segment, content.byteOffset, words * 8);
    this.#spend(words);
    if (words === 0) {
      writeInPlace(dst, 0, size);
      return;
    }
    const out = allocate(dst, words * 8, 0, size);
    copyBytes(content, out, dataWords * 8);
    this.#copyPointers(content, dataWords * 8, out, pointerCount, depth);
  }

  #copyList(content: At, high: number, dst: At, depth: number): void {
    const elementSize = high & 7;
    const count = high >>> 3;
    if (elementSize === 7) {
      this.#copyStructList(content, count, dst, depth);
      return;
    }
    const bits = ELEMENT_BITS[elementSize];
    const bytes = Math.ceil((count * bits) / 64) * 8;
    this.#checkRange(content.segment, content.byteOffset, bytes);
    // A list of voids copies nothing but still costs its elements, as in
    // the C++ reader, so a huge empty list cannot be a free amplifier.
    this.#spend(bytes === 0 ? Math.ceil(count / 64) : bytes / 8);
    if (bytes === 0) {
      writeInPlace(dst, 1, high);
      return;
    }
    const out = allocate(dst, bytes, 1, high);
    if (elementSize === 6) {
      this.#copyPointers(content, 0, out, count, depth);
    } else {
      copyBytes(content, out, bytes);
    }
  }

  #copyStructList(tag: At, wordCount: number, dst: At, depth: number) {
    this.#checkRange(tag.segment, tag.byteOffset, 8 + wordCount * 8);
    const tagLow = tag.segment.getUint32(tag.byteOffset);
    const size = tag.segment.getUint32(tag.byteOffset + 4);
    if ((tagLow & 3) !== 0) {
      throw new RpcProtocolError("struct list tag is not a struct tag");
    }
    const count = tagLow >>> 2;
    const dataWords = size & 0xffff;
    const pointerCount = size >>> 16;
    const stride = dataWords + pointerCount;
    if (count * stride > wordCount) {
      throw new RpcProtocolError(
        `struct list of ${count} elements of ${stride} words in ${wordCount}`,
      );
    }
    this.#spend(Math.max(count * stride, count === 0 ? 0 : 1) + 1);
    const out = allocate(
      dst,
      8 + count * stride * 8,
      1,
      7 | (count * stride) << 3,
    );
    out.segment.setUint32(out.byteOffset, tagLow);
    out.segment.setUint32(out.byteOffset + 4, size);
    for (let i = 0; i < count; i++) {
      const from = tag.byteOffset + 8 + i * stride * 8;
      const to = out.byteOffset + 8 + i * stride * 8;
      copyBytes(
        { segment: tag.segment, byteOffset: from },
        { segment: out.segment, byteOffset: to },
        dataWords * 8,
      );
      this.#copyPointers(
        { segment: tag.segment, byteOffset: from },
        dataWords * 8,
        { segment: out.segment, byteOffset: to },
        pointerCount,
        depth,
      );
    }
  }

  #copyPointers(
    src: At,
    firstByte: number,
    dst: At,
    count: number,
    depth: number,
  ): void {
    for (let i = 0; i < count; i++) {
      const offset = firstByte + i * 8;
      this.copy(
        { segment: src.segment, byteOffset: src.byteOffset + offset },
        { segment: dst.segment, byteOffset: dst.byteOffset + offset },
        depth - 1,
      );
    }
  }

  #checkRange(segment: Segment, byteOffset: number, bytes: number): void {
    if (byteOffset < 0 || byteOffset + bytes > segment.byteLength) {
      throw new RpcProtocolError(
        `pointer to bytes ${byteOffset}..${byteOffset + bytes} outside ` +
          `segment ${segment.id} of ${segment.byteLength} bytes`,
      );
    }
  }

  #spend(words: number): void {
    this.#budgetWords -= words;
    if (this.#budgetWords < 0) {
      throw new RpcProtocolError(
        "copying the message would read more words than its limit allows",
      );
    }
  }
}

/** Bits per element for list element sizes 0..6. */
const ELEMENT_BITS = [0, 1, 8, 16, 32, 64, 64];

function isZeroWord(segment: Segment, byteOffset: number): boolean {
  return segment.getUint32(byteOffset) === 0 &&
    segment.getUint32(byteOffset + 4) === 0;
}

/** The content a near (struct or list) pointer at `at` points to. */
function nearContent(at: At, low: number): At {
  return {
    segment: at.segment,
    byteOffset: at.byteOffset + 8 + (low >> 2) * 8,
  };
}

function copyBytes(src: At, dst: At, bytes: number): void {
  if (bytes === 0) return;
  new Uint8Array(dst.segment.buffer, dst.byteOffset, bytes).set(
    new Uint8Array(src.segment.buffer, src.byteOffset, bytes),
  );
}

/** A capability pointer: the client moves into the destination's table. */
function copyCapability(source: $.Message, index: number, dst: At): void {
  const client = source._capnp.capTable?.[index];
  if (client === undefined || client === null) {
    throw new RpcProtocolError(
      `capability ${index} is not in the message's capability table`,
    );
  }
  const id = dst.segment.message.addCap(client);
  dst.segment.setUint32(dst.byteOffset, 3);
  dst.segment.setUint32(dst.byteOffset + 4, id);
}

/** Writes a pointer to an empty object: its offset names itself. */
function writeInPlace(dst: At, kind: number, high: number): void {
  dst.segment.setUint32(dst.byteOffset, ((-1 << 2) | kind) >>> 0);
  dst.segment.setUint32(dst.byteOffset + 4, high);
}

/**
 * Allocates `bytes` (zeroed) for an object and points `dst` at it with
 * the given kind and high word, through a far or double-far pointer when
 * the message put the space in another segment. Returns the content.
 */
function allocate(dst: At, bytes: number, kind: number, high: number): At {
  const content = dst.segment.allocate(bytes) as unknown as At;
  if (content.segment === dst.segment) {
    writeNear(dst, content, kind, high);
    return { segment: content.segment, byteOffset: content.byteOffset };
  }
  if (content.segment.hasCapacity(8)) {
    const pad = content.segment.allocate(8) as unknown as At;
    writeFar(dst, pad, false);
    writeNear(pad, content, kind, high);
  } else {
    const pad = dst.segment.allocate(16) as unknown as At;
    writeFar(dst, pad, true);
    writeFar(pad, content, false);
    pad.segment.setUint32(pad.byteOffset + 8, kind);
    pad.segment.setUint32(pad.byteOffset + 12, high);
  }
  return { segment: content.segment, byteOffset: content.byteOffset };
}

function writeNear(at: At, content: At, kind: number, high: number): void {
  const offsetWords = (content.byteOffset - at.byteOffset - 8) / 8;
  at.segment.setUint32(at.byteOffset, ((offsetWords << 2) | kind) >>> 0);
  at.segment.setUint32(at.byteOffset + 4, high);
}

function writeFar(at: At, to: At, double: boolean): void {
  at.segment.setUint32(
    at.byteOffset,
    (((to.byteOffset / 8) << 3) | (double ? 4 : 0) | 2) >>> 0,
  );
  at.segment.setUint32(at.byteOffset + 4, to.segment.id);
}

/**
 * Copies the object `src` points to (a pointer: a struct, a list or a
 * capability) into the pointer `dst` of another message, which must be
 * null. Capabilities are added to `dst`'s message capability table (the
 * same clients, no new references), as the engine expects. Throws
 * {@link RpcProtocolError} if `src` is malformed, nests deeper than
 * {@link MAX_COPY_DEPTH} or needs more than `maxWords` words.
 *
 * @example
 * ```ts
 * import * as $ from "capnp-es";
 * import { copyPointer } from "./_copy.ts";
 * import { TestHost_Echo$Params } from "../../proto/gen/rpc_test.ts";
 * const from = new $.Message();
 * from.initRoot(TestHost_Echo$Params)._initData(3).set(0, 7);
 * const to = new $.Message();
 * copyPointer(
 *   new $.Pointer(from.getSegment(0), 0),
 *   new $.Pointer(to.getSegment(0), 0),
 * );
 * console.assert(to.getRoot(TestHost_Echo$Params).data.get(0) === 7);
 * ```
 */
export function copyPointer(
  src: $.Pointer,
  dst: $.Pointer,
  maxWords = 8 << 20,
): void {
  if (src._capnp.compositeIndex !== undefined) {
    throw new TypeError("copyPointer needs a pointer, not a list element");
  }
  new Copier(maxWords).copy(src, dst, MAX_COPY_DEPTH + 1);
}
