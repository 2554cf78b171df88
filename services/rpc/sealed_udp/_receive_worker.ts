/**
 * Worker thread that blocks in recvmmsg so the main thread never does.
 *
 * It fills regions of a shared buffer with batches of datagrams and posts
 * `[region, count]` for each; the main thread opens and handles them in
 * place, then marks the region free again. A control word tells the
 * worker to stop; it polls with a short timeout so it notices.
 *
 * @module
 */

import { UDP_RECV_WORDS, udpReceiveBatch } from "../../../ffi/native.ts";
import type { ReceiveWorkerInit } from "./socket.ts";

/** Index of the stop flag in the control words; region states follow. */
const STOP = 0;
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
    if (Atomics.load(control, 1 + region) !== 0) {
      Atomics.wait(control, 1 + region, 1, POLL_MS);
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
    Atomics.store(control, 1 + region, 1);
    self.postMessage([region, count]);
    region = (region + 1) % init.regions;
  }
  self.postMessage("stopped");
  self.close();
}

self.onmessage = (event) => {
  self.onmessage = null;
  run(event.data);
};
