/**
 * The RPC variant of the simulated-machine test (network_netns_test.ts):
 * real Cap'n Proto calls over the sealed UDP network.
 *
 *   rpc_peer.ts serve KEY_FILE BIND PEER_VAT_HEX PEER_ADDRESS COUNT
 *   rpc_peer.ts call  KEY_FILE BIND PEER_VAT_HEX PEER_ADDRESS COUNT
 *
 * The caller makes COUNT sequential `increment(1)` calls on a counter it
 * got (pipelined) from the server's TestHost; call i must return i + 1,
 * which holds only if every call ran exactly once and in order. It prints
 * `ok` and exits 0, or prints the failure and exits 1. The server runs
 * until killed.
 *
 * @module
 */

import { TestHost } from "../../../../proto/gen/rpc_test.ts";
import * as rpc from "../../mod.ts";
import { serveTestHost } from "../../testdata/test_host.ts";
import { parseVatIdHex, VatIdentity } from "../../vat_id.ts";
import { SealedUdpNetwork } from "../network.ts";

const [role, keyFile, bind, peerHex, peerAddress, countText] = Deno.args;
const count = Number(countText);

const deadline = setTimeout(() => {
  console.log("FAILED: calls did not finish within 120 s");
  Deno.exit(1);
}, 120_000);

const identity = await VatIdentity.load(keyFile);
const network = await SealedUdpNetwork.create({ identity, bind });
const peerVatId = parseVatIdHex(peerHex);
network.directory.set(peerVatId, peerAddress);
console.log(`ready ${network.address}`);

if (role === "serve") {
  clearTimeout(deadline);
  const host = serveTestHost();
  for (;;) {
    const transport = await network.accept();
    new rpc.RpcConnection(transport, { bootstrap: host.cap });
  }
}

let failed = false;
const connection = new rpc.RpcConnection(network.connect(peerVatId));
try {
  const host = rpc.bootstrap(connection, TestHost);
  const counter = host.newCounter((p) => p.start = 0).getCounter();
  for (let i = 0; i < count; i++) {
    const result = await counter.increment((p) => p.by = 1).promise();
    if (result.value !== i + 1) {
      throw new Error(`call ${i} returned ${result.value}, not ${i + 1}`);
    }
    if (i % 50 === 0) console.log(`called ${i}`);
  }
  rpc.release(counter);
  rpc.release(host);
  console.log(`metrics ${JSON.stringify(network.metrics())}`);
  console.log("ok");
} catch (error) {
  failed = true;
  console.log(`metrics ${JSON.stringify(network.metrics())}`);
  console.log(`FAILED: ${error instanceof Error ? error.stack : error}`);
} finally {
  connection.close();
  await network.close();
}
clearTimeout(deadline);
Deno.exit(failed ? 1 : 0);
