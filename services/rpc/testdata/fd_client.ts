/**
 * Run with a connected socket on fd 3 (as a grain gets it): calls the
 * TestHost at the other end and prints "ok SUM VALUE".
 *
 * @module
 */

import { Counter, TestHost } from "../../../proto/gen/rpc_test.ts";
import { bootstrap, openFd, release, RpcConnection } from "../mod.ts";

const connection = new RpcConnection(openFd(3));
const host = bootstrap(connection, TestHost);
const sum = await host.add((p) => {
  p.a = 40;
  p.b = 2;
}).promise();
const counter: InstanceType<typeof Counter.Client> = host.newCounter((p) =>
  p.start = 7
).getCounter();
const value = await counter.increment((p) => p.by = 1).promise();
console.log(`ok ${sum.sum} ${value.value}`);
release(counter);
release(host);
connection.close();
