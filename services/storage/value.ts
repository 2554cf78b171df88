/**
 * Assignables and immutables: a Cap'n Proto value stored whole, with the
 * capabilities it holds kept as SturdyRef bytes beside it (the service
 * layer saves and restores them; here they are opaque).
 *
 * An immutable's head is written once with `If-None-Match`. An assignable's
 * head carries a version that goes up by one on each set; a set names the
 * version it replaces and the disk's `If-Match` makes the compare-and-set
 * atomic across storage nodes.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { ConditionFailedError } from "./disk.ts";
import {
  contentKeyOf,
  CorruptObjectError,
  newVersionTag,
  objectIdOf,
  openPiece,
  sealPiece,
} from "./object_crypto.ts";
import {
  ObjectNotFoundError,
  VersionMismatchError,
  WrongKindError,
} from "./errors.ts";
import type { StoreContext } from "./context.ts";
import type { ObjectKind } from "./ownership.ts";

/** Largest value (content plus SturdyRefs) an object may hold. */
export const MAX_VALUE_BYTES = 4 * 1024 * 1024;

/** A stored value: serialized Cap'n Proto bytes and the SturdyRefs of the
 * capabilities its cap table points at, in order. */
export interface StoredValue {
  content: Uint8Array;
  sturdyRefs: Uint8Array[];
}

interface ValueHead {
  version: number;
  commit: string;
  content: string;
  sturdyRefs: string[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Bytes a value counts against its owner's quota. */
export function valueBytes(value: StoredValue): number {
  return value.content.length +
    value.sturdyRefs.reduce((sum, ref) => sum + ref.length, 0);
}

function checkValue(value: StoredValue): void {
  const bytes = valueBytes(value);
  if (bytes > MAX_VALUE_BYTES) {
    throw new RangeError(
      `value of ${bytes} bytes is over the ${MAX_VALUE_BYTES}-byte limit`,
    );
  }
}

function encodeHead(version: number, value: StoredValue): ValueHead {
  return {
    version,
    commit: newVersionTag(),
    content: Buffer.from(value.content).toString("base64"),
    sturdyRefs: value.sturdyRefs.map((ref) =>
      Buffer.from(ref).toString("base64")
    ),
  };
}

function decodeValue(head: ValueHead): StoredValue {
  return {
    content: new Uint8Array(Buffer.from(head.content, "base64")),
    sturdyRefs: head.sturdyRefs.map((ref) =>
      new Uint8Array(Buffer.from(ref, "base64"))
    ),
  };
}

class ValueObject {
  readonly id: string;
  readonly contentKey: Uint8Array;
  constructor(readonly context: StoreContext, key: Uint8Array) {
    this.id = objectIdOf(key);
    this.contentKey = contentKeyOf(key);
  }

  seal(head: ValueHead): Uint8Array {
    return sealPiece(
      this.contentKey,
      { objectId: this.id, piece: "head" },
      encoder.encode(JSON.stringify(head)),
      this.context.sealMode,
    );
  }

  async load(
    kind: ObjectKind,
  ): Promise<{ head: ValueHead; etag: string }> {
    const stored = await this.context.disk.get(`${this.id}/head`);
    if (stored === null) {
      const meta = await this.context.ownership.read(this.id);
      if (meta === null) throw new ObjectNotFoundError(this.id, kind);
      if (meta.record.kind !== kind) {
        throw new WrongKindError(this.id, kind, meta.record.kind);
      }
      throw new CorruptObjectError(`head of ${kind} ${this.id} is missing`);
    }
    // The ETag first: opening in place changes the bytes it is made from.
    const etag = stored.etag;
    const plain = openPiece(
      this.contentKey,
      { objectId: this.id, piece: "head" },
      stored.data,
      this.context.sealMode,
    );
    return { head: JSON.parse(decoder.decode(plain)), etag };
  }
}

/** Creates an assignable (version 0) or immutable holding `value`. */
export async function createValue(
  context: StoreContext,
  parentId: string,
  key: Uint8Array,
  kind: "assignable" | "immutable",
  value: StoredValue,
): Promise<void> {
  checkValue(value);
  const object = new ValueObject(context, key);
  await context.ownership.addChild(parentId, object.id, kind);
  try {
    await context.ownership.charge(object.id, valueBytes(value), async () => {
      await context.disk.put(
        `${object.id}/head`,
        object.seal(encodeHead(0, value)),
        { ifNoneMatch: true },
      );
    });
  } catch (error) {
    await context.ownership.remove(object.id);
    throw error;
  }
}

/** Reads an assignable's or immutable's value and version. */
export async function getValue(
  context: StoreContext,
  key: Uint8Array,
  kind: "assignable" | "immutable",
): Promise<{ value: StoredValue; version: number }> {
  const { head } = await new ValueObject(context, key).load(kind);
  return { value: decodeValue(head), version: head.version };
}

/**
 * Replaces an assignable's value if it is still at `expectedVersion`;
 * returns the new version. Throws VersionMismatchError otherwise, and
 * QuotaExceededError if the growth does not fit; either way the value is
 * left as it was.
 */
export async function setValue(
  context: StoreContext,
  key: Uint8Array,
  expectedVersion: number,
  value: StoredValue,
): Promise<number> {
  checkValue(value);
  const object = new ValueObject(context, key);
  const { head, etag } = await object.load("assignable");
  if (head.version !== expectedVersion) {
    throw new VersionMismatchError(object.id, expectedVersion, head.version);
  }
  const next = encodeHead(head.version + 1, value);
  const deltaBytes = valueBytes(value) - valueBytes(decodeValue(head));
  await context.ownership.charge(object.id, deltaBytes, async () => {
    try {
      await context.disk.put(`${object.id}/head`, object.seal(next), {
        ifMatch: etag,
      });
    } catch (error) {
      if (!(error instanceof ConditionFailedError)) throw error;
      const now = await object.load("assignable");
      if (now.head.commit === next.commit) return;
      throw new VersionMismatchError(
        object.id,
        expectedVersion,
        now.head.version,
      );
    }
  });
  return next.version;
}
