/**
 * A shell replica's link to a gateway's control port (proto/gateway.capnp
 * over the RPC engine's TCP transport): logs in with the shared token,
 * registers the replica with a `Shell` capability that answers route
 * lookups, calls in again on every heartbeat, and asks the gateway's status
 * for the admin page. A lost connection is made again on the next call.
 *
 * @example
 * ```ts ignore
 * const link = new GatewayLink({
 *   address: { hostname: "127.0.0.1", port: 6081 },
 *   token, shellId: "shell-1", httpAddress: "127.0.0.1:6080",
 *   lookup: (label) => lookupRoute(repo, label),
 * });
 * await link.heartbeat();
 * ```
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import {
  type Gateway$Client,
  GatewayLogin,
  Shell,
} from "../../proto/gen/gateway.ts";
import type { SessionRoute } from "./server.ts";

/** Options of {@link GatewayLink}. */
export interface GatewayLinkOptions {
  /** The gateway's control port. */
  address: { hostname: string; port: number };
  /** Shared secret of shells and gateways. */
  token: string;
  /** Unique per shell process. */
  shellId: string;
  /** host:port of this shell's web server. */
  httpAddress: string;
  /** Where a grain hostname's label goes, or undefined. */
  lookup(label: string): Promise<SessionRoute | undefined>;
}

/** The gateway's process, as its status call reports it. */
export interface GatewayStatusInfo {
  hostname: string;
  pid: number;
  rssBytes: number;
  startedAtMs: number;
  address: string;
  shells: string[];
}

/** Serves route lookups to gateways. */
export function serveShell(
  lookup: (label: string) => Promise<SessionRoute | undefined>,
): rpc.Cap {
  return rpc.serve(Shell, {
    async route(params, results) {
      const route = await lookup(params.hostLabel);
      results.found = route !== undefined;
      if (route === undefined) return;
      const out = results._initRoute();
      out.backend = route.backend;
      out.grainId = route.grainId;
      out.canWrite = route.canWrite;
      out.expiresAtMs = BigInt(route.expiresAt);
      out.userId = route.userId;
      out.userName = route.userName;
      out.sessionKeyHash = route.sessionKeyHash;
      const flags = out._initPermissions(route.permissions.length);
      route.permissions.forEach((flag, i) => flags.set(i, flag));
    },
  });
}

/** One shell's registration with one gateway. */
export class GatewayLink {
  readonly #options: GatewayLinkOptions;
  readonly #shell: rpc.Cap;
  #connection: rpc.RpcConnection | undefined;
  #gateway: Gateway$Client | undefined;
  #closed = false;

  constructor(options: GatewayLinkOptions) {
    this.#options = options;
    this.#shell = serveShell(options.lookup);
  }

  async #connect(): Promise<Gateway$Client> {
    if (this.#gateway !== undefined) return this.#gateway;
    const connection = new rpc.RpcConnection(
      await rpc.connectTcp(this.#options.address),
    );
    const login = rpc.bootstrap(connection, GatewayLogin);
    const gateway = login.login((p) => p.token = this.#options.token)
      .getGateway();
    rpc.release(login);
    this.#connection = connection;
    this.#gateway = gateway;
    connection.closed.then(() => {
      if (this.#connection === connection) this.#forget();
    });
    return gateway;
  }

  #forget(): void {
    if (this.#gateway !== undefined) rpc.release(this.#gateway);
    this.#connection?.close();
    this.#gateway = undefined;
    this.#connection = undefined;
  }

  /** Registers, or refreshes the registration (call it every heartbeat).
   * Fails when the gateway is away or refuses the token. */
  async heartbeat(): Promise<void> {
    if (this.#closed) return;
    const gateway = await this.#connect();
    try {
      await gateway.registerShell((p) => {
        p.shellId = this.#options.shellId;
        p.httpAddress = this.#options.httpAddress;
        p.shell = new Shell.Client(this.#shell);
      }).promise();
    } catch (error) {
      // A refused login or a broken connection: start afresh next time.
      this.#forget();
      throw error;
    }
  }

  /** The gateway's status, or undefined when it does not answer within
   * `timeoutMs`. */
  async status(timeoutMs = 2000): Promise<GatewayStatusInfo | undefined> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const gateway = await this.#connect();
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error("the gateway's status is late")),
          timeoutMs,
        );
      });
      const { status } = await Promise.race([
        gateway.status().promise(),
        late,
      ]);
      return {
        hostname: status.hostname,
        pid: status.pid,
        rssBytes: Number(status.rssBytes),
        startedAtMs: Number(status.startedAtMs),
        address: status.address,
        shells: [...status.shells],
      };
    } catch {
      this.#forget();
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Leaves the gateway's rotation and closes the link. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#gateway !== undefined) {
      await this.#gateway.unregisterShell((p) =>
        p.shellId = this.#options.shellId
      ).promise().catch(() => {});
    }
    this.#forget();
    this.#shell.close();
  }
}
