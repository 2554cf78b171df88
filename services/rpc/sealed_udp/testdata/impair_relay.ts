/**
 * A userspace link impairer for kernels without `tc netem` (used by
 * network_netns_test.ts): forwards UDP between two endpoints through two
 * ports of its own, delaying every datagram, sending some ahead of the
 * delayed ones (reordering), and sending some twice (duplication).
 *
 *   impair_relay.ts HOST PORT_TOWARD_B B_ADDRESS PORT_TOWARD_A A_ADDRESS \
 *     DELAY_MS REORDER_PERCENT DUPLICATE_PERCENT
 *
 * A datagram that arrives on PORT_TOWARD_B goes to B from PORT_TOWARD_A,
 * so B's answers come back through the relay, and the other way round.
 *
 * @module
 */

const [
  host,
  towardBPort,
  bAddress,
  towardAPort,
  aAddress,
  delay,
  reorder,
  dup,
] = Deno.args;
const delayMs = Number(delay);
const reorderShare = Number(reorder) / 100;
const duplicateShare = Number(dup) / 100;

function netAddr(text: string): Deno.NetAddr {
  const [hostname, port] = text.split(":");
  return { transport: "udp", hostname, port: Number(port) };
}

const towardB = Deno.listenDatagram({
  transport: "udp",
  hostname: host,
  port: Number(towardBPort),
});
const towardA = Deno.listenDatagram({
  transport: "udp",
  hostname: host,
  port: Number(towardAPort),
});
let forwarded = 0;
let duplicated = 0;
let reordered = 0;

function forward(
  datagram: Uint8Array,
  via: Deno.DatagramConn,
  to: Deno.NetAddr,
): void {
  const copies = Math.random() < duplicateShare ? 2 : 1;
  if (copies === 2) duplicated++;
  for (let c = 0; c < copies; c++) {
    const early = Math.random() < reorderShare;
    if (early) reordered++;
    const wait = early ? 0 : delayMs + Math.random() * delayMs / 4;
    setTimeout(() => {
      via.send(datagram, to).catch(() => {});
      forwarded++;
    }, wait);
  }
}

async function pump(
  from: Deno.DatagramConn,
  via: Deno.DatagramConn,
  to: Deno.NetAddr,
) {
  for await (const [datagram] of from) forward(datagram, via, to);
}

setInterval(() => {
  console.log(
    `forwarded ${forwarded} duplicated ${duplicated} reordered ${reordered}`,
  );
}, 1000);
console.log("relaying");
await Promise.all([
  pump(towardB, towardA, netAddr(bAddress)),
  pump(towardA, towardB, netAddr(aAddress)),
]);
