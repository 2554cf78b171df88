/**
 * The supervisor's side of a grain's fd 3: two-party Cap'n Proto over the
 * RPC engine's stream transport. The supervisor exports `SandstormApi` as
 * its bootstrap, takes the app's bootstrap as its `UiView`, and opens
 * `WebSession`s on it; the HTTP and WebSocket relaying is the shared
 * services/web_session/ module's.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import {
  SandstormApi,
  UiView,
  type UiView$Client,
} from "../../proto/gen/sandstorm/grain.ts";
import { Handle } from "../../proto/gen/sandstorm/util.ts";
import type { WebSession$Client } from "../../proto/gen/sandstorm/web-session.ts";
import {
  openWebSession,
  type RelayedWebSocket,
  relayRequest,
  relayWebSocket,
  type SessionUser,
} from "../web_session/mod.ts";

export type { RelayedWebSocket, SessionUser };

/**
 * One grain's fd-3 connection, seen from the platform.
 *
 * @example
 * ```ts ignore
 * const supervisor = GrainSupervisor.attach(fd3Connection);
 * const session = await supervisor.newWebSession({ displayName: "Ann" });
 * const response = await supervisor.fetch(session, new Request("http://grain/"));
 * ```
 */
export class GrainSupervisor {
  readonly connection: rpc.RpcConnection;
  readonly uiView: UiView$Client;
  #api: rpc.Cap;
  #wakeLocks = 0;

  private constructor(stream: rpc.ByteStream) {
    this.#api = rpc.serve(SandstormApi, {
      stayAwake: (_params, results) => {
        this.#wakeLocks++;
        results.handle = new Handle.Client(
          rpc.serve(Handle, {}, () => {
            this.#wakeLocks--;
          }),
        );
        return Promise.resolve();
      },
    });
    this.connection = new rpc.RpcConnection(new rpc.StreamConnection(stream), {
      bootstrap: this.#api,
    });
    this.uiView = rpc.bootstrap(this.connection, UiView);
  }

  /** Starts RPC over a grain's fd-3 byte stream. */
  static attach(stream: rpc.ByteStream): GrainSupervisor {
    return new GrainSupervisor(stream);
  }

  /** How many stayAwake handles the app holds (background work). */
  get wakeLocks(): number {
    return this.#wakeLocks;
  }

  /** Resolves with the reason once the connection to the app ends. */
  get done(): Promise<rpc.RpcError> {
    return this.connection.closed;
  }

  /** The app's title, asked with getViewInfo. */
  async appTitle(): Promise<string> {
    const info = await this.uiView.getViewInfo().promise();
    return info._hasAppTitle() ? info.appTitle.defaultText : "";
  }

  /** Opens a WebSession for `user`; see {@link openWebSession}. */
  newWebSession(
    user: SessionUser,
    options: { basePath?: string; userAgent?: string } = {},
  ): Promise<WebSession$Client> {
    return openWebSession(this.uiView, user, options);
  }

  /** Relays one HTTP request; see {@link relayRequest}. */
  fetch(session: WebSession$Client, request: Request): Promise<Response> {
    return relayRequest(session, request);
  }

  /** Opens a WebSocket; see {@link relayWebSocket}. */
  openWebSocket(
    session: WebSession$Client,
    path: string,
    protocols: string[] = [],
  ): Promise<RelayedWebSocket> {
    return relayWebSocket(session, path, protocols);
  }

  /** Closes the connection; the app sees fd 3 end. */
  close(): void {
    rpc.release(this.uiView);
    this.connection.close();
    this.#api.close();
  }
}
