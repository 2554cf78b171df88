/**
 * A sliding window over packet numbers that accepts each number once.
 *
 * Numbers up to `size` below the highest accepted one are remembered in a
 * bitmap; anything older is refused outright, since it cannot be told
 * apart from a replay. Reordering deeper than the window costs a
 * retransmission, never a duplicate.
 *
 * @example
 * ```ts
 * import { ReplayWindow } from "./replay_window.ts";
 * const window = new ReplayWindow(1024);
 * window.accept(5); // true
 * window.accept(5); // false: a replay
 * ```
 */
export class ReplayWindow {
  readonly size: number;
  readonly #bits: Uint32Array;
  /** Highest number accepted, or -1 before the first. */
  #highest = -1;

  /** `size` is rounded up to a multiple of 32. */
  constructor(size = 4096) {
    if (!Number.isInteger(size) || size < 32) {
      throw new RangeError(`replay window size must be >= 32, got ${size}`);
    }
    this.#bits = new Uint32Array(Math.ceil(size / 32));
    this.size = this.#bits.length * 32;
  }

  /** Whether `number` would be accepted, without recording it. */
  check(number: number): boolean {
    if (number > this.#highest) return true;
    if (number <= this.#highest - this.size) return false;
    const slot = number % this.size;
    return (this.#bits[slot >>> 5] & (1 << (slot & 31))) === 0;
  }

  /** Records `number` and returns true, or returns false for a replay or a
   * number too old to judge. */
  accept(number: number): boolean {
    if (!this.check(number)) return false;
    if (number > this.#highest) {
      const advance = number - this.#highest;
      if (advance >= this.size) {
        this.#bits.fill(0);
      } else {
        for (let n = this.#highest + 1; n < number; n++) {
          const slot = n % this.size;
          this.#bits[slot >>> 5] &= ~(1 << (slot & 31));
        }
      }
      this.#highest = number;
    }
    const slot = number % this.size;
    this.#bits[slot >>> 5] |= 1 << (slot & 31);
    return true;
  }

  /** Forgets everything (the peer rebooted and numbers start again). */
  reset(): void {
    this.#bits.fill(0);
    this.#highest = -1;
  }
}
