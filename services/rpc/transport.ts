/**
 * The boundary between the RPC engine and the networks that carry its
 * messages. The engine speaks only to a {@link MessageConnection}; the
 * stream transport (unix sockets, TCP, a grain's fd 3) and the sealed UDP
 * network each provide one.
 *
 * @module
 */

/**
 * An ordered, reliable, two-way channel of whole Cap'n Proto messages.
 *
 * A message is the standard serialization of one `rpc.capnp` Message: the
 * segment table followed by the segments, exactly as the stream framing
 * writes it. A connection never splits or merges messages.
 */
export interface MessageConnection {
  /**
   * The peer's vat ID (an ed25519 public key, 32 bytes) when the network
   * authenticates peers; undefined on an unauthenticated stream.
   */
  readonly peerVatId: Uint8Array | undefined;

  /**
   * Queues one message. Throws {@link TransportClosedError} once the
   * connection is closed. Delivery is in order; send never reorders or
   * drops a message while the connection lives.
   */
  send(message: Uint8Array): void;

  /**
   * The next message from the peer, or null once the peer closed cleanly.
   * Rejects with {@link TransportClosedError} when the connection broke.
   */
  receive(): Promise<Uint8Array | null>;

  /** Closes the connection; pending receives resolve to null. */
  close(reason?: Error): void;
}

/** A set of vats reachable by vat ID: how a vat connects to its peers. */
export interface VatNetwork {
  /** This vat's own ID. */
  readonly vatId: Uint8Array;

  /** A connection to the vat with the given ID, made or reused. */
  connect(peerVatId: Uint8Array): MessageConnection;

  /** Resolves with each connection that a peer opens to this vat. */
  accept(): Promise<MessageConnection>;

  close(): Promise<void>;
}

/** Raised by a connection that can no longer carry messages. */
export class TransportClosedError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TransportClosedError";
  }
}
