/**
 * Typed errors of the RPC engine, one per Cap'n Proto exception type.
 *
 * @module
 */

/** The four exception types of rpc.capnp, by the name callers check. */
export type RpcErrorType =
  | "failed"
  | "overloaded"
  | "disconnected"
  | "unimplemented";

/** The wire values of `Exception.Type` in rpc.capnp, by type name. */
export const EXCEPTION_TYPE_CODES: Readonly<Record<RpcErrorType, number>> = {
  failed: 0,
  overloaded: 1,
  disconnected: 2,
  unimplemented: 3,
};

/** Maps a wire `Exception.Type` value to its name; unknown values are
 * treated as `failed`, which is what the spec asks of a receiver. */
export function exceptionTypeName(code: number): RpcErrorType {
  switch (code) {
    case 1:
      return "overloaded";
    case 2:
      return "disconnected";
    case 3:
      return "unimplemented";
    default:
      return "failed";
  }
}

/**
 * An error raised by a call or a capability: a remote exception, a broken
 * connection, a method the server does not implement, or a limit reached.
 * `type` says how a caller should react: `disconnected` means reconnect and
 * retry, `overloaded` means retry later, `unimplemented` means give up on
 * this method, `failed` means the request itself was wrong or the server
 * hit a bug.
 *
 * @example
 * ```ts
 * import { RpcError } from "./errors.ts";
 * const error = new RpcError("overloaded", "too many calls in flight");
 * console.assert(error.type === "overloaded");
 * console.assert(error instanceof Error);
 * ```
 */
export class RpcError extends Error {
  /** How the caller should react; see the class comment. */
  readonly type: RpcErrorType;
  /** True when the exception came from the peer rather than this vat. */
  readonly remote: boolean;

  constructor(
    type: RpcErrorType,
    message: string,
    options?: ErrorOptions & { remote?: boolean },
  ) {
    super(message, options);
    this.name = "RpcError";
    this.type = type;
    this.remote = options?.remote ?? false;
  }
}

/**
 * A peer broke the protocol (a bad message, an unknown question or export
 * ID, a limit passed). The connection answers with `Abort` and closes.
 */
export class RpcProtocolError extends RpcError {
  constructor(message: string, options?: ErrorOptions) {
    super("failed", message, options);
    this.name = "RpcProtocolError";
  }
}

/** Turns anything a server threw into the RpcError sent to the caller. */
export function toRpcError(error: unknown): RpcError {
  if (error instanceof RpcError) return error;
  if (error instanceof Error) {
    return new RpcError("failed", error.message, { cause: error });
  }
  return new RpcError("failed", String(error));
}
