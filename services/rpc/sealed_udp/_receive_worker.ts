/**
 * Worker thread that blocks in recvmmsg so the main thread never does.
 *
 * It fills regions of a shared buffer with batches of datagrams, writes
 * each region's packet count into its state word, then bumps a sequence
 * word and notifies it. The main thread waits on that word with
 * Atomics.waitAsync (a wake-up there costs a fraction of a postMessage),
 * opens and handles the batches in place, and marks each region free
 * again. A control word tells the worker to stop; it polls with a short
 * timeout so it notices.
 *
 * @module
 */

import { UDP_RECV_WORDS, udpReceiveBatch } from "../../../ffi/native.ts";
import type { ReceiveWorkerInit } from "./socket.ts";

/** Indexes in the control words: the stop flag, the batch sequence;
 * region states follow (0 free, else the count of packets it holds). */
const STOP = 0;
const SEQUENCE = 1;
const FIRST_REGION = 2;
const POLL_MS = 100;

declare const self: {
  onmessage: ((event: MessageEvent<ReceiveWorkerInit>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
};

function run(init: ReceiveWorkerInit): void {
  const control = new Int32Array(init.control);
  const slotsPerRegion = init.slotsPerRegion;
  const regionBytes = init.slotBytes * slotsPerRegion;
  let region = 0;
  self.postMessage("ready");
  while (Atomics.load(control, STOP) === 0) {
    // Wait for the main thread to hand the next region back.
    const state = Atomics.load(control, FIRST_REGION + region);
    if (state !== 0) {
      Atomics.wait(control, FIRST_REGION + region, state, POLL_MS);
      continue;
    }
    const buffer = new Uint8Array(init.data, region * regionBytes, regionBytes);
    const meta = new Uint32Array(
      init.meta,
      region * slotsPerRegion * UDP_RECV_WORDS * 4,
      slotsPerRegion * UDP_RECV_WORDS,
    );
    let count: number;
    try {
      count = udpReceiveBatch(
        init.fd,
        buffer,
        init.slotBytes,
        slotsPerRegion,
        meta,
        POLL_MS,
      );
    } catch (error) {
      self.postMessage({ error: String(error) });
      break;
    }
    if (count === 0) continue;
    // The state first: a main thread that sees the new sequence must also
    // see the filled region.
    Atomics.store(control, FIRST_REGION + region, count);
    Atomics.add(control, SEQUENCE, 1);
    Atomics.notify(control, SEQUENCE);
    region = (region + 1) % init.regions;
  }
  self.postMessage("stopped");
  self.close();
}

self.onmessage = (event) => {
  self.onmessage = null;
  run(event.data);
};
