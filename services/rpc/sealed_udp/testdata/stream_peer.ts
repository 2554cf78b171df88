/**
 * One end of the simulated-machine stream test (network_netns_test.ts).
 *
 *   stream_peer.ts send    KEY_FILE BIND PEER_VAT_HEX PEER_ADDRESS COUNT
 *   stream_peer.ts receive KEY_FILE BIND PEER_VAT_HEX PEER_ADDRESS COUNT
 *
 * The sender sends COUNT patterned messages, paced, printing progress; the
 * receiver checks that each arrives exactly once and in order, then answers
 * with a summary the sender checks. Both print `ok` and exit 0 on success,
 * or print the failure and exit 1.
 *
 * @module
 */

import { parseVatIdHex, VatIdentity } from "../../vat_id.ts";
import { SealedUdpNetwork } from "../network.ts";

const [role, keyFile, bind, peerHex, peerAddress, countText] = Deno.args;
const count = Number(countText);
const SIZES = [1, 40, 300, 1180, 2500, 90, 5000];

function patterned(index: number): Uint8Array {
  const size = SIZES[index % SIZES.length];
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (index * 31 + i * 7) & 255;
  if (size >= 4) new DataView(bytes.buffer).setUint32(0, index);
  return bytes;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// A stuck stream must fail the test, not hang it.
const deadline = setTimeout(() => {
  console.log("FAILED: no end of stream within 120 s");
  Deno.exit(1);
}, 120_000);

const identity = await VatIdentity.load(keyFile);
const network = await SealedUdpNetwork.create({ identity, bind });
const peerVatId = parseVatIdHex(peerHex);
network.directory.set(peerVatId, peerAddress);
console.log(`ready ${network.address}`);

let failed = false;
try {
  if (role === "send") {
    const connection = network.connect(peerVatId);
    for (let i = 0; i < count; i++) {
      connection.send(patterned(i));
      if (i % 50 === 0) console.log(`sent ${i}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    console.log(`sent all ${count}`);
    const summary = await connection.receive();
    const expected = new TextEncoder().encode(`received ${count} in order`);
    if (summary === null || !same(summary, expected)) {
      throw new Error(
        `bad summary: ${summary && new TextDecoder().decode(summary)}`,
      );
    }
  } else {
    const connection = await network.accept();
    for (let i = 0; i < count; i++) {
      const message = await connection.receive();
      if (message === null) throw new Error(`closed before message ${i}`);
      if (!same(message, patterned(i))) {
        const got = message.length >= 4
          ? new DataView(message.buffer, message.byteOffset).getUint32(0)
          : -1;
        throw new Error(
          `message ${i}: got ${message.length} bytes starting with index ${got}`,
        );
      }
      if (i % 50 === 0) console.log(`received ${i}`);
    }
    connection.send(new TextEncoder().encode(`received ${count} in order`));
    // Wait for the sender to close, which also means it has our summary.
    const extra = await connection.receive();
    if (extra !== null) throw new Error(`unexpected message after the stream`);
  }
  console.log(`metrics ${JSON.stringify(network.metrics())}`);
  console.log("ok");
} catch (error) {
  failed = true;
  console.log(`metrics ${JSON.stringify(network.metrics())}`);
  console.log(`FAILED: ${error instanceof Error ? error.stack : error}`);
} finally {
  await network.close();
}
clearTimeout(deadline);
Deno.exit(failed ? 1 : 0);
