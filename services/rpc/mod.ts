/**
 * Blackrock's Cap'n Proto RPC engine (levels 1 and 2): how every role and
 * grain talks. Build services on this module; import level 2 (SturdyRefs)
 * from `./sturdyref.ts`.
 *
 * Schemas are compiled by `bash tasks/codegen.sh` (capnp-es) into
 * `proto/gen/`. For an interface `Foo` the generated module gives
 * `Foo.Client` (typed methods; each returns a `Foo_Bar$Results$Promise`
 * whose `.promise()` gives the typed results and whose getters, such as
 * `.getChild()`, give pipelined clients) and `Foo.Server` (made from an
 * object with one method per schema method, `(params, results)`, params
 * and results being the generated `Foo_Bar$Params` / `Foo_Bar$Results`
 * struct classes). This module joins them across vats:
 *
 * - {@link serve}`(Foo, impl)` serves an implementation as a {@link Cap};
 *   {@link serveAll} serves one object under several interfaces (e.g. with
 *   `Persistent`). `new Foo.Client(cap)` is a typed client of any Cap.
 * - {@link RpcConnection} runs the protocol over a
 *   {@link MessageConnection}: the stream transport ({@link connectTcp},
 *   {@link connectUnix}, {@link listenTcp}, {@link listenUnix},
 *   {@link openFd} for a grain's fd 3), {@link memoryPipe} in one process,
 *   or the sealed UDP network (services/rpc/sealed_udp/). Its options give
 *   the bootstrap capability, {@link ConnectionLimits} and the
 *   {@link RpcMetrics} to count into.
 * - {@link bootstrap}`(connection, Foo)` is the peer's bootstrap as a
 *   typed client, usable at once (calls pipeline until it arrives). To
 *   know who calls, give each connection a bootstrap made for its
 *   `transport.peerVatId` (authenticated on the sealed UDP network), as
 *   `serveRestorer` in sturdyref.ts does.
 * - {@link PromiseCap} is a capability to hand out before its object
 *   exists: calls queue (in order) until `resolve(cap)` (which takes over
 *   that reference); a peer holding it
 *   gets Resolve, and Disembargo keeps call order when it turns out to
 *   point back at the peer.
 * - {@link cancel}`(pending)` drops a call before its Return: Finish
 *   goes out at once, and the server's method sees `signal` (in its third
 *   argument, a {@link CallContext}) abort, even across a middle vat.
 * - A connection's `closed` resolves with the reason it ended; `stats`
 *   counts its table entries; `abort(error)` sends Abort and closes.
 * - Errors are {@link RpcError}; `type` is `failed`, `overloaded`,
 *   `disconnected` or `unimplemented`, `remote` says whether the peer
 *   raised it. A server throws RpcError to choose the type; anything else
 *   reaches the caller as `failed`. A method left out of an
 *   implementation answers `unimplemented`.
 *
 * Ownership of capabilities (each Cap counts its references; when the last
 * goes, the peer gets Release, and a local server's `onClose` runs):
 * - written into params: lent, the caller keeps its reference;
 * - received by a server in params: released when the call returns,
 *   unless the server keeps one with {@link retain};
 * - written into results: handed over with the results;
 * - read from results, or pipelined from them: one reference for the
 *   caller, dropped with {@link release} (a client's `.client.close()`).
 *   A reference never dropped is released when the garbage collector
 *   finds it, or when the connection ends.
 *
 * @example Serve a capability over TCP and call it with pipelining
 * ```ts
 * import * as rpc from "./mod.ts";
 * import { Counter, TestHost } from "../../proto/gen/rpc_test.ts";
 *
 * // The server side: implement the generated interface (methods left
 * // out answer `unimplemented`; a method may be synchronous).
 * const host = rpc.serve(TestHost, {
 *   async add(params, results) {
 *     results.sum = params.a + params.b;
 *   },
 *   async newCounter(params, results) {
 *     let value = params.start;
 *     results.counter = new Counter.Client(rpc.serve(Counter, {
 *       async increment(p, r) {
 *         value += p.by;
 *         r.value = value;
 *       },
 *     }));
 *   },
 * });
 * const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
 * const accepted = listener.accept().then((transport) =>
 *   new rpc.RpcConnection(transport, { bootstrap: host })
 * );
 *
 * // The client side: a typed client of the peer's bootstrap.
 * const connection = new rpc.RpcConnection(
 *   await rpc.connectTcp({ hostname: "127.0.0.1", port: listener.port }),
 * );
 * const remote = rpc.bootstrap(connection, TestHost);
 * const sum = await remote.add((p) => {
 *   p.a = 2;
 *   p.b = 3;
 * }).promise();
 * console.assert(sum.sum === 5);
 *
 * // Pipelining: call the counter before newCounter has returned.
 * const counter = remote.newCounter((p) => p.start = 10).getCounter();
 * const next = await counter.increment((p) => p.by = 1).promise();
 * console.assert(next.value === 11);
 *
 * rpc.release(counter);
 * rpc.release(remote);
 * connection.close();
 * (await accepted).close();
 * listener.close();
 * host.close();
 * ```
 *
 * @module
 */

import * as $ from "capnp-es";
import { Ans, type CallContext, Cap, LocalCap, toCap } from "./capability.ts";
import type { RpcConnection } from "./connection.ts";

export {
  Ans,
  BrokenCap,
  type CallContext,
  Cap,
  LocalCap,
  PromiseCap,
} from "./capability.ts";
export {
  type ConnectionLimits,
  type ConnectionOptions,
  DEFAULT_LIMITS,
  RpcConnection,
} from "./connection.ts";
export {
  RpcError,
  type RpcErrorType,
  RpcProtocolError,
  toRpcError,
} from "./errors.ts";
export { RpcMetrics, rpcMetrics } from "./metrics.ts";
export { memoryPipe } from "./memory.ts";
export {
  type ByteStream,
  connectTcp,
  connectUnix,
  DEFAULT_MAX_MESSAGE_BYTES,
  FrameError,
  frameLength,
  listenTcp,
  listenUnix,
  StreamConnection,
  StreamListener,
  type StreamOptions,
  type TcpAddress,
} from "./stream.ts";
export { LIBC_CANDIDATES, libcPath, openFd } from "./fd_stream.ts";
export {
  serveTcp,
  type ServeTcpOptions,
  type TcpCapabilityServer,
} from "./serve_tcp.ts";
export {
  type MessageConnection,
  TransportClosedError,
  type VatNetwork,
} from "./transport.ts";

/** What generated interface classes (`Foo`) offer: a Server class taking
 * the implementation and a Client class wrapping a capability. */
export interface InterfaceClass<Target, Client> {
  readonly Server: new (target: Target) => $.Server;
  readonly Client: new (client: $.Client) => Client;
}

/**
 * A server implementation as {@link serve} takes it: the generated
 * `Foo$Server$Target`, except that a method may also return nothing
 * (a synchronous method) instead of a promise, and gets a third argument,
 * the {@link CallContext} (whose `signal` aborts if the caller cancels).
 */
export type Implementation<Target> = {
  [K in keyof Target]: Target[K] extends
    (params: infer P, results: infer R) => Promise<void>
    ? (params: P, results: R, context: CallContext) => void | Promise<void>
    : Target[K];
};

/** The implementation type a generated interface's Server takes. */
export type ServerOf<I> = I extends
  { readonly Server: new (target: infer T) => $.Server } ? Implementation<T>
  : never;

/**
 * Serves `target` as a capability of interface `iface`. `target` has one
 * method per schema method, `(params, results) => void | Promise<void>`,
 * and may leave out methods (they answer `unimplemented`);
 * throwing an {@link RpcError} sends that error type to the caller, any
 * other error is sent as `failed`. The caller owns the returned reference.
 *
 * @example
 * ```ts
 * import { serve } from "./mod.ts";
 * import { Counter } from "../../proto/gen/rpc_test.ts";
 * let value = 0;
 * const cap = serve(Counter, {
 *   async increment(p, r) {
 *     value += p.by;
 *     r.value = value;
 *   },
 * });
 * const counter = new Counter.Client(cap);
 * const result = await counter.increment((p) => p.by = 42).promise();
 * console.assert(result.value === 42);
 * cap.close();
 * ```
 */
export function serve<Target, Client>(
  iface: InterfaceClass<Target, Client>,
  target: Partial<Implementation<Target>>,
  onClose?: () => void,
): Cap {
  return new LocalCap([new iface.Server(target as Target)], onClose);
}

/**
 * Serves one object under several interfaces (for example an interface
 * and the standard `Persistent`): pass one generated Server per interface.
 */
export function serveAll(
  servers: readonly $.Server[],
  onClose?: () => void,
): Cap {
  return new LocalCap(servers, onClose);
}

/**
 * The peer's bootstrap capability as a typed client; usable at once. The
 * caller owns it: {@link release} it when done.
 */
export function bootstrap<Client>(
  connection: RpcConnection,
  iface: { readonly Client: new (client: $.Client) => Client },
): Client {
  return new iface.Client(connection.bootstrap());
}

/**
 * Another reference to the capability behind a generated client, to keep
 * beyond the call that delivered it (params caps are released when the
 * call returns). Release it with {@link release}.
 */
export function retain<Client extends { client: $.Client }>(
  client: Client,
): Client {
  const cap = toCap(client.client).addRef();
  const ctor = client.constructor as new (client: $.Client) => Client;
  return new ctor(cap);
}

/** Drops the reference a generated client holds. */
export function release(client: { client: $.Client }): void {
  client.client.close();
}

/** The engine's Cap behind a generated client (or a capnp-es client). */
export function capOf(client: { client: $.Client } | $.Client): Cap {
  const inner = typeof (client as $.Client).call === "function"
    ? client as $.Client
    : (client as { client: $.Client }).client;
  return inner instanceof Cap ? inner : toCap(inner);
}

/**
 * Cancels a call whose results are no longer wanted, given the generated
 * results promise (`Foo_Bar$Results$Promise`). Before its Return, a call
 * to a peer sends Finish at once (the peer releases any capabilities in
 * the results) and its `promise()` rejects with an {@link RpcError}; the
 * server's {@link CallContext} signal aborts, also across a middle vat
 * that forwarded the call. After the Return it does nothing.
 *
 * @example
 * ```ts
 * import * as rpc from "./mod.ts";
 * import { TreeHost } from "../../proto/gen/rpc_test.ts";
 * let aborted = false;
 * const host = new TreeHost.Client(rpc.serve(TreeHost, {
 *   wait(_params, _results, { signal }) {
 *     return new Promise((_, reject) =>
 *       signal.addEventListener("abort", () => {
 *         aborted = true;
 *         reject(signal.reason);
 *       })
 *     );
 *   },
 * }));
 * const pending = host.wait();
 * await Promise.resolve();
 * rpc.cancel(pending);
 * await pending.promise().catch(() => {});
 * console.assert(aborted);
 * rpc.release(host);
 * ```
 */
export function cancel(results: { pipeline: { answer: unknown } }): void {
  const answer = results.pipeline.answer;
  if (answer instanceof Ans) answer.cancel();
}
