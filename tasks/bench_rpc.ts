/**
 * RPC benchmarks (`deno task bench:rpc [NAME...]`). Each one measures its
 * baseline in the same run, and the run ends with one `result NAME VALUE`
 * line per result. Benchmarks live in the `benchmarks` table below: add a
 * transport's benchmarks there (each returns its results).
 *
 * - tcp_vs_cpp_rtt: mean round trip of a small call (TestHost.add, one
 *   call at a time) from this process to a second Deno process over TCP,
 *   divided by the same between a C++ client and a C++ server
 *   (tests/interop/peer.c++, libcapnp 0.9.2). Target: at most 1.3. Five
 *   alternating rounds of 5,000 calls each; the best round of each side
 *   counts, since other load on the machine only ever adds time.
 * - tcp_calls_per_second: TestHost.add calls completed per second with
 *   1,000 calls in flight, over TCP to a second Deno process.
 *
 * @module
 */

import { TestHost } from "../proto/gen/rpc_test.ts";
import * as rpc from "../services/rpc/mod.ts";
import { udpBenchmarks } from "./bench_rpc_udp.ts";

/** One measured value. */
export interface BenchResult {
  name: string;
  value: number;
  /** Printed beside the value, e.g. the raw numbers behind a ratio. */
  detail?: string;
}

type Host = InstanceType<typeof TestHost.Client>;

const root = new URL("..", import.meta.url).pathname;
const RTT_CALLS = 5000;
const RTT_WARMUP = 500;
const RTT_ROUNDS = 5;
const IN_FLIGHT = 1000;
const THROUGHPUT_CALLS = 50_000;

/** A child process that prints "listening PORT" once ready. */
export interface Server {
  port: number;
  stop(): Promise<void>;
}

/** Starts `command` and waits for its "listening PORT" line. */
export async function startServer(
  command: string,
  args: string[],
): Promise<Server> {
  const child = new Deno.Command(command, {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${command} exited before listening`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const port = Number(text.trim().split(/\s+/)[1]);
  return {
    port,
    async stop() {
      await child.stdin.close().catch(() => {});
      try {
        child.kill("SIGTERM");
      } catch {
        // Already exited.
      }
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

/** Starts the Deno TestHost server process (services/rpc/testdata). */
export function startDenoServer(): Promise<Server> {
  return startServer(Deno.execPath(), [
    "run",
    "--allow-net=127.0.0.1",
    `${root}services/rpc/testdata/peer.ts`,
    "server",
    "127.0.0.1",
    "0",
  ]);
}

/** Builds the C++ peer (tests/interop) if needed and returns its path. */
export async function cppPeer(): Promise<string> {
  const make = await new Deno.Command("make", {
    args: ["-s", "-C", `${root}tests/interop`],
  }).output();
  if (make.code !== 0) {
    throw new Error(new TextDecoder().decode(make.stderr));
  }
  return `${root}tests/interop/build/peer`;
}

/** Mean microseconds per sequential add call over `host`. */
export async function measureRtt(host: Host, calls: number): Promise<number> {
  for (let i = 0; i < RTT_WARMUP; i++) {
    await host.add((p) => p.a = i).promise();
  }
  const start = performance.now();
  for (let i = 0; i < calls; i++) {
    const result = await host.add((p) => {
      p.a = i;
      p.b = 1;
    }).promise();
    if (result.sum !== i + 1) throw new Error("wrong sum");
  }
  return (performance.now() - start) * 1000 / calls;
}

/** Calls per second with `inFlight` add calls outstanding at all times. */
export async function measureThroughput(
  host: Host,
  total: number,
  inFlight: number,
): Promise<number> {
  let started = 0;
  let done = 0;
  const start = performance.now();
  await new Promise<void>((resolve, reject) => {
    const launch = () => {
      const i = started++;
      host.add((p) => {
        p.a = i;
        p.b = 1;
      }).promise().then((result) => {
        if (result.sum !== i + 1) throw new Error("wrong sum");
        done++;
        if (done === total) resolve();
        else if (started < total) launch();
      }).catch(reject);
    };
    for (let i = 0; i < Math.min(inFlight, total); i++) launch();
  });
  return total / ((performance.now() - start) / 1000);
}

async function denoTcpHost<T>(
  use: (host: Host) => Promise<T>,
): Promise<T> {
  const server = await startDenoServer();
  const connection = new rpc.RpcConnection(
    await rpc.connectTcp({ hostname: "127.0.0.1", port: server.port }),
  );
  try {
    return await use(rpc.bootstrap(connection, TestHost));
  } finally {
    connection.close();
    await server.stop();
  }
}

async function cppRtt(peer: string, port: number): Promise<number> {
  const output = await new Deno.Command(peer, {
    args: ["rtt", `127.0.0.1:${port}`, String(RTT_CALLS)],
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  const match = /rtt_us ([0-9.]+)/.exec(text);
  if (output.code !== 0 || match === null) {
    throw new Error(
      `C++ rtt failed: ${new TextDecoder().decode(output.stderr)}`,
    );
  }
  return Number(match[1]);
}

async function tcpVsCppRtt(): Promise<BenchResult[]> {
  const peer = await cppPeer();
  const cppServer = await startServer(peer, ["server", "127.0.0.1:0"]);
  const cpp: number[] = [];
  const deno: number[] = [];
  try {
    await denoTcpHost(async (host) => {
      // Alternate the two so that machine noise hits both alike.
      for (let round = 0; round < RTT_ROUNDS; round++) {
        cpp.push(await cppRtt(peer, cppServer.port));
        deno.push(await measureRtt(host, RTT_CALLS));
      }
    });
  } finally {
    await cppServer.stop();
  }
  const denoUs = Math.min(...deno);
  const cppUs = Math.min(...cpp);
  return [{
    name: "tcp_vs_cpp_rtt",
    value: denoUs / cppUs,
    detail: `deno ${denoUs.toFixed(1)} us, c++ ${cppUs.toFixed(1)} us`,
  }];
}

async function tcpCallsPerSecond(): Promise<BenchResult[]> {
  const rate = await denoTcpHost(async (host) => {
    await measureThroughput(host, 5000, IN_FLIGHT);
    return await measureThroughput(host, THROUGHPUT_CALLS, IN_FLIGHT);
  });
  return [{
    name: "tcp_calls_per_second",
    value: rate,
    detail: `${IN_FLIGHT} in flight`,
  }];
}

/** Every benchmark by name; run in this order when none are named. */
export const benchmarks: Record<string, () => Promise<BenchResult[]>> = {
  tcp_vs_cpp_rtt: tcpVsCppRtt,
  tcp_calls_per_second: tcpCallsPerSecond,
  // Sealed UDP: udp_vs_tcp_rtt, udp_calls_per_second, bulk_vs_seal.
  ...udpBenchmarks({ measureRtt, measureThroughput }),
};

if (import.meta.main) {
  const names = Deno.args.length > 0 ? Deno.args : Object.keys(benchmarks);
  const results: BenchResult[] = [];
  for (const name of names) {
    const bench = benchmarks[name];
    if (bench === undefined) {
      console.error(
        `unknown benchmark ${name}; known: ${
          Object.keys(benchmarks).join(", ")
        }`,
      );
      Deno.exit(2);
    }
    for (const result of await bench()) {
      console.log(
        `${result.name}: ${result.value.toFixed(3)}${
          result.detail ? ` (${result.detail})` : ""
        }`,
      );
      results.push(result);
    }
  }
  for (const result of results) {
    console.log(`result ${result.name} ${result.value.toFixed(3)}`);
  }
}
