/**
 * One Cap'n Proto RPC (level 1) connection over a {@link MessageConnection}:
 * the four tables (questions, answers, imports, exports), bootstrap,
 * call/return/finish, promise pipelining, Resolve, Release, Disembargo and
 * Abort, following rpc.capnp.
 *
 * @module
 */

import * as $ from "capnp-es";
import * as rpc from "../../proto/gen/capnp/rpc.ts";
import {
  EXCEPTION_TYPE_CODES,
  exceptionTypeName,
  RpcError,
  RpcProtocolError,
  toRpcError,
} from "./errors.ts";
import {
  Ans,
  type AnyCall,
  AnyStruct,
  BrokenAnswer,
  BrokenCap,
  Cap,
  capabilityAt,
  type NetworkCall,
  type PipelineOp,
  PromiseCap,
  quiet,
  shorten,
  toCap,
  type Transform,
  transformKey,
} from "./capability.ts";
import type { MessageConnection } from "./transport.ts";
import { type RpcMetrics, rpcMetrics } from "./metrics.ts";
import { frameLength } from "./framing.ts";
import { copyPointer } from "./_copy.ts";
import {
  newMessage,
  readMessage,
  readUint32,
  serialize,
  serializedLength,
  serializeInto,
  writeUint32,
} from "./_message.ts";

/** Per-connection limits; a peer that passes one gets an error. */
export interface ConnectionLimits {
  /** Calls from the peer being served at once; more get `overloaded`. */
  maxOutstandingCalls: number;
  /** Largest message accepted or sent, in bytes (framing included). */
  maxMessageBytes: number;
  /** Imports plus exports; a peer passing more is aborted. */
  maxCapabilities: number;
  /** Answers the peer has not finished (returned or not); a peer that
   * keeps more is aborted, so it cannot grow this vat's memory forever. */
  maxAnswers: number;
}

/** The limits used when none are given. */
export const DEFAULT_LIMITS: Readonly<ConnectionLimits> = {
  maxOutstandingCalls: 4096,
  maxMessageBytes: 64 << 20,
  maxCapabilities: 65536,
  maxAnswers: 65536,
};

/** What a connection is made with. */
export interface ConnectionOptions {
  /** The capability the peer gets when it asks for bootstrap; the peer
   * gets an `unimplemented` error when there is none. */
  bootstrap?: $.Client;
  limits?: Partial<ConnectionLimits>;
  /** Counters to add to; the process-wide {@link rpcMetrics} otherwise. */
  metrics?: RpcMetrics;
}

type TargetWriter = (target: rpc.MessageTarget) => void;

interface Export {
  cap: Cap;
  refcount: number;
}

interface AnswerEntry {
  answer: Ans;
  returned: boolean;
  finished: boolean;
  releaseResultCaps: boolean;
  resultExports: number[];
  /** The capabilities in the results as the server wrote them: handed
   * over to this connection, closed when the answer is retired. */
  resultCaps: ($.Client | null)[];
  /** The peer asked for the results to stay here (sendResultsTo.yourself):
   * it will point one of our questions at them (takeFromOtherQuestion). */
  redirected: boolean;
  /** The Return message prepared for a local server to write results
   * into directly; undefined when results must be copied. */
  returnMessage?: $.Message;
  /** The results payload inside `returnMessage`. */
  returnPayload?: rpc.Payload;
}

interface Embargo {
  lift: () => void;
  fail: (error: RpcError) => void;
}

const importFinalizer = new FinalizationRegistry<ImportTicket>((ticket) => {
  ticket.connection.importCollected(ticket);
});

interface ImportTicket {
  connection: RpcConnection;
  id: number;
  counter: { remoteRefcount: number; released: boolean };
}

/**
 * An RPC connection. It starts reading at once; `bootstrap()` gives the
 * peer's bootstrap capability; `close()` ends it. Every capability that
 * crosses it in either direction is counted, and released when dropped.
 */
export class RpcConnection {
  readonly transport: MessageConnection;
  readonly limits: ConnectionLimits;
  readonly metrics: RpcMetrics;
  #bootstrap: Cap | undefined;
  #questions = new Map<number, Question>();
  #freeQuestionIds: number[] = [];
  #nextQuestionId = 0;
  #answers = new Map<number, AnswerEntry>();
  #running = 0;
  #exports: (Export | undefined)[] = [];
  #freeExportIds: number[] = [];
  #exportIds = new Map<Cap, number>();
  #exportCount = 0;
  #imports = new Map<number, WeakRef<ImportCap>>();
  #embargoes = new Map<number, Embargo>();
  #nextEmbargoId = 0;
  #error: RpcError | undefined;
  /** Question IDs whose Finish waits to go out (see #sendLazy). */
  #lazy: number[] = [];
  #lazyTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #done: Promise<RpcError>;
  #setDone!: (error: RpcError) => void;

  constructor(transport: MessageConnection, options: ConnectionOptions = {}) {
    this.transport = transport;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.metrics = options.metrics ?? rpcMetrics;
    if (options.bootstrap !== undefined) {
      this.#bootstrap = toCap(options.bootstrap).addRef();
    }
    this.#done = new Promise((resolve) => this.#setDone = resolve);
    this.metrics.connectionsOpened++;
    this.#run();
  }

  /** The peer's vat ID when the transport authenticates it. */
  get peerVatId(): Uint8Array | undefined {
    return this.transport.peerVatId;
  }

  /** Why the connection ended, once it has. */
  get error(): RpcError | undefined {
    return this.#error;
  }

  /** Resolves with the reason once the connection has ended. */
  get closed(): Promise<RpcError> {
    return this.#done;
  }

  /** Counts of live table entries, for tests and metrics. */
  get stats(): {
    questions: number;
    answers: number;
    imports: number;
    exports: number;
    embargoes: number;
  } {
    return {
      questions: this.#questions.size,
      answers: this.#answers.size,
      imports: this.#imports.size,
      exports: this.#exportCount,
      embargoes: this.#embargoes.size,
    };
  }

  /**
   * The peer's bootstrap capability, usable at once (calls made before the
   * answer arrives are pipelined on it). The caller owns the reference.
   */
  bootstrap(): Cap {
    if (this.#error !== undefined) return new BrokenCap(this.#error);
    const question = this.#newQuestion();
    const message = newMessage();
    const root = message.initRoot(rpc.Message);
    root._initBootstrap().questionId = question.id;
    try {
      this.#send(message);
    } catch (error) {
      question.fail(toRpcError(error));
      return new BrokenCap(toRpcError(error));
    }
    return question.bootstrapCap();
  }

  /** Ends the connection: every pending call fails with `disconnected`. */
  close(reason?: Error): void {
    this.#shutdown(
      new RpcError("disconnected", reason?.message ?? "connection closed", {
        cause: reason,
      }),
    );
  }

  /** Sends Abort with `error`, then closes. */
  abort(error: RpcError): void {
    if (this.#error !== undefined) return;
    this.metrics.abortsSent++;
    try {
      const message = newMessage();
      writeException(message.initRoot(rpc.Message)._initAbort(), error);
      this.#drainLazy();
      this.transport.send(serialize(message));
    } catch {
      // The transport is already gone; closing below is all that is left.
    }
    this.#shutdown(error);
  }

  // ---- sending -----------------------------------------------------------

  #send(message: $.Message): void {
    if (this.#error !== undefined) throw this.#error;
    const length = serializedLength(message);
    if (length > this.limits.maxMessageBytes) {
      throw new RpcError(
        "failed",
        `message of ${length} bytes is over the limit of ${this.limits.maxMessageBytes}`,
      );
    }
    // Waiting Finishes and this message share one buffer; each still goes
    // to the transport as its own message (a stream writes the adjacent
    // views with one write and no copy).
    const finishes = this.#lazy;
    const out = new Uint8Array(finishes.length * FINISH_BYTES + length);
    const offset = this.#takeLazy(out);
    serializeInto(message, out, offset);
    this.metrics.messagesSent++;
    this.transport.send(out.subarray(offset));
  }

  /**
   * Queues a message that nothing waits for (Finish): it goes out with
   * the next message sent, or on the next turn of the event loop. A call
   * made right after a return then shares one write with the Finish
   * instead of waiting behind it. Order is kept: #send drains first.
   */
  #sendLazy(questionId: number): void {
    if (this.#error !== undefined) return;
    this.#lazy.push(questionId);
    if (this.#lazyTimer === undefined) {
      this.#lazyTimer = setTimeout(() => {
        this.#lazyTimer = undefined;
        if (this.#error !== undefined) return;
        try {
          this.#drainLazy();
        } catch (error) {
          this.abort(toRpcError(error));
        }
      }, 0);
    }
  }

  #drainLazy(): void {
    if (this.#lazy.length === 0) return;
    this.#takeLazy(new Uint8Array(this.#lazy.length * FINISH_BYTES));
  }

  /** Writes the waiting Finishes at the start of `out` and sends each;
   * returns the bytes used. */
  #takeLazy(out: Uint8Array): number {
    const ids = this.#lazy;
    if (ids.length === 0) return 0;
    this.#lazy = [];
    for (let i = 0; i < ids.length; i++) {
      const at = i * FINISH_BYTES;
      out.set(FINISH_TEMPLATE, at);
      writeUint32(out, at + FINISH_ID_OFFSET, ids[i]);
      this.metrics.messagesSent++;
      this.transport.send(out.subarray(at, at + FINISH_BYTES));
    }
    return ids.length * FINISH_BYTES;
  }

  /** Sends a call to `writeTarget` and returns its answer. */
  sendCall(writeTarget: TargetWriter, call: AnyCall): Ans {
    if (this.#error !== undefined) return new BrokenAnswer(this.#error);
    const question = this.#newQuestion();
    const message = newMessage();
    const body = message.initRoot(rpc.Message)._initCall();
    body.questionId = question.id;
    body.interfaceId = call.method.interfaceId;
    body.methodId = call.method.methodId;
    writeTarget(body._initTarget());
    const payload = body._initParams();
    try {
      if ($.isDataCall(call)) {
        copyPointer(
          call.params,
          payload.content,
          this.limits.maxMessageBytes / 8,
        );
      } else {
        $.placeParams(call, payload.content);
      }
      question.paramExports = this.#writeCapTable(payload, message);
      this.#send(message);
    } catch (error) {
      const failure = toRpcError(error);
      this.#releaseExports(question.paramExports);
      question.fail(failure);
      this.#questions.delete(question.id);
      this.#freeQuestionIds.push(question.id);
      return new BrokenAnswer(failure);
    }
    this.metrics.callsSent++;
    return question;
  }

  #newQuestion(): Question {
    const id = this.#freeQuestionIds.pop() ?? this.#nextQuestionId++;
    const question = new Question(this, id);
    this.#questions.set(id, question);
    return question;
  }

  /**
   * The caller dropped a question before its Return: Finish goes out now
   * with releaseResultCaps (the peer releases any capabilities in the
   * results, which are never imported here), the question fails as
   * canceled, and its ID stays taken until the Return arrives.
   */
  cancelQuestion(question: Question): void {
    if (
      question.returned || question.finishSent || this.#error !== undefined
    ) return;
    question.finishSent = true;
    question.canceled = true;
    const message = newMessage();
    const finish = message.initRoot(rpc.Message)._initFinish();
    finish.questionId = question.id;
    finish.releaseResultCaps = true;
    this.#trySend(message);
    question.fail(new RpcError("failed", "call was canceled by its caller"));
  }

  /** Sends Finish once the question returned and no embargo needs it. */
  maybeFinish(question: Question): void {
    if (
      !question.returned || question.finishSent ||
      question.pendingEmbargoes > 0
    ) return;
    question.finishSent = true;
    this.#questions.delete(question.id);
    this.#freeQuestionIds.push(question.id);
    this.#sendLazy(question.id);
  }

  #trySend(message: $.Message): void {
    try {
      this.#send(message);
    } catch (error) {
      this.abort(toRpcError(error));
    }
  }

  /** Writes one capability into a descriptor; returns the export ID when
   * the capability was exported (the caller owns that reference). */
  #writeDescriptor(
    client: $.Client | null,
    descriptor: rpc.CapDescriptor,
  ): number | undefined {
    const cap = shorten(toCap(client));
    if (cap.connection === this) {
      if (cap instanceof ImportCap) {
        descriptor.receiverHosted = cap.importId;
        return undefined;
      }
      if (cap instanceof PipelineCap && cap.question.open) {
        writePromisedAnswer(
          descriptor._initReceiverAnswer(),
          cap.question.id,
          cap.transform,
        );
        return undefined;
      }
    }
    if (cap instanceof BrokenCap) {
      descriptor.none = true;
      return undefined;
    }
    const pending = cap.whenResolved();
    const known = this.#exportIds.has(cap);
    const id = this.#export(cap);
    if (pending !== undefined) {
      descriptor.senderPromise = id;
      // One Resolve per exported promise, however often it is sent.
      if (!known) {
        pending.then((resolution) => this.#resolveExport(id, cap, resolution))
          .catch((error) => this.#failed(error));
      }
    } else {
      descriptor.senderHosted = id;
    }
    return id;
  }

  #writeCapTable(payload: rpc.Payload, message: $.Message): number[] {
    const caps = message._capnp.capTable ?? [];
    if (caps.length === 0) return [];
    const list = payload._initCapTable(caps.length);
    const exported: number[] = [];
    for (let i = 0; i < caps.length; i++) {
      const id = this.#writeDescriptor(caps[i], list.get(i));
      if (id !== undefined) exported.push(id);
    }
    return exported;
  }

  #export(cap: Cap): number {
    const existing = this.#exportIds.get(cap);
    if (existing !== undefined) {
      this.#exports[existing]!.refcount++;
      return existing;
    }
    if (this.#exportCount + this.#imports.size >= this.limits.maxCapabilities) {
      throw new RpcError(
        "overloaded",
        `capability table is full (${this.limits.maxCapabilities} entries)`,
      );
    }
    const id = this.#freeExportIds.pop() ?? this.#exports.length;
    this.#exports[id] = { cap: cap.addRef(), refcount: 1 };
    this.#exportIds.set(cap, id);
    this.#exportCount++;
    return id;
  }

  #releaseExport(id: number, count: number): void {
    const entry = this.#exports[id];
    if (entry === undefined) {
      throw new RpcProtocolError(`Release of unknown export ID ${id}`);
    }
    if (count > entry.refcount) {
      throw new RpcProtocolError(
        `Release of ${count} references to export ${id}, which has ${entry.refcount}`,
      );
    }
    entry.refcount -= count;
    if (entry.refcount > 0) return;
    this.#exports[id] = undefined;
    this.#freeExportIds.push(id);
    this.#exportCount--;
    if (this.#exportIds.get(entry.cap) === id) {
      this.#exportIds.delete(entry.cap);
    }
    entry.cap.close();
    this.metrics.exportsReleased++;
  }

  #releaseExports(ids: readonly number[]): void {
    for (const id of ids) {
      if (this.#exports[id] !== undefined) this.#releaseExport(id, 1);
    }
  }

  /** Sends Resolve for an exported promise once it has settled. */
  async #resolveExport(id: number, promise: Cap, resolution: Cap) {
    // A resolution that is itself a promise pointing back across this
    // connection must settle first (the "Tribble 4-way race"): the peer
    // could otherwise send Disembargo to something that is not final.
    resolution = shorten(resolution);
    while (resolution.connection === this) {
      const next = resolution.whenResolved();
      if (next === undefined) break;
      resolution = shorten(await next);
    }
    const entry = this.#exports[id];
    if (entry === undefined || entry.cap !== promise) return;
    if (this.#error !== undefined) return;
    const message = newMessage();
    const resolve = message.initRoot(rpc.Message)._initResolve();
    resolve.promiseId = id;
    if (resolution instanceof BrokenCap) {
      writeException(resolve._initException(), resolution.error);
    } else {
      try {
        this.#writeDescriptor(resolution, resolve._initCap());
      } catch (error) {
        writeException(resolve._initException(), toRpcError(error));
      }
    }
    // Later lookups of this export (a Disembargo aimed at it) now find
    // the resolution directly.
    this.#exportIds.delete(promise);
    entry.cap = resolution.addRef();
    promise.close();
    this.metrics.resolvesSent++;
    this.#trySend(message);
  }

  /**
   * When a promise that pointed across this connection settles on
   * something elsewhere after calls were sent through it, calls made from
   * now on must wait until those earlier calls have come back around:
   * Disembargo (senderLoopback) goes out and returns a promise that lifts
   * when the peer echoes it. Returns what the promise should now forward to.
   * With `owned`, that promise takes over the reference to `resolution`
   * (else it borrows it from the caller).
   */
  embargo(
    writeTarget: TargetWriter,
    resolution: Cap,
    onLifted: () => void,
    owned = false,
  ): Cap {
    if (this.#error !== undefined) {
      onLifted();
      if (owned) resolution.close();
      return resolution;
    }
    const id = this.#nextEmbargoId++;
    const waiting = new PromiseCap();
    this.#embargoes.set(id, {
      lift: () => {
        waiting.resolve(resolution, owned ? undefined : { borrowed: true });
        onLifted();
      },
      fail: (error) => {
        if (owned) resolution.close();
        waiting.reject(error);
        onLifted();
      },
    });
    const message = newMessage();
    const disembargo = message.initRoot(rpc.Message)._initDisembargo();
    writeTarget(disembargo._initTarget());
    disembargo._initContext().senderLoopback = id;
    this.metrics.embargoes++;
    this.#trySend(message);
    return waiting;
  }

  /** Sends Release for an import whose last reference went. */
  releaseImport(cap: ImportCap): void {
    const ticket = cap.ticket;
    if (ticket.counter.released) return;
    ticket.counter.released = true;
    importFinalizer.unregister(cap);
    if (this.#imports.get(cap.importId)?.deref() === cap) {
      this.#imports.delete(cap.importId);
    }
    this.#sendRelease(cap.importId, ticket.counter.remoteRefcount);
  }

  /** Called by the finalizer when an import was collected unreleased. */
  importCollected(ticket: ImportTicket): void {
    if (ticket.counter.released) return;
    ticket.counter.released = true;
    const entry = this.#imports.get(ticket.id);
    if (entry !== undefined && entry.deref() === undefined) {
      this.#imports.delete(ticket.id);
    }
    this.#sendRelease(ticket.id, ticket.counter.remoteRefcount);
  }

  #sendRelease(id: number, count: number): void {
    if (this.#error !== undefined) return;
    const message = newMessage();
    const release = message.initRoot(rpc.Message)._initRelease();
    release.id = id;
    release.referenceCount = count;
    this.metrics.importsReleased++;
    this.#trySend(message);
  }

  // ---- receiving ---------------------------------------------------------

  async #run(): Promise<void> {
    // A transport may hand over messages it already holds without waiting
    // (StreamConnection does); a burst is then handled in one turn.
    const tryReceive = (this.transport as {
      tryReceive?: () => Uint8Array | undefined;
    }).tryReceive?.bind(this.transport);
    for (;;) {
      let bytes: Uint8Array | null;
      try {
        bytes = await this.transport.receive();
      } catch (error) {
        this.#receiveFailed(error);
        return;
      }
      if (this.#error !== undefined) return;
      if (bytes === null) {
        this.#shutdown(new RpcError("disconnected", "peer closed"));
        return;
      }
      if (!this.#handleOne(bytes)) return;
      while (tryReceive !== undefined) {
        let next: Uint8Array | undefined;
        try {
          next = tryReceive();
        } catch (error) {
          this.#receiveFailed(error);
          return;
        }
        if (next === undefined) break;
        if (!this.#handleOne(next)) return;
      }
    }
  }

  #receiveFailed(error: unknown): void {
    if ((error as { badInput?: boolean }).badInput === true) {
      this.metrics.badMessages++;
      this.abort(new RpcProtocolError(`bad frame from peer: ${error}`));
    } else if (error instanceof RpcError) {
      this.abort(error);
    } else {
      this.#shutdown(
        new RpcError("disconnected", `transport broke: ${error}`, {
          cause: error,
        }),
      );
    }
  }

  /** Handles one message; false once the connection has ended. */
  #handleOne(bytes: Uint8Array): boolean {
    this.metrics.messagesReceived++;
    try {
      this.#handle(bytes);
    } catch (error) {
      this.metrics.badMessages++;
      const failure = error instanceof RpcProtocolError
        ? error
        : new RpcProtocolError(`bad message from peer: ${error}`, {
          cause: error,
        });
      this.abort(failure);
      return false;
    }
    return this.#error === undefined;
  }

  #handle(bytes: Uint8Array): void {
    if (bytes.length > this.limits.maxMessageBytes) {
      throw new RpcProtocolError(
        `message of ${bytes.length} bytes is over the limit of ${this.limits.maxMessageBytes}`,
      );
    }
    // capnp-es trusts the segment table; check it against the bytes first.
    let framed: number;
    try {
      framed = frameLength(bytes, this.limits.maxMessageBytes);
    } catch (error) {
      throw new RpcProtocolError(`bad message framing: ${error}`);
    }
    if (framed !== bytes.length) {
      throw new RpcProtocolError(
        `message of ${bytes.length} bytes has a segment table for ${framed}`,
      );
    }
    const finish = quickFinish(bytes);
    if (finish !== undefined) {
      return this.#handleFinish(finish.questionId, finish.releaseResultCaps);
    }
    const message = readMessage(bytes);
    const root = message.getRoot(rpc.Message);
    switch (root.which()) {
      case rpc.Message.CALL:
        return this.#handleCall(root.call, message);
      case rpc.Message.RETURN:
        return this.#handleReturn(root.return, message);
      case rpc.Message.FINISH:
        return this.#handleFinish(
          root.finish.questionId,
          root.finish.releaseResultCaps,
        );
      case rpc.Message.RESOLVE:
        return this.#handleResolve(root.resolve);
      case rpc.Message.RELEASE:
        return this.#releaseExport(
          root.release.id,
          root.release.referenceCount,
        );
      case rpc.Message.DISEMBARGO:
        return this.#handleDisembargo(root.disembargo, root);
      case rpc.Message.BOOTSTRAP:
        return this.#handleBootstrap(root.bootstrap.questionId);
      case rpc.Message.ABORT: {
        const error = readException(root.abort);
        this.metrics.abortsReceived++;
        this.#shutdown(
          new RpcError(error.type, `peer aborted: ${error.message}`, {
            remote: true,
          }),
        );
        return;
      }
      case rpc.Message.UNIMPLEMENTED:
        return this.#handleUnimplemented(root.unimplemented);
      default: {
        this.metrics.unimplementedSent++;
        const reply = newMessage();
        reply.initRoot(rpc.Message).unimplemented = root;
        this.#send(reply);
      }
    }
  }

  #handleBootstrap(questionId: number): void {
    const entry = this.#newAnswer(questionId);
    if (entry === undefined) return;
    const answer = new SettledAnswer();
    if (this.#bootstrap === undefined) {
      answer.error = new RpcError("unimplemented", "this vat has no bootstrap");
    } else {
      const holder = newMessage();
      const content = holder.initRoot(rpc.Payload).content;
      $.utils.setInterfacePointer(
        holder.addCap(this.#bootstrap.addRef()),
        content,
      );
      answer.root = content;
    }
    entry.answer = answer;
    this.#sendReturn(questionId, entry);
  }

  #newAnswer(questionId: number): AnswerEntry | undefined {
    if (this.#answers.has(questionId)) {
      throw new RpcProtocolError(`question ID ${questionId} is already in use`);
    }
    if (this.#answers.size >= this.limits.maxAnswers) {
      throw new RpcProtocolError(
        `peer holds ${this.#answers.size} answers without Finish; the limit is ${this.limits.maxAnswers}`,
      );
    }
    const entry: AnswerEntry = {
      answer: NOT_STARTED,
      returned: false,
      finished: false,
      releaseResultCaps: false,
      resultExports: [],
      resultCaps: [],
      redirected: false,
    };
    this.#answers.set(questionId, entry);
    this.#running++;
    if (this.#running > this.limits.maxOutstandingCalls) {
      this.metrics.callsRefused++;
      entry.answer = new BrokenAnswer(
        new RpcError(
          "overloaded",
          `over ${this.limits.maxOutstandingCalls} calls outstanding on this connection`,
        ),
      );
      this.#sendReturn(questionId, entry);
      return undefined;
    }
    return entry;
  }

  #handleCall(call: rpc.Call, message: $.Message): void {
    const questionId = call.questionId;
    const sendTo = call.sendResultsTo.which();
    if (
      sendTo !== rpc.Call_SendResultsTo.CALLER &&
      sendTo !== rpc.Call_SendResultsTo.YOURSELF
    ) {
      throw new RpcProtocolError(
        "Call.sendResultsTo.thirdParty needs level 3, which this vat lacks",
      );
    }
    const target = this.#readTarget(call.target);
    const params = call.params;
    const caps = this.#readCapTable(params, message);
    const entry = this.#newAnswer(questionId);
    this.metrics.callsReceived++;
    if (entry === undefined) {
      for (const cap of caps) cap.close();
      return;
    }
    const redirected = sendTo === rpc.Call_SendResultsTo.YOURSELF;
    const dataCall: NetworkCall = {
      method: {
        interfaceId: call.interfaceId,
        methodId: call.methodId,
        ParamsClass: AnyStruct,
        ResultsClass: AnyStruct,
      },
      params: $.utils.getAs(AnyStruct, params.content as $.Struct),
    };
    if (!redirected) {
      const returnMessage = newMessage();
      const ret = returnMessage.initRoot(rpc.Message)._initReturn();
      ret.answerId = questionId;
      ret.releaseParamCaps = false;
      const payload = ret._initResults();
      dataCall.resultsAt = payload.content;
      entry.returnMessage = returnMessage;
      entry.returnPayload = payload;
    }
    const answer = target.send(dataCall);
    entry.answer = answer;
    entry.redirected = redirected;
    answer.onSettled(() => {
      try {
        for (const cap of caps) cap.close();
        this.#sendReturn(questionId, entry);
      } catch (error) {
        this.#failed(error);
      }
    });
  }

  /** An engine bug met on a callback path: end this connection, never
   * the process. */
  #failed(error: unknown): void {
    this.metrics.internalErrors++;
    this.abort(
      new RpcError("failed", `internal error: ${error}`, { cause: error }),
    );
  }

  #readTarget(target: rpc.MessageTarget): Cap {
    if (target.which() === rpc.MessageTarget.IMPORTED_CAP) {
      const entry = this.#exports[target.importedCap];
      if (entry === undefined) {
        throw new RpcProtocolError(
          `message targets export ID ${target.importedCap}, which does not exist`,
        );
      }
      return entry.cap;
    }
    if (target.which() === rpc.MessageTarget.PROMISED_ANSWER) {
      return this.#readPromisedAnswer(target.promisedAnswer);
    }
    throw new RpcProtocolError(`unknown message target ${target.which()}`);
  }

  #readPromisedAnswer(promised: rpc.PromisedAnswer): Cap {
    const entry = this.#answers.get(promised.questionId);
    if (entry === undefined) {
      throw new RpcProtocolError(
        `promisedAnswer names question ${promised.questionId}, which is not open`,
      );
    }
    const transform: PipelineOp[] = [];
    for (const op of promised.transform) {
      if (op.which() === rpc.PromisedAnswer_Op.GET_POINTER_FIELD) {
        transform.push({ field: op.getPointerField });
      } else if (op.which() !== rpc.PromisedAnswer_Op.NOOP) {
        throw new RpcProtocolError(`unknown pipeline op ${op.which()}`);
      }
    }
    return entry.answer.pipelineCap(transform);
  }

  #readCapTable(payload: rpc.Payload, message: $.Message): Cap[] {
    const caps: Cap[] = [];
    if (!payload._hasCapTable()) {
      message._capnp.capTable = caps;
      return caps;
    }
    const list = payload.capTable;
    if (list.length > this.limits.maxCapabilities) {
      throw new RpcProtocolError(
        `cap table of ${list.length} entries is over the limit of ${this.limits.maxCapabilities}`,
      );
    }
    try {
      for (const descriptor of list) {
        caps.push(this.#readDescriptor(descriptor));
      }
    } catch (error) {
      for (const cap of caps) cap.close();
      throw error;
    }
    message._capnp.capTable = caps;
    return caps;
  }

  /** Turns a descriptor into a Cap the caller owns one reference of. */
  #readDescriptor(descriptor: rpc.CapDescriptor): Cap {
    switch (descriptor.which()) {
      case rpc.CapDescriptor.NONE:
        return new BrokenCap(new RpcError("failed", "null capability"));
      case rpc.CapDescriptor.SENDER_HOSTED:
        return this.#import(descriptor.senderHosted, false);
      case rpc.CapDescriptor.SENDER_PROMISE:
        return this.#import(descriptor.senderPromise, true);
      case rpc.CapDescriptor.RECEIVER_HOSTED: {
        const entry = this.#exports[descriptor.receiverHosted];
        if (entry === undefined) {
          throw new RpcProtocolError(
            `receiverHosted names export ID ${descriptor.receiverHosted}, which does not exist`,
          );
        }
        return entry.cap.addRef();
      }
      case rpc.CapDescriptor.RECEIVER_ANSWER:
        return this.#readPromisedAnswer(descriptor.receiverAnswer).addRef();
      case rpc.CapDescriptor.THIRD_PARTY_HOSTED:
        // A level 1 vat uses the vine, which the sender hosts.
        return this.#import(descriptor.thirdPartyHosted.vineId, false);
      default:
        throw new RpcProtocolError(
          `unknown capability descriptor ${descriptor.which()}`,
        );
    }
  }

  #import(id: number, isPromise: boolean): Cap {
    const existing = this.#imports.get(id)?.deref();
    if (existing !== undefined && !existing.ticket.counter.released) {
      existing.ticket.counter.remoteRefcount++;
      return existing.addRef();
    }
    if (this.#exportCount + this.#imports.size >= this.limits.maxCapabilities) {
      throw new RpcProtocolError(
        `capability table is full (${this.limits.maxCapabilities} entries)`,
      );
    }
    const ticket: ImportTicket = {
      connection: this,
      id,
      counter: { remoteRefcount: 1, released: false },
    };
    const cap = isPromise
      ? new PromiseImportCap(this, id, ticket)
      : new ImportCap(this, id, ticket);
    this.#imports.set(id, new WeakRef(cap));
    importFinalizer.register(cap, ticket, cap);
    return cap;
  }

  #handleReturn(ret: rpc.Return, message: $.Message): void {
    const question = this.#questions.get(ret.answerId);
    if (question === undefined || question.returned) {
      throw new RpcProtocolError(
        `Return for question ${ret.answerId}, which is not awaiting one`,
      );
    }
    question.returned = true;
    if (ret.releaseParamCaps) this.#releaseExports(question.paramExports);
    if (question.canceled) {
      // Finish went out already; the peer releases the results' caps.
      this.#questions.delete(question.id);
      this.#freeQuestionIds.push(question.id);
      return;
    }
    switch (ret.which()) {
      case rpc.Return.RESULTS: {
        const payload = ret.results;
        this.#readCapTable(payload, message);
        question.fulfill(payload.content);
        break;
      }
      case rpc.Return.EXCEPTION: {
        const error = readException(ret.exception);
        question.fail(
          new RpcError(error.type, error.message, { remote: true }),
        );
        break;
      }
      case rpc.Return.CANCELED:
        question.fail(new RpcError("failed", "call was canceled"));
        break;
      case rpc.Return.TAKE_FROM_OTHER_QUESTION: {
        // The peer redirected our call back to us (a tail call on a
        // capability of ours): the results are those of an answer here.
        const id = ret.takeFromOtherQuestion;
        const other = this.#answers.get(id);
        if (other === undefined || !other.redirected) {
          throw new RpcProtocolError(
            `takeFromOtherQuestion names question ${id}, which is not a redirected call`,
          );
        }
        question.adopt(other.answer);
        break;
      }
      default:
        question.fail(
          new RpcError(
            "unimplemented",
            `Return of kind ${ret.which()} is not supported`,
          ),
        );
    }
    this.maybeFinish(question);
  }

  #handleFinish(questionId: number, releaseResultCaps: boolean): void {
    const entry = this.#answers.get(questionId);
    if (entry === undefined || entry.finished) {
      throw new RpcProtocolError(
        `Finish for question ${questionId}, which is not open`,
      );
    }
    entry.finished = true;
    entry.releaseResultCaps = releaseResultCaps;
    if (entry.returned) this.#retireAnswer(questionId, entry);
    // Finish before Return: the caller canceled. The server (or the vat a
    // forwarded call went on to) hears of it; a Return still follows.
    else entry.answer.cancel();
  }

  #retireAnswer(questionId: number, entry: AnswerEntry): void {
    this.#answers.delete(questionId);
    if (entry.releaseResultCaps) this.#releaseExports(entry.resultExports);
    closeAll(entry.resultCaps);
  }

  #sendReturn(questionId: number, entry: AnswerEntry): void {
    if (entry.returned || this.#error !== undefined) return;
    entry.returned = true;
    this.#running--;
    const answer = entry.answer;
    const build = (settled: $.Pointer | undefined, error?: RpcError) => {
      const fresh = () => {
        const message = newMessage();
        const ret = message.initRoot(rpc.Message)._initReturn();
        ret.answerId = questionId;
        ret.releaseParamCaps = false;
        return { message, ret };
      };
      if (settled !== undefined && entry.redirected) {
        const { message, ret } = fresh();
        // The results stay here for a question of ours to take; their
        // capabilities go with them to that question.
        ret.resultsSentElsewhere = true;
        this.#trySend(message);
      } else if (
        settled !== undefined &&
        settled.segment.message === entry.returnMessage
      ) {
        // A local server wrote its results straight into the Return.
        const prepared = entry.returnMessage;
        const payload = entry.returnPayload!;
        entry.returnMessage = undefined;
        entry.returnPayload = undefined;
        try {
          entry.resultCaps = prepared._capnp.capTable ?? [];
          entry.resultExports = this.#writeCapTable(payload, prepared);
          this.#send(prepared);
        } catch (failure) {
          this.#releaseExports(entry.resultExports);
          entry.resultExports = [];
          build(undefined, toRpcError(failure));
          return;
        }
      } else if (settled !== undefined) {
        const { message, ret } = fresh();
        try {
          const payload = ret._initResults();
          entry.resultCaps = settled.segment.message._capnp.capTable ?? [];
          copyPointer(
            settled,
            payload.content,
            this.limits.maxMessageBytes / 8,
          );
          entry.resultExports = this.#writeCapTable(payload, message);
          this.#send(message);
        } catch (failure) {
          this.#releaseExports(entry.resultExports);
          entry.resultExports = [];
          build(undefined, toRpcError(failure));
          return;
        }
      } else {
        const { message, ret } = fresh();
        if (entry.returnMessage !== undefined) {
          // The server failed after writing some results: drop them.
          closeAll(entry.returnMessage._capnp.capTable ?? []);
          entry.returnMessage = undefined;
        }
        writeException(
          ret._initException(),
          error ?? new RpcError("failed", "no results"),
        );
        this.#trySend(message);
      }
      if (entry.finished) this.#retireAnswer(questionId, entry);
    };
    if (answer instanceof SettledAnswer) {
      build(answer.root, answer.error);
      return;
    }
    if (answer instanceof BrokenAnswer) {
      build(undefined, answer.error);
      return;
    }
    const outcome = answer.peek();
    if (outcome !== undefined) {
      build(outcome.root, outcome.error);
      return;
    }
    answer.results().then(
      (results) => {
        if (this.#error === undefined) build(results);
      },
      (error) => {
        if (this.#error === undefined) build(undefined, toRpcError(error));
      },
    ).catch((error) => this.#failed(error));
  }

  #handleResolve(resolve: rpc.Resolve): void {
    this.metrics.resolvesReceived++;
    const promise = this.#imports.get(resolve.promiseId)?.deref();
    let resolution: Cap;
    if (resolve.which() === rpc.Resolve.CAP) {
      resolution = this.#readDescriptor(resolve.cap);
    } else {
      const error = readException(resolve.exception);
      resolution = new BrokenCap(
        new RpcError(error.type, error.message, { remote: true }),
      );
    }
    if (!(promise instanceof PromiseImportCap) || promise.released) {
      // The promise was released already; drop what it resolved to.
      resolution.close();
      return;
    }
    promise.settle(resolution);
  }

  /** Answers a senderLoopback Disembargo once its target is settled. */
  #echoDisembargo(target: Cap, id: number): void {
    // Calls that came before this message were forwarded at once (see
    // capability.ts), so echoing now keeps them ahead of the lift.
    if (
      target.connection !== this ||
      !(target instanceof ImportCap || target instanceof PipelineCap)
    ) {
      throw new RpcProtocolError(
        "Disembargo senderLoopback aimed at a capability that does not point back to the sender",
      );
    }
    if (target instanceof PipelineCap && !target.question.open) {
      throw new RpcProtocolError(
        "Disembargo senderLoopback aimed at a settled pipeline",
      );
    }
    const reply = newMessage();
    const echo = reply.initRoot(rpc.Message)._initDisembargo();
    target.writeTarget(echo._initTarget());
    echo._initContext().receiverLoopback = id;
    this.#send(reply);
  }

  #handleDisembargo(disembargo: rpc.Disembargo, original: rpc.Message): void {
    const context = disembargo.context;
    switch (context.which()) {
      case rpc.Disembargo_Context.SENDER_LOOPBACK: {
        const id = context.senderLoopback;
        const target = shorten(this.#readTarget(disembargo.target));
        const pending = target.connection === this
          ? undefined
          : target.whenResolved();
        if (pending === undefined) {
          this.#echoDisembargo(target, id);
          return;
        }
        // Still a promise here: the sender's capability came back to it
        // through a third vat and this vat's own embargo toward that vat
        // has not lifted yet. Calls queued in it go out to the sender when
        // it lifts; the echo follows them.
        pending.then((resolved) => {
          if (this.#error === undefined) {
            this.#echoDisembargo(shorten(resolved), id);
          }
        }).catch((error) => this.#failed(error));
        return;
      }
      case rpc.Disembargo_Context.RECEIVER_LOOPBACK: {
        const id = context.receiverLoopback;
        const embargo = this.#embargoes.get(id);
        if (embargo === undefined) {
          throw new RpcProtocolError(
            `Disembargo receiverLoopback for unknown embargo ${id}`,
          );
        }
        this.#embargoes.delete(id);
        embargo.lift();
        return;
      }
      default: {
        this.metrics.unimplementedSent++;
        const reply = newMessage();
        reply.initRoot(rpc.Message).unimplemented = original;
        this.#send(reply);
      }
    }
  }

  #handleUnimplemented(echo: rpc.Message): void {
    this.metrics.unimplementedReceived++;
    switch (echo.which()) {
      case rpc.Message.RESOLVE: {
        const resolve = echo.resolve;
        if (resolve.which() !== rpc.Resolve.CAP) return;
        const cap = resolve.cap;
        if (cap.which() === rpc.CapDescriptor.SENDER_HOSTED) {
          this.#releaseExports([cap.senderHosted]);
        } else if (cap.which() === rpc.CapDescriptor.SENDER_PROMISE) {
          this.#releaseExports([cap.senderPromise]);
        }
        return;
      }
      case rpc.Message.BOOTSTRAP:
      case rpc.Message.CALL: {
        const id = echo.which() === rpc.Message.CALL
          ? echo.call.questionId
          : echo.bootstrap.questionId;
        const question = this.#questions.get(id);
        if (question === undefined) return;
        question.returned = true;
        question.fail(
          new RpcError("unimplemented", "peer does not implement this call"),
        );
        this.maybeFinish(question);
        return;
      }
      default:
        this.abort(
          new RpcProtocolError(
            `peer cannot handle message kind ${echo.which()}`,
          ),
        );
    }
  }

  #shutdown(error: RpcError): void {
    if (this.#error !== undefined) return;
    this.#error = error;
    this.metrics.connectionsClosed++;
    if (this.#lazyTimer !== undefined) clearTimeout(this.#lazyTimer);
    this.#lazy = [];
    const questions = [...this.#questions.values()];
    this.#questions.clear();
    for (const question of questions) question.fail(error);
    const embargoes = [...this.#embargoes.values()];
    this.#embargoes.clear();
    for (const embargo of embargoes) embargo.fail(error);
    const exports = this.#exports;
    this.#exports = [];
    this.#exportIds.clear();
    this.#exportCount = 0;
    for (const entry of exports) entry?.cap.close();
    for (const weak of this.#imports.values()) weak.deref()?.disconnect(error);
    this.#imports.clear();
    for (const entry of this.#answers.values()) closeAll(entry.resultCaps);
    this.#answers.clear();
    this.#bootstrap?.close();
    this.#bootstrap = undefined;
    try {
      this.transport.close(error);
    } catch {
      // Closing twice is harmless; the transport may already be gone.
    }
    this.#setDone(error);
  }
}

/**
 * Finish is the one message sent for every call, and its layout is fixed:
 * it is made once with capnp-es and copied with the question ID patched.
 */
function finishTemplate(releaseResultCaps: boolean): Uint8Array {
  const message = newMessage();
  const finish = message.initRoot(rpc.Message)._initFinish();
  finish.questionId = 0x89abcdef;
  finish.releaseResultCaps = releaseResultCaps;
  return serialize(message);
}
const FINISH_TEMPLATE = finishTemplate(false);
const FINISH_BYTES = FINISH_TEMPLATE.length;
const FINISH_RELEASING = finishTemplate(true);
/** Where the two templates differ: the releaseResultCaps bit. */
const FINISH_FLAG_OFFSET = FINISH_TEMPLATE.findIndex((byte, i) =>
  byte !== FINISH_RELEASING[i]
);
const FINISH_ID_OFFSET = (() => {
  for (let i = 0; i + 4 <= FINISH_TEMPLATE.length; i += 4) {
    if (readUint32(FINISH_TEMPLATE, i) === 0x89abcdef) return i;
  }
  throw new Error("Finish template has no question ID");
})();

/**
 * Reads a Finish laid out exactly as this engine writes one, without
 * decoding it; anything else (another layout, another message) gives
 * undefined and takes the general path.
 */
function quickFinish(
  bytes: Uint8Array,
): { questionId: number; releaseResultCaps: boolean } | undefined {
  if (bytes.length !== FINISH_TEMPLATE.length) return undefined;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= FINISH_ID_OFFSET && i < FINISH_ID_OFFSET + 4) continue;
    if (i === FINISH_FLAG_OFFSET) continue;
    if (bytes[i] !== FINISH_TEMPLATE[i]) return undefined;
  }
  const flag = bytes[FINISH_FLAG_OFFSET];
  if (flag !== FINISH_TEMPLATE[FINISH_FLAG_OFFSET]) {
    if (flag !== FINISH_RELEASING[FINISH_FLAG_OFFSET]) return undefined;
  }
  return {
    questionId: readUint32(bytes, FINISH_ID_OFFSET),
    releaseResultCaps: flag === FINISH_RELEASING[FINISH_FLAG_OFFSET],
  };
}

/** Placeholder of an answer entry until its call is started. */
const NOT_STARTED = new BrokenAnswer(new RpcError("failed", "not started"));

/** An answer whose result is known when it is made (bootstrap). */
class SettledAnswer extends Ans {
  root: $.Pointer | undefined;
  error: RpcError | undefined;

  results(): Promise<$.Pointer> {
    if (this.root !== undefined) return Promise.resolve(this.root);
    return quiet(
      Promise.reject(this.error ?? new RpcError("failed", "no results")),
    );
  }

  pipelineCap(transform: Transform): Cap {
    if (this.root !== undefined) return capabilityAt(this.root, transform);
    return new BrokenCap(this.error ?? new RpcError("failed", "no results"));
  }
}

/** A call this vat asked the peer; also its client-side answer. */
class Question extends Ans {
  returned = false;
  finishSent = false;
  /** Finish was sent before the Return (see cancelQuestion). */
  canceled = false;
  pendingEmbargoes = 0;
  paramExports: number[] = [];
  #root: $.Pointer | undefined;
  #error: RpcError | undefined;
  // Made on first use: a call that is only pipelined on is never awaited,
  // and most calls are never pipelined on.
  #pipelines: Map<string, PipelineCap> | undefined;
  #adopted: Ans | undefined;
  #deferred: PromiseWithResolvers<$.Pointer> | undefined;

  constructor(readonly connection: RpcConnection, readonly id: number) {
    super();
  }

  cancel(): void {
    this.connection.cancelQuestion(this);
  }

  /** True while the peer still holds the answer (pipelining allowed). */
  get open(): boolean {
    return !this.finishSent && this.#error === undefined;
  }

  results(): Promise<$.Pointer> {
    if (this.#root !== undefined) return Promise.resolve(this.#root);
    if (this.#error !== undefined) return quiet(Promise.reject(this.#error));
    if (this.#deferred === undefined) {
      this.#deferred = Promise.withResolvers();
      quiet(this.#deferred.promise);
    }
    return this.#deferred.promise;
  }

  peek(): { root?: $.Pointer; error?: RpcError } | undefined {
    if (this.#root !== undefined) return { root: this.#root };
    if (this.#error !== undefined) return { error: this.#error };
    return undefined;
  }

  pipelineCap(transform: Transform): Cap {
    const key = transformKey(transform);
    let cap = this.#pipelines?.get(key);
    if (cap === undefined) {
      if (this.#root !== undefined) {
        return capabilityAt(this.#root, transform);
      }
      if (this.#adopted !== undefined) {
        return this.#adopted.pipelineCap(transform);
      }
      if (this.#error !== undefined) return new BrokenCap(this.#error);
      cap = new PipelineCap(this, [...transform]);
      (this.#pipelines ??= new Map()).set(key, cap);
    }
    return cap;
  }

  /** The bootstrap capability: a pipeline the caller owns, which drops
   * the import it settles to when closed. */
  bootstrapCap(): PipelineCap {
    const cap = new PipelineCap(this, [], true);
    (this.#pipelines ??= new Map()).set("", cap);
    return cap;
  }

  /** Settles as `other` settles (a tail call that came back to us). */
  adopt(other: Ans): void {
    this.#adopted = other;
    for (const cap of this.#pipelines?.values() ?? []) {
      cap.settle(other.pipelineCap(cap.transform));
    }
    this.pendingEmbargoes++;
    other.results().then(
      (root) => {
        this.#root = root;
        this.#deferred?.resolve(root);
      },
      (error) => this.fail(toRpcError(error)),
    ).finally(() => {
      this.pendingEmbargoes--;
      this.connection.maybeFinish(this);
    });
  }

  fulfill(root: $.Pointer): void {
    this.#root = root;
    for (const cap of this.#pipelines?.values() ?? []) {
      cap.settle(capabilityAt(root, cap.transform));
    }
    this.#deferred?.resolve(root);
  }

  fail(error: RpcError): void {
    if (this.#root !== undefined || this.#error !== undefined) return;
    this.#error = error;
    for (const cap of this.#pipelines?.values() ?? []) {
      cap.settle(new BrokenCap(error));
    }
    this.#deferred?.reject(error);
  }
}

function closeAll(clients: readonly ($.Client | null)[]): void {
  for (const client of clients) client?.close();
}

function writePromisedAnswer(
  promised: rpc.PromisedAnswer,
  questionId: number,
  transform: Transform,
): void {
  promised.questionId = questionId;
  if (transform.length === 0) return;
  const ops = promised._initTransform(transform.length);
  for (let i = 0; i < transform.length; i++) {
    ops.get(i).getPointerField = transform[i].field;
  }
}

/** A capability the peer exports, named by its export ID there. */
class ImportCap extends Cap {
  constructor(
    readonly conn: RpcConnection,
    readonly importId: number,
    readonly ticket: ImportTicket,
  ) {
    super();
  }

  #broken: RpcError | undefined;

  get connection(): object | undefined {
    return this.conn;
  }

  get released(): boolean {
    return this.ticket.counter.released;
  }

  writeTarget(target: rpc.MessageTarget): void {
    target.importedCap = this.importId;
  }

  protected deliver(call: AnyCall): Ans {
    if (this.#broken !== undefined) return new BrokenAnswer(this.#broken);
    return this.conn.sendCall((t) => this.writeTarget(t), call);
  }

  disconnect(error: RpcError): void {
    this.#broken = error;
    this.ticket.counter.released = true;
  }

  protected dispose(): void {
    this.conn.releaseImport(this);
  }
}

/** An import the peer marked as a promise: it may send Resolve for it. */
class PromiseImportCap extends ImportCap {
  #target: Cap | undefined;
  /** The reference the Resolve gave; dropped with this import. */
  #resolution: Cap | undefined;
  /** The embargo promise this import forwards to, if any; its own. */
  #embargoed: Cap | undefined;
  #called = false;
  readonly #settled: Promise<Cap>;
  #settle!: (cap: Cap) => void;

  constructor(conn: RpcConnection, id: number, ticket: ImportTicket) {
    super(conn, id, ticket);
    this.#settled = new Promise((resolve) => this.#settle = resolve);
  }

  protected deliver(call: AnyCall): Ans {
    if (this.#target !== undefined) return this.#target.send(call);
    this.#called = true;
    return super.deliver(call);
  }

  settle(resolution: Cap): void {
    if (this.#target !== undefined) {
      resolution.close();
      return;
    }
    this.#resolution = resolution;
    const final = shorten(resolution);
    if (
      this.#called && final.connection !== this.conn &&
      !(final instanceof BrokenCap)
    ) {
      // The embargo's promise keeps its own reference to the resolution
      // (once exported in a Resolve it may outlive this import), and this
      // import holds the promise until it goes.
      this.#embargoed = this.conn.embargo(
        (t) => this.writeTarget(t),
        resolution.addRef(),
        () => {},
        true,
      );
      this.#target = this.#embargoed;
    } else {
      this.#target = resolution;
    }
    this.#settle(this.#target);
  }

  disconnect(error: RpcError): void {
    super.disconnect(error);
    if (this.#target === undefined) this.settle(new BrokenCap(error));
  }

  protected dispose(): void {
    super.dispose();
    this.#resolution?.close();
    this.#embargoed?.close();
  }

  resolved(): Cap | undefined {
    return this.#target;
  }

  whenResolved(): Promise<Cap> | undefined {
    return this.#target === undefined ? this.#settled : undefined;
  }
}

/** A capability at a path of a question's results, before they arrive. */
class PipelineCap extends Cap {
  #target: Cap | undefined;
  #called = false;
  readonly #settled: Promise<Cap>;
  #settle!: (cap: Cap) => void;

  constructor(
    readonly question: Question,
    readonly transform: Transform,
    readonly ownsTarget = false,
  ) {
    super();
    this.#settled = new Promise((resolve) => this.#settle = resolve);
  }

  get connection(): object | undefined {
    return this.question.connection;
  }

  writeTarget(target: rpc.MessageTarget): void {
    writePromisedAnswer(
      target._initPromisedAnswer(),
      this.question.id,
      this.transform,
    );
  }

  protected deliver(call: AnyCall): Ans {
    if (this.#target !== undefined) return this.#target.send(call);
    this.#called = true;
    return this.question.connection.sendCall(
      (t) => this.writeTarget(t),
      call,
    );
  }

  settle(resolution: Cap): void {
    if (this.#target !== undefined) return;
    const question = this.question;
    const final = shorten(resolution);
    if (
      this.#called && final.connection !== question.connection &&
      !(final instanceof BrokenCap)
    ) {
      question.pendingEmbargoes++;
      this.#target = question.connection.embargo(
        (t) => this.writeTarget(t),
        resolution,
        () => {
          question.pendingEmbargoes--;
          question.connection.maybeFinish(question);
        },
      );
    } else {
      this.#target = resolution;
    }
    this.#settle(this.#target);
  }

  protected dispose(): void {
    // The bootstrap's reference is the one in its answer's results.
    if (this.ownsTarget) this.question.pipelineClose([...this.transform]);
  }

  resolved(): Cap | undefined {
    return this.#target;
  }

  whenResolved(): Promise<Cap> | undefined {
    return this.#target === undefined ? this.#settled : undefined;
  }
}

function writeException(exception: rpc.Exception, error: RpcError): void {
  exception.reason = error.message;
  exception.type = EXCEPTION_TYPE_CODES[error.type] as rpc.Exception_Type;
}

function readException(
  exception: rpc.Exception,
): { type: RpcError["type"]; message: string } {
  return { type: exceptionTypeName(exception.type), message: exception.reason };
}

export { ImportCap, PipelineCap, Question };
