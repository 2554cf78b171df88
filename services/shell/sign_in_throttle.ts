/**
 * Throttling of failed sign-ins, per account name and per client address,
 * so that passwords cannot be guessed at the speed of the network.
 *
 * After a few free failures each further failure locks the key for twice
 * as long as the last one (1 s, 2 s, 4 s, ... up to `maxLockMs`). A
 * successful sign-in clears the account's count; a key with no failure for
 * `forgetMs` is forgotten. An address gets more free failures than an
 * account, since many people may share one address behind NAT.
 *
 * The counts live in this replica's memory: with several shell replicas
 * an attacker spread over them gets one budget per replica, which still
 * bounds guessing to a few attempts per lock period.
 *
 * @module
 */

/** The throttle's limits; every field has a default. */
export interface ThrottleLimits {
  /** Failures an account may have before it is locked. */
  freeAccountFailures: number;
  /** Failures an address may have before it is locked. */
  freeAddressFailures: number;
  /** Length of the first lock; each further failure doubles it. */
  firstLockMs: number;
  maxLockMs: number;
  /** A key with no failure for this long starts over. */
  forgetMs: number;
  /** Keys kept at most; the oldest go first beyond it (memory bound). */
  maxKeys: number;
}

const DEFAULT_LIMITS: ThrottleLimits = {
  freeAccountFailures: 5,
  freeAddressFailures: 20,
  firstLockMs: 1000,
  maxLockMs: 15 * 60_000,
  forgetMs: 15 * 60_000,
  maxKeys: 100_000,
};

interface Entry {
  failures: number;
  lastFailureAt: number;
  lockedUntil: number;
}

/** Counts failed sign-ins and says when a key must wait. */
export class SignInThrottle {
  readonly limits: ThrottleLimits;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();

  constructor(
    limits: Partial<ThrottleLimits> = {},
    now: () => number = Date.now,
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.#now = now;
  }

  /** Milliseconds the caller must still wait before trying to sign in to
   * `account` from `address`; 0 when it may try now. */
  waitMs(account: string, address: string): number {
    const now = this.#now();
    return Math.max(
      0,
      this.#lockedUntil(`account:${account}`, now) - now,
      this.#lockedUntil(`address:${address}`, now) - now,
    );
  }

  /** Records a wrong password (or unknown account). */
  failed(account: string, address: string): void {
    const now = this.#now();
    this.#fail(`account:${account}`, this.limits.freeAccountFailures, now);
    this.#fail(`address:${address}`, this.limits.freeAddressFailures, now);
  }

  /** Records a successful sign-in: the account starts over. The address
   * keeps its count, so one known password does not reset guessing at
   * others from the same address. */
  succeeded(account: string): void {
    this.#entries.delete(`account:${account}`);
  }

  #lockedUntil(key: string, now: number): number {
    const entry = this.#entries.get(key);
    if (entry === undefined) return 0;
    if (now - entry.lastFailureAt > this.limits.forgetMs) {
      this.#entries.delete(key);
      return 0;
    }
    return entry.lockedUntil;
  }

  #fail(key: string, free: number, now: number): void {
    let entry = this.#entries.get(key);
    if (
      entry === undefined || now - entry.lastFailureAt > this.limits.forgetMs
    ) {
      entry = { failures: 0, lastFailureAt: now, lockedUntil: 0 };
    }
    entry.failures++;
    entry.lastFailureAt = now;
    if (entry.failures >= free) {
      const doublings = Math.min(entry.failures - free, 30);
      const lockMs = Math.min(
        this.limits.firstLockMs * 2 ** doublings,
        this.limits.maxLockMs,
      );
      entry.lockedUntil = now + lockMs;
    }
    // Re-inserting keeps the map in order of last failure, oldest first.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    while (this.#entries.size > this.limits.maxKeys) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
  }
}
