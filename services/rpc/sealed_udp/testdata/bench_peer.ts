/**
 * The far side of the sealed UDP benchmarks (tasks/bench_rpc_udp.ts), a
 * process of its own:
 *
 *   deno run --allow-read --allow-net=127.0.0.1 --allow-ffi=LIB \
 *     bench_peer.ts
 *
 * Serves TestHost (proto/rpc_test.capnp) both over TCP and over a sealed
 * UDP network, so one process answers both transports, and runs a second
 * sealed UDP network that answers every bulk message with a 4-byte ack.
 * Prints `listening TCP_PORT RPC_UDP_ADDRESS BULK_UDP_ADDRESS VAT_ID_HEX`
 * and runs until its stdin closes.
 *
 * @module
 */

import { listenTcp, RpcConnection } from "../../mod.ts";
import { serveTestHost } from "../../testdata/test_host.ts";
import { VatIdentity, vatIdHex } from "../../vat_id.ts";
import { SealedUdpNetwork } from "../network.ts";
import type { MessageConnection } from "../../transport.ts";

const state = serveTestHost();
const identity = VatIdentity.generate();
const rpcNetwork = await SealedUdpNetwork.create({ identity });
const bulkNetwork = await SealedUdpNetwork.create({ identity });
const listener = listenTcp({ hostname: "127.0.0.1", port: 0 });

(async () => {
  for (;;) {
    const transport = await listener.accept();
    new RpcConnection(transport, { bootstrap: state.cap });
  }
})();
(async () => {
  for (;;) {
    const transport = await rpcNetwork.accept();
    new RpcConnection(transport, { bootstrap: state.cap });
  }
})();

async function sink(connection: MessageConnection): Promise<void> {
  const ack = new Uint8Array(4);
  for (;;) {
    const message = await connection.receive();
    if (message === null) return;
    new DataView(ack.buffer).setUint32(0, message.length);
    connection.send(ack);
  }
}
(async () => {
  for (;;) sink(await bulkNetwork.accept()).catch(() => {});
})();

console.log(
  `listening ${listener.port} ${rpcNetwork.address} ${bulkNetwork.address} ${
    vatIdHex(identity.vatId)
  }`,
);
for await (const _ of Deno.stdin.readable) {
  // End of input ends the process.
}
Deno.exit(0);
