/**
 * Serving one capability to every peer that connects over TCP: the shape of
 * every control endpoint on loopback or a machine's address.
 *
 * @module
 */
import type * as $ from "capnp-es";
import { RpcConnection } from "./connection.ts";
import { listenTcp, type TcpAddress } from "./stream.ts";

/** A listening endpoint made by {@link serveTcp}. */
export interface TcpCapabilityServer {
  /** The port listened on (useful when 0 was asked for). */
  readonly port: number;
  /** Stops accepting and closes every open connection. The bootstrap
   * capability stays the caller's. */
  close(): void;
}

/** Hooks for a {@link serveTcp} endpoint's events, for its role's log. */
export interface ServeTcpOptions {
  /** Called when accepting fails while the endpoint is open; accepting
   * then stops. */
  onAcceptError?: (error: unknown) => void;
  /** Called once per connection when it ends. */
  onConnectionClosed?: (reason: Error) => void;
}

/**
 * Listens on `address` and gives `bootstrap` as the bootstrap capability
 * of every connection. Each connection takes its own reference (see
 * RpcConnection), so the caller keeps and eventually closes its own.
 *
 * @example
 * ```ts
 * import * as rpc from "./mod.ts";
 * import { serveTcp } from "./serve_tcp.ts";
 * const cap = new rpc.BrokenCap(new rpc.RpcError("failed", "nothing here"));
 * const server = serveTcp(cap, { hostname: "127.0.0.1", port: 0 });
 * if (server.port <= 0) throw new Error("no port");
 * server.close();
 * cap.close();
 * ```
 */
export function serveTcp(
  bootstrap: $.Client,
  address: TcpAddress,
  options: ServeTcpOptions = {},
): TcpCapabilityServer {
  const listener = listenTcp(address);
  const connections = new Set<RpcConnection>();
  let open = true;
  (async () => {
    while (open) {
      let transport;
      try {
        transport = await listener.accept();
      } catch (error) {
        if (open) options.onAcceptError?.(error);
        return;
      }
      const connection = new RpcConnection(transport, { bootstrap });
      connections.add(connection);
      connection.closed.then((reason) => {
        connections.delete(connection);
        options.onConnectionClosed?.(reason);
      });
    }
  })();
  return {
    port: listener.port,
    close() {
      open = false;
      listener.close();
      for (const connection of connections) connection.close();
    },
  };
}
