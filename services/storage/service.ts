/**
 * The storage role's RPC surface (proto/storage.capnp) over an
 * {@link ObjectStore}.
 *
 * Every object capability is served together with `Persistent`: saving it
 * gives a SturdyRef sealed to the storage zone whose content is the
 * object's kind and key (see {@link encodeObjectRef}). The key is kept only
 * by the live capability and wiped when the capability is released.
 *
 * @module
 */
import * as $ from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import { capabilityAt } from "../rpc/capability.ts";
import {
  persistentServer,
  save,
  type SturdyRefs,
  TrustZone,
} from "../rpc/sturdyref.ts";
import {
  Assignable,
  Blob,
  BlobUpload,
  Immutable,
  StorageFactory,
  StorageNode,
  type StoredValue as StoredValueStruct,
  type Usage,
  UserRoot,
  Volume,
  VolumeWriter,
} from "../../proto/gen/storage.ts";
import type { Owner } from "./store.ts";
import { ObjectStore } from "./store.ts";
import type { StoredValue } from "./value.ts";
import { OBJECT_KEY_BYTES } from "./object_crypto.ts";
import type { Logger } from "../runtime/log.ts";

/** Kinds of object capability a storage SturdyRef can name. */
export enum RefKind {
  Blob = 1,
  Volume = 2,
  VolumeWriter = 3,
  Assignable = 4,
  Immutable = 5,
}

/** What a storage SturdyRef holds: the object's kind, key, and for a
 * volume writer its lease epoch. */
export interface ObjectRef {
  kind: RefKind;
  key: Uint8Array;
  epoch?: number;
}

/** Encodes an object ref as the `objectId` of a StorageRef. */
export function encodeObjectRef(ref: ObjectRef): Uint8Array {
  const out = new Uint8Array(1 + OBJECT_KEY_BYTES + 8);
  out[0] = ref.kind;
  out.set(ref.key, 1);
  new DataView(out.buffer).setBigUint64(
    1 + OBJECT_KEY_BYTES,
    BigInt(ref.epoch ?? 0),
  );
  return out;
}

/** Decodes {@link encodeObjectRef}; throws RangeError for anything else. */
export function decodeObjectRef(bytes: Uint8Array): ObjectRef {
  if (bytes.length !== 1 + OBJECT_KEY_BYTES + 8) {
    throw new RangeError(`storage ref of ${bytes.length} bytes is malformed`);
  }
  const kind = bytes[0];
  if (!(kind in RefKind)) {
    throw new RangeError(`storage ref names unknown kind ${kind}`);
  }
  const epoch = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
    .getBigUint64(1 + OBJECT_KEY_BYTES);
  return {
    kind,
    key: bytes.slice(1, 1 + OBJECT_KEY_BYTES),
    epoch: Number(epoch),
  };
}

/** Largest read a blob or volume call answers. */
const MAX_READ_BYTES = 4 * 1024 * 1024;

/** Turns any error into an RPC exception whose reason starts with the
 * error's name, so remote callers can tell the kinds apart. */
function asRpcError(error: unknown): rpc.RpcError {
  if (error instanceof rpc.RpcError) return error;
  if (error instanceof Error) {
    return new rpc.RpcError("failed", `${error.name}: ${error.message}`);
  }
  return new rpc.RpcError("failed", String(error));
}

/** The implementation a generated interface's Server constructor takes. */
// deno-lint-ignore no-explicit-any
type TargetOf<I extends { Server: new (target: any) => unknown }> =
  ConstructorParameters<I["Server"]>[0];

// deno-lint-ignore no-explicit-any
type Methods = Record<string, (...args: any[]) => Promise<void>>;

/** Wraps every method so that errors reach the caller as typed reasons. */
function guarded<T extends Methods>(methods: T): T {
  const out: Methods = {};
  for (const [name, method] of Object.entries(methods)) {
    out[name] = async (...args: unknown[]) => {
      try {
        await method(...args);
      } catch (error) {
        throw asRpcError(error);
      }
    };
  }
  return out as T;
}

function setData(
  target: { _initData(length: number): $.Data },
  bytes: Uint8Array,
) {
  target._initData(bytes.length).copyBuffer(bytes);
}

function fillUsage(
  usage: Usage,
  value: { ownBytes: number; subtreeBytes: number },
) {
  usage.ownBytes = BigInt(value.ownBytes);
  usage.subtreeBytes = BigInt(value.subtreeBytes);
}

function toSafeNumber(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(`${what} ${value} is too large`);
  }
  return Number(value);
}

/**
 * A byte stream with a bounded buffer between BlobUpload.write calls and
 * the store's upload loop: a write resolves once its bytes are queued
 * below the limit, so a fast client cannot fill the node's memory.
 */
class UploadQueue implements AsyncIterable<Uint8Array> {
  #items: Uint8Array[] = [];
  #bytes = 0;
  #ended = false;
  #failure: Error | undefined;
  #wakeReader: (() => void) | undefined;
  #writerWaiters: (() => void)[] = [];

  constructor(readonly limitBytes: number) {}

  async push(data: Uint8Array): Promise<void> {
    if (this.#ended) throw new RangeError("write after done");
    this.#items.push(data);
    this.#bytes += data.length;
    this.#wakeReader?.();
    while (this.#bytes > this.limitBytes && this.#failure === undefined) {
      await new Promise<void>((resolve) => this.#writerWaiters.push(resolve));
    }
  }

  end(): void {
    this.#ended = true;
    this.#wakeReader?.();
  }

  fail(error: Error): void {
    this.#failure ??= error;
    this.#wakeReader?.();
    for (const wake of this.#writerWaiters.splice(0)) wake();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      if (this.#failure !== undefined) throw this.#failure;
      const item = this.#items.shift();
      if (item !== undefined) {
        this.#bytes -= item.length;
        if (this.#bytes <= this.limitBytes) {
          for (const wake of this.#writerWaiters.splice(0)) wake();
        }
        yield item;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
      this.#wakeReader = undefined;
    }
  }
}

/** Options of {@link StorageService}. */
export interface StorageServiceOptions {
  store: ObjectStore;
  /** Seals and opens this node's SturdyRefs; the node must be a member of
   * the storage zone with its secret. */
  refs: SturdyRefs;
  /** Whether a vat may open user roots (coordinators, shells). */
  mayOpenRoots: (vatId: Uint8Array | undefined) => boolean;
  log?: Logger;
}

/** Serves the storage objects of one node. */
export class StorageService {
  readonly store: ObjectStore;
  readonly refs: SturdyRefs;
  readonly #mayOpenRoots: (vatId: Uint8Array | undefined) => boolean;

  constructor(options: StorageServiceOptions) {
    this.store = options.store;
    this.refs = options.refs;
    this.#mayOpenRoots = options.mayOpenRoots;
  }

  /** The bootstrap capability for a connection from `peerVatId`. */
  node(peerVatId: Uint8Array | undefined): rpc.Cap {
    return rpc.serve(
      StorageNode,
      guarded({
        root: async (params, results) => {
          if (!this.#mayOpenRoots(peerVatId)) {
            throw new rpc.RpcError(
              "failed",
              "PermissionError: this vat may not open user roots",
            );
          }
          const name = params.name;
          await this.store.ensureRoot(name);
          results.root = new UserRoot.Client(this.#userRoot(name));
        },
        restore: async (params, results) => {
          const bytes = params.sturdyRef.toUint8Array().slice();
          const cap = await this.restore(bytes, peerVatId);
          $.utils.setInterfacePointer(
            results.segment.message.addCap(cap),
            results.cap,
          );
        },
      }) as rpc.ServerOf<typeof StorageNode>,
    );
  }

  /** Restores a storage SturdyRef presented by `presenter`. */
  async restore(
    bytes: Uint8Array,
    presenter: Uint8Array | undefined,
  ): Promise<rpc.Cap> {
    const target = this.refs.open(bytes, presenter);
    if (target.kind !== "storage") {
      throw new rpc.RpcError(
        "failed",
        `SturdyRefError: a storage node restores storage refs, not ${target.kind}`,
      );
    }
    const ref = decodeObjectRef(target.objectId);
    // The object must still exist; a removed object's refs are dead.
    const kind = await this.store.kindOf(ref.key);
    const expected = {
      [RefKind.Blob]: "blob",
      [RefKind.Volume]: "volume",
      [RefKind.VolumeWriter]: "volume",
      [RefKind.Assignable]: "assignable",
      [RefKind.Immutable]: "immutable",
    }[ref.kind];
    if (kind !== expected) {
      throw new RangeError(`storage ref says ${expected}, object is a ${kind}`);
    }
    return this.objectCap(ref);
  }

  /** A live capability for the object. */
  objectCap(ref: ObjectRef): rpc.Cap {
    switch (ref.kind) {
      case RefKind.Blob:
        return this.#blob(ref.key.slice());
      case RefKind.Volume:
        return this.#volume(ref.key.slice());
      case RefKind.VolumeWriter:
        return this.#writer(ref.key.slice(), ref.epoch ?? 0);
      case RefKind.Assignable:
        return this.#assignable(ref.key.slice());
      case RefKind.Immutable:
        return this.#immutable(ref.key.slice());
    }
  }

  #persistent(ref: () => ObjectRef): $.Server {
    return persistentServer(this.refs, TrustZone.STORAGE, () => ({
      kind: "storage",
      objectId: encodeObjectRef(ref()),
    }));
  }

  #userRoot(name: string): rpc.Cap {
    return rpc.serve(
      UserRoot,
      guarded({
        setQuota: async (params) => {
          await this.store.ensureRoot(
            name,
            toSafeNumber(params.quotaBytes, "quota"),
          );
        },
        usage: async (_params, results) => {
          const usage = await this.store.rootUsage(name);
          results.usedBytes = BigInt(usage.usedBytes);
          results.quotaBytes = BigInt(usage.quotaBytes);
        },
        // deno-lint-ignore require-await
        factory: async (_params, results) => {
          results.factory = new StorageFactory.Client(
            this.#factory({ root: name }),
          );
        },
      }) as rpc.ServerOf<typeof UserRoot>,
    );
  }

  #factory(owner: Owner): rpc.Cap {
    return rpc.serve(
      StorageFactory,
      guarded({
        newVolume: async (_params, results) => {
          const key = await this.store.createVolume(owner);
          results.volume = new Volume.Client(this.#volume(key));
        },
        // deno-lint-ignore require-await
        uploadBlob: async (_params, results) => {
          results.upload = new BlobUpload.Client(this.#upload(owner));
        },
        newAssignable: async (params, results) => {
          const value = await this.#storeValue(params.value);
          const key = await this.store.createAssignable(owner, value);
          results.assignable = new Assignable.Client(this.#assignable(key));
        },
        newImmutable: async (params, results) => {
          const value = await this.#storeValue(params.value);
          const key = await this.store.createImmutable(owner, value);
          results.immutable = new Immutable.Client(this.#immutable(key));
        },
      }) as rpc.ServerOf<typeof StorageFactory>,
    );
  }

  #upload(owner: Owner): rpc.Cap {
    const queue = new UploadQueue(16 * 1024 * 1024);
    const creating = this.store.createBlob(owner, queue);
    let failure: unknown;
    creating.catch((error) => {
      failure = error;
      queue.fail(error);
    });
    let finished = false;
    return rpc.serve(
      BlobUpload,
      guarded({
        write: async (params) => {
          if (failure !== undefined) throw failure;
          await queue.push(params.data.toUint8Array().slice());
          if (failure !== undefined) throw failure;
        },
        done: async (_params, results) => {
          queue.end();
          const key = await creating;
          finished = true;
          results.blob = new Blob.Client(this.#blob(key));
        },
      }) as rpc.ServerOf<typeof BlobUpload>,
      () => {
        if (!finished) queue.fail(new Error("upload abandoned before done"));
      },
    );
  }

  /** The common methods of every object capability. */
  #objectMethods(key: Uint8Array) {
    return {
      usage: async (
        _params: unknown,
        results: { usage: Usage; _initUsage(): Usage },
      ) => {
        fillUsage(results._initUsage(), await this.store.usage(key));
      },
      // deno-lint-ignore require-await
      factory: async (
        _params: unknown,
        results: { factory: InstanceType<typeof StorageFactory.Client> },
      ) => {
        results.factory = new StorageFactory.Client(this.#factory({ key }));
      },
      remove: async () => {
        await this.store.remove(key);
      },
    };
  }

  #blob(key: Uint8Array): rpc.Cap {
    const reader = this.store.blob(key);
    const server = new Blob.Server(
      guarded({
        size: async (_params, results) => {
          results.sizeBytes = BigInt(await reader.size());
        },
        read: async (params, results) => {
          const length = Math.min(params.lengthBytes, MAX_READ_BYTES);
          const offset = toSafeNumber(params.offsetBytes, "offset");
          const parts: Uint8Array[] = [];
          let total = 0;
          for await (const part of reader.read(offset, length)) {
            parts.push(part);
            total += part.length;
          }
          const data = results._initData(total);
          const view = data.toUint8Array();
          let at = 0;
          for (const part of parts) {
            view.set(part, at);
            at += part.length;
          }
        },
        ...this.#objectMethods(key),
      }) as TargetOf<typeof Blob>,
    );
    return rpc.serveAll(
      [server, this.#persistent(() => ({ kind: RefKind.Blob, key }))],
      () => {
        key.fill(0);
        reader.forget();
      },
    );
  }

  #volume(key: Uint8Array): rpc.Cap {
    const volume = this.store.volume(key);
    const server = new Volume.Server(
      guarded({
        read: async (params, results) => {
          checkReadSize(params.blockCount);
          setData(
            results,
            await volume.read(params.blockIndex, params.blockCount),
          );
        },
        takeLease: async (_params, results) => {
          // Its own reader: the writer forgets its key when released,
          // while this volume capability may live on.
          const writer = await this.store.volume(key).takeLease();
          results.writer = new VolumeWriter.Client(
            this.#writer(key.slice(), writer.epoch, writer),
          );
        },
        stat: async (_params, results) => {
          const stat = await volume.stat();
          results.usedBlocks = BigInt(stat.usedBlocks);
          results.epoch = BigInt(stat.epoch);
        },
        ...this.#objectMethods(key),
      }) as TargetOf<typeof Volume>,
    );
    return rpc.serveAll(
      [server, this.#persistent(() => ({ kind: RefKind.Volume, key }))],
      () => {
        key.fill(0);
        volume.forget();
      },
    );
  }

  #writer(
    key: Uint8Array,
    epoch: number,
    existing?: ReturnType<ReturnType<ObjectStore["volume"]>["resumeLease"]>,
  ): rpc.Cap {
    const writer = existing ?? this.store.volume(key).resumeLease(epoch);
    const server = new VolumeWriter.Server(
      guarded({
        write: async (params) => {
          await writer.write(params.blockIndex, params.data.toUint8Array());
        },
        zero: async (params) => {
          await writer.zero(
            params.blockIndex,
            toSafeNumber(params.blockCount, "block count"),
          );
        },
        sync: async () => {
          await writer.sync();
        },
        read: async (params, results) => {
          checkReadSize(params.blockCount);
          setData(
            results,
            await writer.read(params.blockIndex, params.blockCount),
          );
        },
        // deno-lint-ignore require-await
        epoch: async (_params, results) => {
          results.epoch = BigInt(writer.epoch);
        },
      }) as TargetOf<typeof VolumeWriter>,
    );
    return rpc.serveAll(
      [
        server,
        this.#persistent(() => ({ kind: RefKind.VolumeWriter, key, epoch })),
      ],
      () => {
        key.fill(0);
        writer.volume.forget();
      },
    );
  }

  #assignable(key: Uint8Array): rpc.Cap {
    const server = new Assignable.Server(
      guarded({
        get: async (_params, results) => {
          const { value, version } = await this.store.getValue(
            key,
            "assignable",
          );
          await this.#loadValue(value, results._initValue());
          results.version = BigInt(version);
        },
        set: async (params, results) => {
          const value = await this.#storeValue(params.value);
          const version = await this.store.setValue(
            key,
            toSafeNumber(params.expectedVersion, "version"),
            value,
          );
          results.version = BigInt(version);
        },
        ...this.#objectMethods(key),
      }) as TargetOf<typeof Assignable>,
    );
    return rpc.serveAll(
      [server, this.#persistent(() => ({ kind: RefKind.Assignable, key }))],
      () => key.fill(0),
    );
  }

  #immutable(key: Uint8Array): rpc.Cap {
    const server = new Immutable.Server(
      guarded({
        get: async (_params, results) => {
          const { value } = await this.store.getValue(key, "immutable");
          await this.#loadValue(value, results._initValue());
        },
        ...this.#objectMethods(key),
      }) as TargetOf<typeof Immutable>,
    );
    return rpc.serveAll(
      [server, this.#persistent(() => ({ kind: RefKind.Immutable, key }))],
      () => key.fill(0),
    );
  }

  /** Saves each capability of a value as a SturdyRef. */
  async #storeValue(value: StoredValueStruct): Promise<StoredValue> {
    const sturdyRefs: Uint8Array[] = [];
    const slots = value.caps;
    for (let i = 0; i < slots.length; i++) {
      const cap = capabilityAt(slots.get(i).cap, []);
      let bytes: Uint8Array;
      try {
        bytes = await save(cap);
        // Refused now rather than on a later read: only refs a storage
        // node can restore may be kept.
        this.refs.open(bytes, this.refs.vatId);
      } catch (error) {
        throw new RangeError(
          `capability ${i} of the value cannot be stored: ${
            error instanceof Error ? error.message : error
          }`,
        );
      }
      sturdyRefs.push(bytes);
    }
    return { content: value.content.toUint8Array().slice(), sturdyRefs };
  }

  /** Fills a result value, restoring each SturdyRef to a capability. */
  async #loadValue(value: StoredValue, out: StoredValueStruct): Promise<void> {
    setData({ _initData: (n) => out._initContent(n) }, value.content);
    const slots = out._initCaps(value.sturdyRefs.length);
    for (let i = 0; i < value.sturdyRefs.length; i++) {
      let cap: rpc.Cap;
      try {
        cap = await this.restore(value.sturdyRefs[i], this.refs.vatId);
      } catch (error) {
        throw new RangeError(
          `capability ${i} of the value cannot be restored: ${
            error instanceof Error ? error.message : error
          }`,
        );
      }
      $.utils.setInterfacePointer(
        out.segment.message.addCap(cap),
        slots.get(i).cap,
      );
    }
  }
}

function checkReadSize(blockCount: number): void {
  if (blockCount * 4096 > MAX_READ_BYTES) {
    throw new RangeError(
      `a read covers at most ${
        MAX_READ_BYTES / 4096
      } blocks, got ${blockCount}`,
    );
  }
}
