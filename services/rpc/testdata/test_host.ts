/**
 * A TestHost (proto/rpc_test.capnp) served by this engine: the Deno side
 * of the RPC tests, the interop tests and the benchmark.
 *
 * @module
 */

import { Counter, TestHost, TreeHost } from "../../../proto/gen/rpc_test.ts";
import * as $ from "capnp-es";
import { copyPointer } from "../_copy.ts";
import { RpcError, type RpcErrorType } from "../errors.ts";
import {
  type Cap,
  capOf,
  PromiseCap,
  retain,
  serve,
  type ServerOf,
} from "../mod.ts";

/** A served TestHost and what tests observe of it. */
export interface TestHostState {
  cap: Cap;
  /** Counters made by newCounter and not yet released. */
  live: () => number;
  /** Counters held by holdCounter. */
  held: InstanceType<typeof Counter.Client>[];
}

/** Serves a counter starting at `start`; `onClose` runs when released. */
export function serveCounter(start: number, onClose?: () => void): Cap {
  let value = start;
  return serve(Counter, {
    increment(params, results) {
      value += params.by;
      results.value = value;
    },
  }, onClose);
}

/** Serves a fresh TestHost. */
export function serveTestHost(): TestHostState {
  let live = 0;
  const held: InstanceType<typeof Counter.Client>[] = [];
  const unsettled: (() => void)[] = [];
  const state = {} as TestHostState;
  const target: ServerOf<typeof TestHost> = {
    add(params, results) {
      results.sum = params.a + params.b;
    },
    newCounter(params, results) {
      live++;
      // A capability put in results is handed over with them.
      results.counter = new Counter.Client(
        serveCounter(params.start, () => live--),
      );
    },
    async useCounter(params, results) {
      const reply = await params.counter.increment((p) => {
        p.by = params.by;
      }).promise();
      results.value = reply.value;
    },
    holdCounter(params) {
      held.push(retain(params.counter));
    },
    dropHeld() {
      for (const counter of held.splice(0)) counter.client.close();
    },
    liveCounters(_params, results) {
      results.count = live;
    },
    fail(params) {
      throw new RpcError(params.kind as RpcErrorType, `asked to fail`);
    },
    echo(params, results) {
      results.data = params.data;
    },
    promisedCounter(params, results) {
      const promise = new PromiseCap();
      const start = params.start;
      unsettled.push(() => {
        live++;
        promise.resolve(serveCounter(start, () => live--));
      });
      results.counter = new Counter.Client(promise);
    },
    promisedBounce(params, results) {
      const promise = new PromiseCap();
      const target = retain(params.counter);
      unsettled.push(() => promise.resolve(capOf(target)));
      results.counter = new Counter.Client(promise);
    },
    settle() {
      for (const settle of unsettled.splice(0)) settle();
    },
    bounce(params, results) {
      results.counter = retain(params.counter);
    },
    self(_params, results) {
      results.host = retain(new TestHost.Client(state.cap));
    },
    trees(_params, results) {
      results.host = new TreeHost.Client(serveWaitingTreeHost());
    },
  };
  state.cap = serve(TestHost, target);
  state.live = () => live;
  state.held = held;
  return state;
}

let canceledWaits = 0;

/** A TreeHost whose `wait` never answers unless canceled (then it fails);
 * `canceledWaits` counts those cancellations in this process. */
export function serveWaitingTreeHost(): Cap {
  return serve(TreeHost, {
    swap(params, results) {
      // The engine's own deep copy (capnp-es's setter copy is unusable).
      copyPointer(
        $.utils.getPointer(0, params),
        $.utils.getPointer(0, results),
      );
    },
    wait(_params, _results, { signal }) {
      return new Promise((_resolve, reject) => {
        signal.addEventListener("abort", () => {
          canceledWaits++;
          reject(signal.reason);
        });
      });
    },
    canceledWaits(_params, results) {
      results.count = canceledWaits;
    },
  });
}
