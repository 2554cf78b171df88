/**
 * A fixed-size bitmap with a running count of set bits, one bit per block.
 *
 * @module
 */

/** One bit per block; `count` is kept exact by every update. */
export class Bitmap {
  readonly size: number;
  readonly bytes: Uint8Array;
  #count = 0;

  constructor(size: number, bytes?: Uint8Array) {
    this.size = size;
    this.bytes = new Uint8Array(Math.ceil(size / 8));
    if (bytes !== undefined) {
      if (bytes.length !== this.bytes.length) {
        throw new RangeError(
          `bitmap of ${size} bits needs ${this.bytes.length} bytes, got ${bytes.length}`,
        );
      }
      this.bytes.set(bytes);
      const tail = size % 8;
      if (tail !== 0) this.bytes[this.bytes.length - 1] &= (1 << tail) - 1;
      for (const byte of this.bytes) this.#count += popcount(byte);
    }
  }

  /** How many bits are set. */
  get count(): number {
    return this.#count;
  }

  get(index: number): boolean {
    return (this.bytes[index >>> 3] & (1 << (index & 7))) !== 0;
  }

  set(index: number): void {
    const mask = 1 << (index & 7);
    const at = index >>> 3;
    if ((this.bytes[at] & mask) === 0) {
      this.bytes[at] |= mask;
      this.#count++;
    }
  }

  clear(index: number): void {
    const mask = 1 << (index & 7);
    const at = index >>> 3;
    if ((this.bytes[at] & mask) !== 0) {
      this.bytes[at] &= ~mask;
      this.#count--;
    }
  }

  setRange(start: number, end: number): void {
    for (let i = start; i < end; i++) this.set(i);
  }

  clearRange(start: number, end: number): void {
    for (let i = start; i < end; i++) this.clear(i);
  }

  /** Clears every bit. */
  reset(): void {
    this.bytes.fill(0);
    this.#count = 0;
  }

  /** The first set bit in `[from, end)`, or `end` if there is none. Skips
   * zero bytes whole, so scanning a mostly clear bitmap is cheap. */
  nextSet(from: number, end: number = this.size): number {
    let i = from;
    while (i < end) {
      if ((i & 7) === 0 && this.bytes[i >>> 3] === 0) {
        i += 8;
        continue;
      }
      if (this.get(i)) return i;
      i++;
    }
    return end;
  }

  /** The first clear bit in `[from, end)`, or `end` if there is none. */
  nextClear(from: number, end: number = this.size): number {
    let i = from;
    while (i < end) {
      if ((i & 7) === 0 && this.bytes[i >>> 3] === 0xff) {
        i += 8;
        continue;
      }
      if (!this.get(i)) return i;
      i++;
    }
    return end;
  }
}

function popcount(byte: number): number {
  let n = 0;
  for (let b = byte; b !== 0; b &= b - 1) n++;
  return n;
}
