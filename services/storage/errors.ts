/**
 * Typed errors of the object store. Each names the object (by ID, never by
 * key) and the values involved, so a caller can tell what went wrong.
 *
 * @module
 */

export { CorruptObjectError } from "./object_crypto.ts";
export { ConditionFailedError, DiskError } from "./disk.ts";

/** A write would take a user's usage past the quota of their root. */
export class QuotaExceededError extends Error {
  constructor(
    readonly rootName: string,
    readonly usedBytes: number,
    readonly requestedBytes: number,
    readonly quotaBytes: number,
  ) {
    super(
      `quota of root ${JSON.stringify(rootName)} exceeded: ${usedBytes} ` +
        `bytes used + ${requestedBytes} requested > ${quotaBytes} allowed`,
    );
    this.name = "QuotaExceededError";
  }
}

/** The object does not exist (never created, or removed). */
export class ObjectNotFoundError extends Error {
  constructor(readonly objectId: string, what = "object") {
    super(`${what} ${objectId} does not exist`);
    this.name = "ObjectNotFoundError";
  }
}

/** The object exists but is of another kind than the operation needs. */
export class WrongKindError extends Error {
  constructor(objectId: string, expected: string, actual: string) {
    super(`object ${objectId} is a ${actual}, expected a ${expected}`);
    this.name = "WrongKindError";
  }
}

/** A newer lease holder has taken the volume; this writer is fenced out. */
export class LeaseLostError extends Error {
  constructor(
    readonly objectId: string,
    readonly heldEpoch: number,
    readonly currentEpoch: number,
  ) {
    super(
      `lease epoch ${heldEpoch} on volume ${objectId} was superseded by ` +
        `epoch ${currentEpoch}; this writer may no longer write`,
    );
    this.name = "LeaseLostError";
  }
}

/** A compare-and-set found another version than the caller expected. */
export class VersionMismatchError extends Error {
  constructor(
    readonly objectId: string,
    readonly expectedVersion: number,
    readonly currentVersion: number,
  ) {
    super(
      `assignable ${objectId} is at version ${currentVersion}, not ` +
        `${expectedVersion}`,
    );
    this.name = "VersionMismatchError";
  }
}
