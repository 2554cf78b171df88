/**
 * Counters of the RPC engine. Every connection adds to one
 * {@link RpcMetrics} object: the process-wide {@link rpcMetrics} unless it
 * was given its own. A service exports them with its other metrics.
 *
 * @module
 */

/** Counters of one set of connections; all start at zero. */
export class RpcMetrics {
  connectionsOpened = 0;
  connectionsClosed = 0;
  messagesSent = 0;
  messagesReceived = 0;
  callsSent = 0;
  callsReceived = 0;
  /** Calls refused because the peer had too many outstanding. */
  callsRefused = 0;
  /** Messages that failed to decode or broke the protocol. */
  badMessages = 0;
  /** Frames refused by a transport: truncated, garbage or oversized. */
  badFrames = 0;
  abortsSent = 0;
  abortsReceived = 0;
  unimplementedSent = 0;
  unimplementedReceived = 0;
  embargoes = 0;
  resolvesSent = 0;
  resolvesReceived = 0;
  importsReleased = 0;
  exportsReleased = 0;
  /** Engine errors caught on a callback path (each ended a connection). */
  internalErrors = 0;
  /** SturdyRefs refused by a restorer (wrong zone, forged, unknown). */
  restoresRefused = 0;

  /** A plain copy of the counters, for logs and tests. */
  snapshot(): Record<string, number> {
    return { ...this } as unknown as Record<string, number>;
  }
}

/** The counters connections use when given none. */
export const rpcMetrics: RpcMetrics = new RpcMetrics();
