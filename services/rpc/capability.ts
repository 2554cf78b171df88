/**
 * Capabilities and answers inside one vat: the local half of the engine.
 *
 * A {@link Cap} is one reference to a capability. It implements capnp-es's
 * `Client`, so the classes that `capnp-es` generates (`Foo.Client`) wrap it
 * directly and get typed methods and promise pipelining. An {@link Ans} is
 * the answer to one call; it implements capnp-es's `Answer`, which is what
 * the generated `$Results$Promise` classes pipeline on.
 *
 * Ordering rule (E-order): calls made on one Cap are delivered to the
 * object in the order they were made, even while the Cap is a promise that
 * later resolves. Every promise here forwards its queue synchronously, in
 * order, the moment it resolves; the connection relies on that when it
 * answers a Disembargo.
 *
 * @module
 */

import * as $ from "capnp-es";
import { RpcError, toRpcError } from "./errors.ts";
import { newMessage } from "./_message.ts";

/** A call as capnp-es describes it: method plus params (built or a
 * builder function). */
// deno-lint-ignore no-explicit-any
export type AnyCall = $.Call<any, any>;

/** capnp-es's `Answer` (not exported by name from its index). */
export type CapnpAnswer<R extends $.Struct> = $.Pipeline<
  R,
  $.Struct,
  $.Struct
>["answer"];

/**
 * A call that arrived from a peer: its params live in the received
 * message, and `resultsAt` (when set) is where the Return message wants
 * the results, so a local server writes them there with no copy.
 */
// deno-lint-ignore no-explicit-any
export type NetworkCall = $.DataCall<any, any> & {
  resultsAt?: $.Pointer;
};

/** One step of a pipeline path: take pointer field `field` of a struct. */
export type PipelineOp = ReturnType<
  $.Pipeline<$.Struct, $.Struct, $.Struct>["transform"]
>[number];

/** A pipeline path from the root of some results. */
export type Transform = readonly PipelineOp[];

/** A struct of unknown type: params and results passing through. */
export class AnyStruct extends $.Struct {
  static readonly _capnp = {
    displayName: "AnyStruct",
    id: "0",
    size: new $.ObjectSize(0, 0),
  };
}

/** Marks a promise as handled so that an unobserved rejection does not
 * kill the process; awaiting it still sees the rejection. */
export function quiet<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {});
  return promise;
}

/** The key of a transform in per-answer caches. */
export function transformKey(transform: Transform): string {
  return transform.map((op) => op.field).join(".");
}

/**
 * Follows a pipeline path from the root of some results to the pointer it
 * names. Throws RpcError("failed") when a step lands on something that is
 * not a struct.
 */
export function followTransform(
  root: $.Pointer,
  transform: Transform,
): $.Pointer {
  let pointer = root;
  for (const op of transform) {
    if ($.utils.isNull(pointer)) return pointer;
    if ($.utils.getTargetPointerType(pointer) !== $.PointerType.STRUCT) {
      throw new RpcError(
        "failed",
        `pipeline step to field ${op.field} crosses a non-struct pointer`,
      );
    }
    const struct = new $.Struct(
      pointer.segment,
      pointer.byteOffset,
      pointer._capnp.depthLimit,
    );
    pointer = $.utils.getPointer(op.field, struct);
  }
  return pointer;
}

/**
 * The capability at a pipeline path of settled results: the path must end
 * on a capability pointer (or null, which gives a broken capability).
 */
export function capabilityAt(root: $.Pointer, transform: Transform): Cap {
  let pointer: $.Pointer;
  try {
    pointer = followTransform(root, transform);
  } catch (error) {
    return new BrokenCap(toRpcError(error));
  }
  if ($.utils.isNull(pointer)) {
    return new BrokenCap(
      new RpcError("failed", "pipelined on a null capability pointer"),
    );
  }
  const pointerType = $.utils.getTargetPointerType(pointer);
  if (pointerType !== $.PointerType.OTHER) {
    return new BrokenCap(
      new RpcError("failed", "pipelined on a field that is not a capability"),
    );
  }
  const capIndex = $.utils.getInterfacePointer(pointer);
  const table = pointer.segment.message._capnp.capTable ?? [];
  const client = table[capIndex];
  if (client === undefined) {
    return new BrokenCap(
      new RpcError(
        "failed",
        `capability index ${capIndex} is not in the table`,
      ),
    );
  }
  return toCap(client);
}

/**
 * One reference to a capability. `close()` drops the reference; when the
 * last one goes, a remote capability sends Release to its vat. A Cap that
 * is never closed is released when the garbage collector finds it (imports
 * only), or when its connection ends.
 */
export abstract class Cap implements $.Client {
  #refs = 1;

  /** Delivers one call, in order with earlier calls on this Cap. */
  protected abstract deliver(call: AnyCall): Ans;

  /** capnp-es `Client.call`: what generated client classes call. */
  call<P extends $.Struct, R extends $.Struct>(
    call: $.Call<P, R>,
  ): CapnpAnswer<R> {
    return this.send(call) as unknown as CapnpAnswer<R>;
  }

  /** Starts a call and returns its answer (engine-internal form). */
  send(call: AnyCall): Ans {
    if (this.#refs <= 0) {
      return new BrokenAnswer(
        new RpcError("failed", "call on a capability that was closed"),
      );
    }
    return this.deliver(call);
  }

  /** Adds a reference; each reference needs its own `close()`. */
  addRef(): this {
    if (this.#refs <= 0) {
      throw new RpcError("failed", "addRef on a capability that was closed");
    }
    this.#refs++;
    return this;
  }

  /** Drops one reference. Extra calls after the last one do nothing. */
  close(): void {
    if (this.#refs <= 0) return;
    this.#refs--;
    if (this.#refs === 0) this.dispose();
  }

  /** How many references are held (for tests and metrics). */
  get refCount(): number {
    return this.#refs;
  }

  /** Called once when the last reference is dropped. */
  protected dispose(): void {}

  /** For a promise that has settled: what it settled to. */
  resolved(): Cap | undefined {
    return undefined;
  }

  /** For an unsettled promise: resolves when it settles. Undefined for a
   * settled promise or a plain capability. */
  whenResolved(): Promise<Cap> | undefined {
    return undefined;
  }

  /** The connection this Cap points across, if it is remote. */
  get connection(): object | undefined {
    return undefined;
  }
}

/** Follows settled promises to the capability they settled to. */
export function shorten(cap: Cap): Cap {
  for (;;) {
    const next = cap.resolved();
    if (next === undefined) return cap;
    cap = next;
  }
}

/**
 * The answer to one call. Implements capnp-es's `Answer`; `struct()`
 * yields the results, `pipelineCap(path)` the capability at a path of the
 * results before they arrive.
 */
export abstract class Ans implements CapnpAnswer<$.Struct> {
  /** Resolves with the results' root pointer (a struct for a call; any
   * pointer for a bootstrap answer). */
  abstract results(): Promise<$.Pointer>;

  /** The capability at `transform` of the results, usable at once. The
   * answer owns it: callers must not close it. */
  abstract pipelineCap(transform: Transform): Cap;

  // deno-lint-ignore no-explicit-any
  struct(): Promise<any> {
    return this.results();
  }

  pipelineCall<P extends $.Struct, R extends $.Struct>(
    transform: PipelineOp[],
    call: $.Call<P, R>,
  ): CapnpAnswer<R> {
    return this.pipelineCap(transform).call(call);
  }

  /** Calls `callback` once the answer has settled either way. */
  onSettled(callback: () => void): void {
    this.results().then(callback, callback);
  }

  /** The outcome if the answer has already settled, without waiting. */
  peek(): { root?: $.Pointer; error?: RpcError } | undefined {
    return undefined;
  }

  /** The caller no longer wants the results: a call to a peer sends
   * Finish at once and settles as canceled; a local server sees its
   * {@link CallContext} signal abort. Nothing happens once settled. */
  cancel(): void {}

  /** What generated code calls when a pipelined client is closed: the
   * results' reference at that path is dropped once they arrive. (Not
   * what it resolves to further on: that may be a capability the results'
   * one points to, whose references are someone else's.) */
  pipelineClose(transform: PipelineOp[]): void {
    const path = [...transform];
    const outcome = this.peek();
    if (outcome !== undefined) {
      // Settled: release now, so that the peer hears of it before any
      // call made after this.
      if (outcome.root !== undefined) capabilityAt(outcome.root, path).close();
      return;
    }
    this.results().then(
      (root) => capabilityAt(root, path).close(),
      () => {},
    );
  }
}

/** A capability that fails every call with one error. Also stands for a
 * null capability pointer. */
export class BrokenCap extends Cap {
  constructor(readonly error: RpcError) {
    super();
  }

  protected deliver(_call: AnyCall): Ans {
    return new BrokenAnswer(this.error);
  }
}

/** An answer that failed. */
export class BrokenAnswer extends Ans {
  readonly #results: Promise<$.Pointer>;

  constructor(readonly error: RpcError) {
    super();
    this.#results = quiet(Promise.reject(error));
  }

  results(): Promise<$.Pointer> {
    return this.#results;
  }

  pipelineCap(_transform: Transform): Cap {
    return new BrokenCap(this.error);
  }
}

interface QueuedCall {
  call: AnyCall;
  answer: PromisedAnswer;
}

/**
 * A local promise for a capability: queues calls until it is resolved,
 * then hands them over in order and forwards every later call.
 */
export class PromiseCap extends Cap {
  #queue: QueuedCall[] = [];
  #target: Cap | undefined;
  #owned = false;
  readonly #settled: Promise<Cap>;
  #settle!: (cap: Cap) => void;

  constructor() {
    super();
    this.#settled = new Promise((resolve) => this.#settle = resolve);
  }

  protected deliver(call: AnyCall): Ans {
    if (this.#target !== undefined) return this.#target.send(call);
    const answer = new PromisedAnswer();
    // The params are built now: the builder may read state that changes
    // before the promise resolves.
    this.#queue.push({ call: $.copyCall(call), answer });
    return answer;
  }

  /**
   * Settles the promise; queued calls go to `target` in order, now. The
   * promise takes over the caller's reference to `target` and drops it
   * when its own last reference goes, unless `borrowed` is set (the
   * target then belongs to someone else, e.g. to an answer's results).
   */
  resolve(target: Cap, options?: { borrowed?: boolean }): void {
    if (this.#target !== undefined) {
      if (options?.borrowed !== true) target.close();
      return;
    }
    this.#target = target;
    this.#owned = options?.borrowed !== true;
    const queue = this.#queue;
    this.#queue = [];
    for (const { call, answer } of queue) answer.forward(target.send(call));
    // Calls queued before every reference was dropped still reach the
    // target; only then may it go.
    if (this.refCount === 0 && this.#owned) target.close();
    this.#settle(target);
  }

  /** Settles the promise to a broken capability. */
  reject(error: RpcError): void {
    this.resolve(new BrokenCap(error));
  }

  resolved(): Cap | undefined {
    return this.#target;
  }

  whenResolved(): Promise<Cap> | undefined {
    return this.#target === undefined ? this.#settled : undefined;
  }

  protected dispose(): void {
    if (this.#owned) this.#target?.close();
  }
}

/**
 * An answer settled later: by results (a local call), by an error, or by
 * forwarding to another answer (a call that was queued on a promise).
 */
export class PromisedAnswer extends Ans {
  #root: $.Pointer | undefined;
  #error: RpcError | undefined;
  #inner: Ans | undefined;
  // Made on first use: most answers are never pipelined on, and a server
  // answer's outcome is read through onSettled/peek without a promise.
  #pipelines: Map<string, PromiseCap> | undefined;
  #deferred: PromiseWithResolvers<$.Pointer> | undefined;
  #listeners: (() => void)[] | undefined;
  #onCancel: (() => void) | undefined;
  #canceled = false;

  get settled(): boolean {
    return this.#root !== undefined || this.#error !== undefined ||
      this.#inner !== undefined;
  }

  results(): Promise<$.Pointer> {
    if (this.#inner !== undefined) return this.#inner.results();
    if (this.#root !== undefined) return Promise.resolve(this.#root);
    if (this.#error !== undefined) return quiet(Promise.reject(this.#error));
    if (this.#deferred === undefined) {
      this.#deferred = Promise.withResolvers();
      quiet(this.#deferred.promise);
    }
    return this.#deferred.promise;
  }

  onSettled(callback: () => void): void {
    if (this.#inner !== undefined) this.#inner.onSettled(callback);
    else if (this.#root !== undefined || this.#error !== undefined) callback();
    else (this.#listeners ??= []).push(callback);
  }

  peek(): { root?: $.Pointer; error?: RpcError } | undefined {
    if (this.#inner !== undefined) return this.#inner.peek();
    if (this.#root !== undefined) return { root: this.#root };
    if (this.#error !== undefined) return { error: this.#error };
    return undefined;
  }

  pipelineCap(transform: Transform): Cap {
    if (this.#inner !== undefined) return this.#inner.pipelineCap(transform);
    if (this.#root !== undefined) return capabilityAt(this.#root, transform);
    if (this.#error !== undefined) return new BrokenCap(this.#error);
    const key = transformKey(transform);
    this.#pipelines ??= new Map();
    let cap = this.#pipelines.get(key);
    if (cap === undefined) {
      cap = new PromiseCap();
      this.#pipelines.set(key, cap);
    }
    return cap;
  }

  /** Settles with results whose root is `root`. */
  fulfill(root: $.Pointer): void {
    if (this.settled) return;
    this.#root = root;
    if (this.#pipelines !== undefined) {
      for (const [key, cap] of this.#pipelines) {
        cap.resolve(capabilityAt(root, parseKey(key)), { borrowed: true });
      }
      this.#pipelines = undefined;
    }
    this.#deferred?.resolve(root);
    this.#notify();
  }

  /** Settles with an error. */
  fail(error: RpcError): void {
    if (this.settled) return;
    this.#error = error;
    if (this.#pipelines !== undefined) {
      for (const cap of this.#pipelines.values()) cap.reject(error);
      this.#pipelines = undefined;
    }
    this.#deferred?.reject(error);
    this.#notify();
  }

  /** Runs `stop` if the caller cancels before the answer settles. */
  onCancel(stop: () => void): void {
    this.#onCancel = stop;
  }

  cancel(): void {
    if (this.#inner !== undefined) {
      this.#inner.cancel();
    } else if (!this.settled && !this.#canceled) {
      this.#canceled = true;
      this.#onCancel?.();
    }
  }

  /** Settles as whatever `inner` settles as; pipelines move over now. */
  forward(inner: Ans): void {
    if (this.settled) return;
    this.#inner = inner;
    if (this.#canceled) inner.cancel();
    if (this.#pipelines !== undefined) {
      for (const [key, cap] of this.#pipelines) {
        cap.resolve(inner.pipelineCap(parseKey(key)), { borrowed: true });
      }
      this.#pipelines = undefined;
    }
    const deferred = this.#deferred;
    if (deferred !== undefined) {
      inner.results().then(deferred.resolve, deferred.reject);
    }
    const listeners = this.#listeners;
    this.#listeners = undefined;
    for (const listener of listeners ?? []) inner.onSettled(listener);
  }

  #notify(): void {
    const listeners = this.#listeners;
    this.#listeners = undefined;
    for (const listener of listeners ?? []) listener();
  }
}

function parseKey(key: string): PipelineOp[] {
  if (key === "") return [];
  return key.split(".").map((field) => ({ field: Number(field) }));
}

/** What a server method gets beside its params and results. */
export interface CallContext {
  /** Aborts when the caller cancels the call (drops it before its
   * Return); its reason is an {@link RpcError}. A server may stop early
   * and throw; its results are then not wanted. */
  readonly signal: AbortSignal;
}

/**
 * A capability served by this vat: dispatches each call by interface ID
 * and method ordinal to a server made from a capnp-es generated
 * `Foo.Server` class. Calls run on a later microtask, one after another in
 * the order they arrive, never inside the caller's stack.
 */
export class LocalCap extends Cap {
  readonly #servers = new Map<bigint, $.Server>();
  readonly #onClose: (() => void) | undefined;
  #deferred = 0;

  constructor(servers: readonly $.Server[], onClose?: () => void) {
    super();
    for (const server of servers) {
      const first = server.methods[0];
      if (first === undefined) continue;
      this.#servers.set(first.interfaceId, server);
    }
    this.#onClose = onClose;
  }

  /** The interface IDs this capability implements. */
  get interfaceIds(): bigint[] {
    return [...this.#servers.keys()];
  }

  protected deliver(call: AnyCall): Ans {
    const { interfaceId, methodId } = call.method;
    const server = this.#servers.get(interfaceId);
    const method = server?.methods[methodId];
    if (
      server === undefined || method === undefined ||
      typeof method.impl !== "function"
    ) {
      return new BrokenAnswer(
        new RpcError(
          "unimplemented",
          `method ${methodId} of interface 0x${
            interfaceId.toString(16)
          } is not implemented by this capability`,
        ),
      );
    }
    let params: $.Struct;
    try {
      params = $.isDataCall(call)
        ? $.utils.getAs(method.ParamsClass, call.params)
        : $.placeParams(call, undefined);
    } catch (error) {
      return new BrokenAnswer(toRpcError(error));
    }
    const resultsAt = (call as NetworkCall).resultsAt;
    let results: $.Struct;
    if (resultsAt !== undefined) {
      results = new method.ResultsClass(
        resultsAt.segment,
        resultsAt.byteOffset,
      );
      $.utils.initStruct(method.ResultsClass._capnp.size, results);
    } else {
      results = newMessage().initRoot(method.ResultsClass);
    }
    const answer = new PromisedAnswer();
    const controller = new AbortController();
    answer.onCancel(() =>
      controller.abort(
        new RpcError("failed", "call was canceled by its caller"),
      )
    );
    const context: CallContext = { signal: controller.signal };
    const run = () =>
      (method.impl as (
        params: $.Struct,
        results: $.Struct,
        context: CallContext,
      ) => Promise<void> | void).call(server.target, params, results, context);
    // A call from a peer already runs on its own turn (the connection's
    // read loop) and starts at once; a local caller's call starts on a
    // later microtask, never inside the caller's own stack. Calls start in
    // the order they came either way: while any deferred call has not
    // started, a peer's call waits behind it.
    let started: Promise<void>;
    if (resultsAt !== undefined && this.#deferred === 0) {
      started = invoke(run);
    } else {
      this.#deferred++;
      started = Promise.resolve().then(() => {
        this.#deferred--;
        return run();
      });
    }
    started.then(
      () => answer.fulfill(results),
      (error) => answer.fail(toRpcError(error)),
    );
    return answer;
  }

  protected dispose(): void {
    this.#onClose?.();
  }
}

function invoke(run: () => Promise<void> | void): Promise<void> {
  try {
    return Promise.resolve(run());
  } catch (error) {
    return Promise.reject(error);
  }
}

/**
 * A Cap for any capnp-es client that is not one of ours: a generated
 * `Foo.Server` (wrapped as a LocalCap, one per server object so that the
 * same server is exported under one ID), a `PipelineClient` made by
 * generated code (mapped to its answer's pipeline), or a null pointer's
 * error client (a broken capability).
 */
export function toCap(client: $.Client | null | undefined): Cap {
  if (client instanceof Cap) return client;
  if (client === null || client === undefined) {
    return new BrokenCap(new RpcError("failed", "null capability"));
  }
  if (client instanceof $.Server) {
    let cap = serverCaps.get(client);
    if (cap === undefined) {
      cap = new LocalCap([client]);
      serverCaps.set(client, cap);
    }
    return cap;
  }
  const pipeline = (client as {
    pipeline?: $.Pipeline<$.Struct, $.Struct, $.Struct>;
  })
    .pipeline;
  if (pipeline !== undefined && pipeline.answer instanceof Ans) {
    return pipeline.answer.pipelineCap(pipeline.transform());
  }
  if (client instanceof $.ErrorClient) {
    return new BrokenCap(new RpcError("failed", "null capability"));
  }
  return new ForeignCap(client);
}

const serverCaps = new WeakMap<$.Server, LocalCap>();

/** Adapts a capnp-es client of unknown kind by calling it. */
class ForeignCap extends Cap {
  constructor(readonly client: $.Client) {
    super();
  }

  protected deliver(call: AnyCall): Ans {
    const answer = new PromisedAnswer();
    this.client.call(call).struct().then(
      (results) => answer.fulfill(results),
      (error) => answer.fail(toRpcError(error)),
    );
    return answer;
  }
}
