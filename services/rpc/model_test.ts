/**
 * A property test of the engine as a whole: random sequences of calls,
 * pipelined calls, capabilities passed both ways, promises, embargoes and
 * releases between two connections. Checked: calls through one reference
 * arrive in the order they were made (E-order: each sees a larger value
 * than the one before), every increment arrives exactly once (each
 * counter's final value is its start plus all increments sent to it), and
 * no capability is left in either table at the end. Fixed budget and seed.
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { Counter, TestHost } from "../../proto/gen/rpc_test.ts";
import * as rpc from "./mod.ts";
import { serveCounter, serveTestHost } from "./testdata/test_host.ts";

type CounterClient = InstanceType<typeof Counter.Client>;

const operation = fc.oneof(
  fc.record({ kind: fc.constant("remote" as const), start: fc.nat(100) }),
  fc.record({
    kind: fc.constant("pipelined" as const),
    start: fc.nat(100),
    by: fc.integer({ min: 1, max: 5 }),
  }),
  fc.record({ kind: fc.constant("local" as const), start: fc.nat(100) }),
  fc.record({
    kind: fc.constant("increment" as const),
    pick: fc.nat(),
    by: fc.integer({ min: 1, max: 5 }),
  }),
  fc.record({ kind: fc.constant("use" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("hold" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("dropHeld" as const) }),
  fc.record({ kind: fc.constant("bounce" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("promised" as const), start: fc.nat(100) }),
  fc.record({ kind: fc.constant("settle" as const) }),
  fc.record({ kind: fc.constant("release" as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant("yield" as const), turns: fc.nat(3) }),
);

interface Tracked {
  client: CounterClient;
  /** The counter this client reaches (several clients may share one). */
  key: number;
  /** Values seen through this reference, in the order calls were made. */
  seen: Promise<number>[];
}

Deno.test("random use of the engine matches the model and leaks nothing", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(operation, { minLength: 1, maxLength: 40 }),
      async (operations) => {
        const state = serveTestHost();
        const [a, b] = rpc.memoryPipe();
        const server = new rpc.RpcConnection(b, { bootstrap: state.cap });
        const client = new rpc.RpcConnection(a);
        const host = rpc.bootstrap(client, TestHost);
        // Start plus every increment sent, per counter.
        const totals = new Map<number, number>();
        const references: Tracked[] = [];
        let nextKey = 0;
        let localAlive = 0;
        const tracked: Tracked[] = [];
        const pending: Promise<void>[] = [];
        const pick = (n: number) =>
          tracked.length === 0 ? undefined : tracked[n % tracked.length];
        const track = (client: CounterClient, key: number): Tracked => {
          const t = { client, key, seen: [] };
          tracked.push(t);
          references.push(t);
          return t;
        };
        const expectIncrement = (t: Tracked, by: number) => {
          totals.set(t.key, totals.get(t.key)! + by);
          t.seen.push(
            t.client.increment((p) => p.by = by).promise().then((r) => r.value),
          );
        };
        try {
          for (const op of operations) {
            switch (op.kind) {
              case "remote": {
                const made = await host.newCounter((p) => p.start = op.start)
                  .promise();
                const key = nextKey++;
                totals.set(key, op.start);
                track(made.counter, key);
                break;
              }
              case "pipelined": {
                const counter = host.newCounter((p) => p.start = op.start)
                  .getCounter();
                const key = nextKey++;
                totals.set(key, op.start);
                expectIncrement(track(counter, key), op.by);
                break;
              }
              case "local": {
                localAlive++;
                const key = nextKey++;
                totals.set(key, op.start);
                track(
                  new Counter.Client(
                    serveCounter(op.start, () => localAlive--),
                  ),
                  key,
                );
                break;
              }
              case "increment": {
                const t = pick(op.pick);
                if (t !== undefined) expectIncrement(t, op.by);
                break;
              }
              case "use": {
                const t = pick(op.pick);
                if (t === undefined) break;
                totals.set(t.key, totals.get(t.key)! + 2);
                pending.push(
                  host.useCounter((p) => {
                    p.counter = t.client;
                    p.by = 2;
                  }).promise().then(() => {}),
                );
                break;
              }
              case "hold": {
                const t = pick(op.pick);
                if (t !== undefined) {
                  pending.push(
                    host.holdCounter((p) => p.counter = t.client).promise()
                      .then(() => {}),
                  );
                }
                break;
              }
              case "dropHeld":
                pending.push(host.dropHeld().promise().then(() => {}));
                break;
              case "bounce": {
                const t = pick(op.pick);
                if (t === undefined) break;
                const bounced = host.bounce((p) => p.counter = t.client)
                  .getCounter();
                expectIncrement(track(bounced, t.key), 1);
                break;
              }
              case "promised": {
                const made = await host.promisedCounter((p) =>
                  p.start = op.start
                ).promise();
                const key = nextKey++;
                totals.set(key, op.start);
                track(made.counter, key);
                break;
              }
              case "settle":
                pending.push(host.settle().promise().then(() => {}));
                break;
              case "yield":
                // Let messages in flight arrive: promises resolve between
                // calls instead of all at the end.
                for (let i = 0; i < op.turns; i++) {
                  await new Promise((resolve) => setTimeout(resolve, 0));
                }
                break;
              case "release": {
                if (tracked.length === 0) break;
                const [t] = tracked.splice(op.pick % tracked.length, 1);
                rpc.release(t.client);
                break;
              }
            }
          }
          await host.settle().promise();
          await Promise.all(pending);
          for (const t of references) {
            const seen = await Promise.all(t.seen);
            for (let i = 1; i < seen.length; i++) {
              assert.ok(seen[i] > seen[i - 1], `E-order on ${t.key}: ${seen}`);
            }
          }
          const checked = new Set<number>();
          for (const t of tracked) {
            if (checked.has(t.key)) continue;
            checked.add(t.key);
            const now = await t.client.increment((p) => p.by = 0).promise();
            assert.equal(now.value, totals.get(t.key), `total of ${t.key}`);
          }
          await host.dropHeld().promise();
          for (const t of tracked.splice(0)) rpc.release(t.client);
          // Two round trips: Releases are ordered before these calls, and
          // releases they trigger come back before the second returns.
          await host.add().promise();
          await host.add().promise();
          assert.equal(state.live(), 0, "server counters left alive");
          assert.equal(localAlive, 0, "client counters left alive");
          assert.equal(server.stats.exports, 1, "only the host is exported");
          assert.equal(client.stats.exports, 0);
          assert.equal(server.stats.imports, 0);
        } finally {
          client.close();
          server.close();
          state.cap.close();
        }
      },
    ),
    { numRuns: 300, seed: 0xb1ac0c },
  );
});
