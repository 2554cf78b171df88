/**
 * The Deno side of the RPC benchmark (tasks/bench_rpc.ts) as its own
 * process: serves TestHost (proto/rpc_test.capnp) on TCP.
 *
 *   deno run --allow-net=127.0.0.1 peer.ts server 127.0.0.1 0
 *
 * prints "listening PORT" and serves until killed or stdin closes.
 *
 * @module
 */

import { listenTcp, RpcConnection } from "../mod.ts";
import { serveTestHost } from "./test_host.ts";

async function serveTcp(hostname: string, port: number): Promise<void> {
  const state = serveTestHost();
  const listener = listenTcp({ hostname, port });
  console.log(`listening ${listener.port}`);
  for (;;) {
    const transport = await listener.accept();
    new RpcConnection(transport, { bootstrap: state.cap });
  }
}

const [mode, hostname, port] = Deno.args;
if (mode === "server") {
  serveTcp(hostname ?? "127.0.0.1", Number(port ?? 0));
  // The parent closes our stdin to stop us.
  (async () => {
    for await (const _ of Deno.stdin.readable) {
      // Ignore input; end of input ends the process.
    }
    Deno.exit(0);
  })();
} else {
  console.error("usage: peer.ts server HOSTNAME PORT");
  Deno.exit(2);
}
