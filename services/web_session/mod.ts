/**
 * Sandstorm's `WebSession` spoken from the platform's side: HTTP requests
 * and WebSockets relayed to a grain's app over the RPC engine. Shared by
 * the worker (its grains' fd 3) and the gateway (grain hostnames); it
 * imports no role.
 *
 * @example Relay a request to a grain's UiView
 * ```ts ignore
 * import { openWebSession, relayRequest } from "./mod.ts";
 * const session = await openWebSession(uiView, { displayName: "Ann" });
 * const response = await relayRequest(session, new Request("http://g/"));
 * ```
 *
 * @module
 */
export {
  openWebSession,
  type RelayedWebSocket,
  relayRequest,
  relayWebSocket,
  type SessionUser,
} from "./relay.ts";
export { decodeServerFrames, encodeClientFrame } from "./websocket_frames.ts";
