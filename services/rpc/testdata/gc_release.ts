/**
 * Run with `--v8-flags=--expose-gc`: drops every reference to an imported
 * capability without closing it, collects garbage, and prints the number
 * of counters the host still has alive (0 when the Release went out).
 *
 * @module
 */

import { TestHost } from "../../../proto/gen/rpc_test.ts";
import { bootstrap, memoryPipe, RpcConnection } from "../mod.ts";
import { serveTestHost } from "./test_host.ts";

const state = serveTestHost();
const [a, b] = memoryPipe();
const server = new RpcConnection(b, { bootstrap: state.cap });
const client = new RpcConnection(a);
const host = bootstrap(client, TestHost);

async function useAndForget(): Promise<void> {
  const made = await host.newCounter((p) => p.start = 1).promise();
  await made.counter.increment((p) => p.by = 1).promise();
}

for (let i = 0; i < 3; i++) await useAndForget();
const before = state.live();
const gc = (globalThis as { gc?: () => void }).gc!;
for (let i = 0; i < 10 && state.live() > 0; i++) {
  gc();
  await new Promise((resolve) => setTimeout(resolve, 10));
  await host.add().promise();
}
console.log(`before ${before} after ${state.live()}`);
client.close();
server.close();
