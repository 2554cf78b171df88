/**
 * Level 2: SturdyRefs sealed to trust zones (proto/sturdyref.capnp).
 *
 * `save` (the standard `Persistent.save` of persistent.capnp) returns a
 * SturdyRef; a vat's restorer (`Restorer.restore`) turns one back into a
 * live capability. A ref is sealed (XChaCha20-Poly1305, ffi/native.ts)
 * under the secret of the trust zone that saved it, and a restorer serves
 * it only to a peer whose authenticated vat ID is a member of that zone.
 * So a vat outside the zone can neither read a ref's bytes nor have one
 * restored for it.
 *
 * Zone secrets: a shared zone's secret (storage, coordinators, gateways,
 * shells) is given to its members by the master; a vat's own secret (zone
 * `vat`) is derived from its persisted ed25519 seed, so its ephemeral refs
 * survive a restart of its process.
 *
 * @module
 */

import * as $ from "capnp-es";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { NONCE_BYTES, open, seal, SealError } from "../../ffi/native.ts";
import { TrustZone } from "../../proto/gen/cluster.ts";
import { Persistent } from "../../proto/gen/capnp/persistent.ts";
import {
  Restorer,
  SturdyRef,
  SturdyRefContent,
} from "../../proto/gen/sturdyref.ts";
import { AnyStruct, type Cap, toCap } from "./capability.ts";
import { RpcError } from "./errors.ts";
import { type RpcMetrics, rpcMetrics } from "./metrics.ts";
import { copyPointer } from "./_copy.ts";
import { serve } from "./mod.ts";

export { TrustZone };

/** What a SturdyRef designates, by kind (see proto/sturdyref.capnp). */
export type SturdyRefTarget =
  | { kind: "storage"; objectId: Uint8Array }
  | { kind: "grain"; grainId: string; objectId: Uint8Array }
  | { kind: "external"; url: string; token: Uint8Array }
  | { kind: "ephemeral"; objectId: Uint8Array };

/** A ref refused: outside its zone, not openable here, forged or bad. */
export class SturdyRefError extends RpcError {
  constructor(message: string, options?: ErrorOptions) {
    super("failed", message, options);
    this.name = "SturdyRefError";
  }
}

/** The members of one shared zone, and its secret if this vat is one. */
export interface ZoneMembership {
  zone: TrustZone;
  /** Vat IDs (ed25519 public keys) of the zone's members. */
  members: readonly Uint8Array[];
  /** The zone's 32-byte secret; only members have it. */
  secret?: Uint8Array;
}

/** Derives a vat's own zone secret from its persisted ed25519 seed. */
export function deriveVatSecret(seed: Uint8Array): Uint8Array {
  if (seed.length !== 32) {
    throw new RangeError(`vat seed must be 32 bytes, got ${seed.length}`);
  }
  return hkdf(
    sha256,
    seed,
    undefined,
    new TextEncoder().encode("blackrock sturdyref vat zone v1"),
    32,
  );
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function hex(bytes: Uint8Array): string {
  return Array.from(
    bytes.subarray(0, 8),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

const ZONE_NAMES: Record<number, string> = {
  0: "vat",
  1: "storage",
  2: "coordinators",
  3: "gateways",
  4: "shells",
};

/** The associated data that binds a ref's zone and saver to its seal. */
function associatedData(zone: number, savedBy: Uint8Array): Uint8Array {
  const ad = new Uint8Array(1 + savedBy.length);
  ad[0] = zone;
  ad.set(savedBy, 1);
  return ad;
}

/**
 * Seals and opens SturdyRefs for one vat: its ID, its own secret, and the
 * zones it knows (members of each, and secrets of those it belongs to).
 *
 * @example
 * ```ts
 * import { SturdyRefs, TrustZone } from "./sturdyref.ts";
 * const me = new Uint8Array(32).fill(1);
 * const other = new Uint8Array(32).fill(2);
 * const refs = new SturdyRefs({
 *   vatId: me,
 *   vatSecret: new Uint8Array(32).fill(9),
 *   zones: [{
 *     zone: TrustZone.STORAGE,
 *     members: [me, other],
 *     secret: new Uint8Array(32).fill(7),
 *   }],
 * });
 * const bytes = refs.save(
 *   { kind: "storage", objectId: new Uint8Array([1, 2, 3]) },
 *   TrustZone.STORAGE,
 * );
 * const target = refs.open(bytes, other);
 * console.assert(target.kind === "storage");
 * ```
 */
export class SturdyRefs {
  readonly vatId: Uint8Array;
  readonly #vatSecret: Uint8Array;
  readonly #zones = new Map<number, ZoneMembership>();
  readonly metrics: RpcMetrics;

  constructor(options: {
    vatId: Uint8Array;
    /** This vat's own secret, e.g. {@link deriveVatSecret} of its seed. */
    vatSecret: Uint8Array;
    zones?: readonly ZoneMembership[];
    metrics?: RpcMetrics;
  }) {
    if (options.vatSecret.length !== 32) {
      throw new RangeError("vatSecret must be 32 bytes");
    }
    this.vatId = options.vatId;
    this.#vatSecret = options.vatSecret;
    this.metrics = options.metrics ?? rpcMetrics;
    for (const zone of options.zones ?? []) {
      if (zone.zone === TrustZone.VAT) {
        throw new RangeError("zone `vat` is implied; list shared zones only");
      }
      if (zone.secret !== undefined && zone.secret.length !== 32) {
        throw new RangeError("zone secrets must be 32 bytes");
      }
      this.#zones.set(zone.zone, zone);
    }
  }

  /** Whether `vatId` may restore refs of `zone` saved by `savedBy`. */
  isMember(zone: number, vatId: Uint8Array, savedBy: Uint8Array): boolean {
    if (zone === TrustZone.VAT) return sameBytes(vatId, savedBy);
    const entry = this.#zones.get(zone);
    return entry !== undefined &&
      entry.members.some((member) => sameBytes(member, vatId));
  }

  #secret(zone: number, savedBy: Uint8Array): Uint8Array | undefined {
    if (zone === TrustZone.VAT) {
      return sameBytes(savedBy, this.vatId) ? this.#vatSecret : undefined;
    }
    return this.#zones.get(zone)?.secret;
  }

  /** Seals a SturdyRef to `zone`; this vat must be a member of it. */
  save(target: SturdyRefTarget, zone: TrustZone): Uint8Array {
    const secret = this.#secret(zone, this.vatId);
    if (secret === undefined) {
      throw new SturdyRefError(
        `this vat is not a member of zone ${
          ZONE_NAMES[zone]
        }; it cannot save refs there`,
      );
    }
    const content = new $.Message();
    writeTarget(content.initRoot(SturdyRefContent), target);
    const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    const sealed = seal(
      secret,
      nonce,
      new Uint8Array(content.toArrayBuffer()),
      associatedData(zone, this.vatId),
    );
    const message = new $.Message();
    const ref = message.initRoot(SturdyRef);
    ref.zone = zone;
    ref._initSavedBy(this.vatId.length).copyBuffer(this.vatId);
    ref._initNonce(nonce.length).copyBuffer(nonce);
    ref._initSealed(sealed.length).copyBuffer(sealed);
    return new Uint8Array(message.toArrayBuffer());
  }

  /**
   * Opens a SturdyRef presented by `presenter` (the peer's authenticated
   * vat ID). Throws SturdyRefError when the presenter is unknown or
   * outside the ref's zone, when this vat cannot open the zone's refs, or
   * when the bytes are forged or malformed.
   */
  open(
    bytes: Uint8Array | SturdyRef,
    presenter: Uint8Array | undefined,
  ): SturdyRefTarget {
    try {
      return this.#open(bytes, presenter);
    } catch (error) {
      this.metrics.restoresRefused++;
      if (error instanceof SturdyRefError) throw error;
      throw new SturdyRefError(`malformed SturdyRef: ${error}`, {
        cause: error,
      });
    }
  }

  #open(
    bytes: Uint8Array | SturdyRef,
    presenter: Uint8Array | undefined,
  ): SturdyRefTarget {
    const ref = bytes instanceof Uint8Array
      ? new $.Message(bytes, false).getRoot(SturdyRef)
      : bytes;
    const zone = ref.zone as number;
    const savedBy = ref.savedBy.toUint8Array();
    const zoneName = ZONE_NAMES[zone] ?? `#${zone}`;
    if (presenter === undefined) {
      throw new SturdyRefError(
        "the presenting peer is not authenticated; SturdyRefs need a vat ID",
      );
    }
    if (!this.isMember(zone, presenter, savedBy)) {
      throw new SturdyRefError(
        `vat ${
          hex(presenter)
        } is not a member of zone ${zoneName}, which sealed this SturdyRef`,
      );
    }
    const secret = this.#secret(zone, savedBy);
    if (secret === undefined) {
      throw new SturdyRefError(
        `this vat cannot open SturdyRefs of zone ${zoneName}`,
      );
    }
    let content: Uint8Array;
    try {
      content = open(
        secret,
        ref.nonce.toUint8Array(),
        ref.sealed.toUint8Array(),
        associatedData(zone, savedBy),
      );
    } catch (error) {
      if (error instanceof SealError || error instanceof RangeError) {
        throw new SturdyRefError(
          `SturdyRef of zone ${zoneName} does not open: forged or corrupt`,
        );
      }
      throw error;
    }
    return readTarget(
      new $.Message(content, false).getRoot(SturdyRefContent),
    );
  }
}

function writeTarget(content: SturdyRefContent, target: SturdyRefTarget) {
  switch (target.kind) {
    case "storage": {
      const ref = content._initStorage();
      ref._initObjectId(target.objectId.length).copyBuffer(target.objectId);
      return;
    }
    case "grain": {
      const ref = content._initGrain();
      ref.grainId = target.grainId;
      ref._initObjectId(target.objectId.length).copyBuffer(target.objectId);
      return;
    }
    case "external": {
      const ref = content._initExternal();
      ref.url = target.url;
      ref._initToken(target.token.length).copyBuffer(target.token);
      return;
    }
    case "ephemeral": {
      const ref = content._initEphemeral();
      ref._initObjectId(target.objectId.length).copyBuffer(target.objectId);
      return;
    }
  }
}

function readTarget(content: SturdyRefContent): SturdyRefTarget {
  switch (content.which()) {
    case SturdyRefContent.STORAGE:
      return {
        kind: "storage",
        objectId: content.storage.objectId.toUint8Array().slice(),
      };
    case SturdyRefContent.GRAIN:
      return {
        kind: "grain",
        grainId: content.grain.grainId,
        objectId: content.grain.objectId.toUint8Array().slice(),
      };
    case SturdyRefContent.EXTERNAL:
      return {
        kind: "external",
        url: content.external.url,
        token: content.external.token.toUint8Array().slice(),
      };
    case SturdyRefContent.EPHEMERAL:
      return {
        kind: "ephemeral",
        objectId: content.ephemeral.objectId.toUint8Array().slice(),
      };
    default:
      throw new SturdyRefError(`unknown SturdyRef kind ${content.which()}`);
  }
}

/** Turns an opened ref into a live capability, or throws (e.g. an
 * RpcError for an object that no longer exists). */
export type RestoreHandler = (
  target: SturdyRefTarget,
  presenter: Uint8Array,
) => Cap | Promise<Cap>;

/**
 * The Restorer a vat serves to one peer: `presenter` is that peer's
 * authenticated vat ID (`transport.peerVatId`), undefined on an
 * unauthenticated stream (every restore is then refused).
 */
export function serveRestorer(
  refs: SturdyRefs,
  presenter: Uint8Array | undefined,
  handler: RestoreHandler,
): Cap {
  return serve(Restorer, {
    async restore(params, results) {
      const target = refs.open(params.sturdyRef, presenter);
      const cap = await handler(target, presenter!);
      $.utils.setInterfacePointer(
        results.segment.message.addCap(cap),
        results.cap,
      );
    },
  });
}

/** Restores this vat's own ref without a peer (e.g. after a restart). */
export function restoreLocal(
  refs: SturdyRefs,
  bytes: Uint8Array,
  handler: RestoreHandler,
): Promise<Cap> {
  return Promise.resolve(handler(refs.open(bytes, refs.vatId), refs.vatId));
}

/**
 * The standard `Persistent` server for an object of this vat: `save`
 * returns a SturdyRef to `target`, sealed to `zone`. Serve it beside the
 * object's own interface with `serveAll`.
 */
export function persistentServer(
  refs: SturdyRefs,
  zone: TrustZone,
  target: () => SturdyRefTarget,
): $.Server {
  return new Persistent.Server({
    // deno-lint-ignore require-await
    async save(_params, results) {
      const bytes = refs.save(target(), zone);
      const ref = new $.Message(bytes, false).getRoot(SturdyRef);
      copyPointer(ref, results.sturdyRef);
    },
  });
}

/** Calls `Persistent.save` on a capability; resolves with the ref's bytes. */
export async function save(
  client: { client: $.Client } | Cap,
): Promise<Uint8Array> {
  const cap = "client" in client ? toCap(client.client) : client;
  const persistent = new Persistent.Client(cap);
  const results = await persistent.save().promise();
  const ref = $.utils.getAs(SturdyRef, results.sturdyRef as $.Struct);
  const message = new $.Message();
  message.setRoot(ref);
  return new Uint8Array(message.toArrayBuffer());
}

/**
 * Asks a restorer for the capability a SturdyRef names; the result is
 * usable at once (pipelined) as a client of `iface`.
 */
export function restore<Client>(
  restorer: InstanceType<typeof Restorer.Client>,
  bytes: Uint8Array,
  iface: { readonly Client: new (client: $.Client) => Client },
): Client {
  const ref = new $.Message(bytes, false).getRoot(SturdyRef);
  const promise = restorer.restore((params) => {
    params.sturdyRef = ref;
  });
  return new iface.Client(
    promise.pipeline.getPipeline(AnyStruct, 0).client(),
  );
}

export { Restorer, SturdyRef };
