/**
 * Sealed UDP benchmarks, run by `deno task bench:rpc` (tasks/bench_rpc.ts
 * adds {@link udpBenchmarks} to its table). The far side is a second process,
 * services/rpc/sealed_udp/testdata/bench_peer.ts.
 *
 * - udp_vs_tcp_rtt: mean round trip of a small call (TestHost.add, one at a
 *   time) over sealed UDP divided by the same engine over TCP, both to the
 *   same server process. Target: at most 1.2.
 * - udp_calls_per_second: TestHost.add calls per second with 1,000 in
 *   flight over sealed UDP.
 * - bulk_vs_seal: MB/s of 1 MiB messages sent over sealed UDP (each
 *   acknowledged by the far side, 8 MiB in flight) divided by MB/s of
 *   libsodium sealing 1200-byte packets on one core (the shim, in this
 *   process). Target: at least 0.3.
 *
 * @module
 */

import { TestHost } from "../proto/gen/rpc_test.ts";
import { libraryPath, sealBatch } from "../ffi/native.ts";
import * as rpc from "../services/rpc/mod.ts";
import { SealedUdpNetwork } from "../services/rpc/sealed_udp/mod.ts";
import { parseVatIdHex, VatIdentity } from "../services/rpc/vat_id.ts";
import type { BenchResult } from "./bench_rpc.ts";

/** The engine's measuring loops, lent by bench_rpc.ts (passed in rather
 * than imported, so the two modules do not import each other). */
export interface Measures {
  measureRtt(host: Host, calls: number): Promise<number>;
  measureThroughput(
    host: Host,
    total: number,
    inFlight: number,
  ): Promise<number>;
}

type Host = InstanceType<typeof TestHost.Client>;
let measures: Measures;

const peerScript = new URL(
  "../services/rpc/sealed_udp/testdata/bench_peer.ts",
  import.meta.url,
).pathname;
const RTT_CALLS = 5000;
const RTT_ROUNDS = 3;
const IN_FLIGHT = 1000;
const THROUGHPUT_CALLS = 50_000;
const BULK_MESSAGES = 200;
const BULK_IN_FLIGHT = 8;
const MIB = 1024 * 1024;

interface Peer {
  tcpPort: number;
  rpcAddress: string;
  bulkAddress: string;
  vatId: Uint8Array;
  stop(): Promise<void>;
}

async function startPeer(): Promise<Peer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-net=127.0.0.1",
      `--allow-ffi=${libraryPath}`,
      peerScript,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("bench_peer.ts exited before listening");
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const [, port, rpcAddress, bulkAddress, vatHex] = text.trim().split(/\s+/);
  return {
    tcpPort: Number(port),
    rpcAddress,
    bulkAddress,
    vatId: parseVatIdHex(vatHex),
    async stop() {
      await child.stdin.close().catch(() => {});
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

/** Runs `use` with a local sealed UDP network and the peer process. */
async function withPeer<T>(
  use: (peer: Peer, network: SealedUdpNetwork) => Promise<T>,
): Promise<T> {
  const peer = await startPeer();
  const network = await SealedUdpNetwork.create({
    identity: VatIdentity.generate(),
  });
  try {
    return await use(peer, network);
  } finally {
    await network.close();
    await peer.stop();
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function udpHost(peer: Peer, network: SealedUdpNetwork) {
  network.directory.set(peer.vatId, peer.rpcAddress);
  const connection = new rpc.RpcConnection(network.connect(peer.vatId));
  return { connection, host: rpc.bootstrap(connection, TestHost) };
}

async function udpVsTcpRtt(): Promise<BenchResult[]> {
  return await withPeer(async (peer, network) => {
    const tcp = new rpc.RpcConnection(
      await rpc.connectTcp({ hostname: "127.0.0.1", port: peer.tcpPort }),
    );
    const tcpHost = rpc.bootstrap(tcp, TestHost);
    const udp = udpHost(peer, network);
    const tcpUs: number[] = [];
    const udpUs: number[] = [];
    try {
      // Alternate the two so that machine noise hits both alike.
      for (let round = 0; round < RTT_ROUNDS; round++) {
        tcpUs.push(await measures.measureRtt(tcpHost, RTT_CALLS));
        udpUs.push(await measures.measureRtt(udp.host, RTT_CALLS));
      }
    } finally {
      tcp.close();
      udp.connection.close();
    }
    const u = median(udpUs);
    const t = median(tcpUs);
    return [{
      name: "udp_vs_tcp_rtt",
      value: u / t,
      detail: `sealed udp ${u.toFixed(1)} us, tcp ${t.toFixed(1)} us`,
    }];
  });
}

async function udpCallsPerSecond(): Promise<BenchResult[]> {
  return await withPeer(async (peer, network) => {
    const udp = udpHost(peer, network);
    try {
      await measures.measureThroughput(udp.host, 5000, IN_FLIGHT);
      const rate = await measures.measureThroughput(
        udp.host,
        THROUGHPUT_CALLS,
        IN_FLIGHT,
      );
      return [{
        name: "udp_calls_per_second",
        value: rate,
        detail: `${IN_FLIGHT} in flight`,
      }];
    } finally {
      udp.connection.close();
    }
  });
}

/** MB/s of sealing 1200-byte packets, 256 per call, on this thread. */
function sealMegabytesPerSecond(): number {
  const packets = 256;
  const size = 1200;
  const stride = size + 16;
  const buffer = new Uint8Array(packets * stride);
  const descriptors = new Uint32Array(packets * 4);
  for (let i = 0; i < packets; i++) {
    descriptors.set([i * stride, 0, size, 0], i * 4);
  }
  const batch = {
    buffer,
    descriptors,
    nonces: crypto.getRandomValues(new Uint8Array(packets * 24)),
    keys: crypto.getRandomValues(new Uint8Array(32)),
    count: packets,
    status: new Uint8Array(packets),
  };
  for (let i = 0; i < 200; i++) sealBatch(batch);
  const calls = 2000;
  const start = performance.now();
  for (let i = 0; i < calls; i++) sealBatch(batch);
  const seconds = (performance.now() - start) / 1000;
  return calls * packets * size / seconds / 1e6;
}

async function bulkMegabytesPerSecond(
  peer: Peer,
  network: SealedUdpNetwork,
  messages: number,
): Promise<number> {
  network.directory.set(peer.vatId, peer.bulkAddress);
  const connection = network.connect(peer.vatId);
  const payload = crypto.getRandomValues(new Uint8Array(65536));
  const message = new Uint8Array(MIB);
  for (let at = 0; at < MIB; at += payload.length) message.set(payload, at);
  const start = performance.now();
  let sent = 0;
  for (; sent < Math.min(BULK_IN_FLIGHT, messages); sent++) {
    connection.send(message);
  }
  for (let acked = 0; acked < messages; acked++) {
    const ack = await connection.receive();
    if (ack === null || new DataView(ack.buffer).getUint32(0) !== MIB) {
      throw new Error("bulk peer answered wrongly");
    }
    if (sent < messages) {
      connection.send(message);
      sent++;
    }
  }
  const seconds = (performance.now() - start) / 1000;
  connection.close();
  return messages * MIB / seconds / 1e6;
}

async function bulkVsSeal(): Promise<BenchResult[]> {
  return await withPeer(async (peer, network) => {
    await bulkMegabytesPerSecond(peer, network, 20);
    const bulk = await bulkMegabytesPerSecond(peer, network, BULK_MESSAGES);
    const seal = sealMegabytesPerSecond();
    return [{
      name: "bulk_vs_seal",
      value: bulk / seal,
      detail: `sealed udp ${bulk.toFixed(1)} MB/s, seal ${
        seal.toFixed(1)
      } MB/s on one core`,
    }, {
      name: "udp_bulk_megabytes_per_second",
      value: bulk,
    }];
  });
}

/** The sealed UDP benchmarks by name. */
export function udpBenchmarks(
  given: Measures,
): Record<string, () => Promise<BenchResult[]>> {
  measures = given;
  return {
    udp_vs_tcp_rtt: udpVsTcpRtt,
    udp_calls_per_second: udpCallsPerSecond,
    bulk_vs_seal: bulkVsSeal,
  };
}
