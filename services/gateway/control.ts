/**
 * The gateway's control port: Cap'n Proto RPC over the stream transport
 * (proto/gateway.capnp). Its bootstrap is `GatewayLogin`; a shell that
 * presents the shared token gets `Gateway`, registers with its `Shell`
 * capability, and the gateway asks that capability where grain hostnames
 * go, over the same connection. A connection that ends takes its shell's
 * registration along only when the shell stops calling in (the heartbeat
 * timeout), so a shell reconnecting after a blip is not dropped from
 * nginx's list.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import type { Logger } from "../runtime/log.ts";
import {
  Gateway as GatewayInterface,
  GatewayLogin,
} from "../../proto/gen/gateway.ts";
import { type Gateway, ShellRegistrationError } from "./proxy.ts";

/** Compares without an early exit, so timing tells nothing of the token. */
function sameToken(given: string, expected: string): boolean {
  const a = new TextEncoder().encode(given);
  const b = new TextEncoder().encode(expected);
  let difference = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) difference |= (a[i] ?? 0) ^ b[i];
  return difference === 0;
}

/** The `Gateway` capability over `gateway`. */
function gatewayCapability(gateway: Gateway): rpc.Cap {
  return rpc.serve(GatewayInterface, {
    registerShell(params) {
      try {
        gateway.registerShell(
          params.shellId,
          params.httpAddress,
          params.shell,
        );
      } catch (error) {
        return Promise.reject(
          error instanceof ShellRegistrationError
            ? new rpc.RpcError("failed", error.message)
            : error,
        );
      }
      return Promise.resolve();
    },
    unregisterShell(params) {
      gateway.unregisterShell(params.shellId);
      return Promise.resolve();
    },
    status(_params, results) {
      const status = gateway.status();
      const out = results._initStatus();
      out.hostname = status.hostname;
      out.pid = status.pid;
      out.rssBytes = BigInt(status.rssBytes);
      out.startedAtMs = BigInt(status.startedAtMs);
      out.address = status.address;
      const shells = out._initShells(status.shells.length);
      status.shells.forEach((shell, i) => shells.set(i, shell));
      return Promise.resolve();
    },
  });
}

/**
 * The control port's bootstrap: `login(token)` gives the `Gateway`
 * capability to holders of the shared token and fails for anyone else.
 */
export function gatewayLogin(gateway: Gateway, token: string): rpc.Cap {
  const inner = gatewayCapability(gateway);
  return rpc.serve(GatewayLogin, {
    login(params, results) {
      if (!sameToken(params.token, token)) {
        return Promise.reject(
          new rpc.RpcError("failed", "wrong gateway token"),
        );
      }
      // Results take over a reference; `inner` keeps its own.
      results.gateway = new GatewayInterface.Client(inner.addRef());
      return Promise.resolve();
    },
  }, () => inner.close());
}

/** Serves `login` (from {@link gatewayLogin}) to every connection on a
 * TCP address. */
export function listenControl(
  login: rpc.Cap,
  address: { hostname: string; port: number },
  log: Logger,
): { port: number; close(): void } {
  return rpc.serveTcp(login, address, {
    onConnectionClosed: (reason) =>
      log.debug("control-connection-closed", { reason: reason.message }),
  });
}
