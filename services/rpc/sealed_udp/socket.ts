/**
 * A UDP socket driven through the batched shims: the main thread sends with
 * sendmmsg (never blocking), a worker thread receives with recvmmsg into
 * shared memory and signals each batch through an atomic word that the
 * main thread waits on asynchronously.
 *
 * @module
 */

import {
  UDP_RECV_MAX,
  UDP_RECV_WORDS,
  udpClose,
  udpLocalPort,
  udpOpen,
  udpSendBatch,
} from "../../../ffi/native.ts";
import { type UdpAddress } from "./directory.ts";

/** What the receive worker gets in its first message. */
export interface ReceiveWorkerInit {
  fd: number;
  data: SharedArrayBuffer;
  meta: SharedArrayBuffer;
  control: SharedArrayBuffer;
  regions: number;
  slotsPerRegion: number;
  slotBytes: number;
}

/** One received batch, valid only during the handler call. */
export interface ReceivedBatch {
  /** The region's bytes; packet i starts at i * slotBytes. */
  buffer: Uint8Array;
  slotBytes: number;
  /** UDP_RECV_WORDS words per packet (for at least `count` packets):
   * length, ip, port, truncated. */
  meta: Uint32Array;
  count: number;
}

/** Options of {@link UdpSocket.open}. */
export interface UdpSocketOptions {
  /** Bytes per receive slot; longer datagrams arrive flagged truncated. */
  slotBytes: number;
  receiveBufferBytes?: number;
  sendBufferBytes?: number;
}

const REGIONS = 8;
/** Control word indexes; see _receive_worker.ts. */
const STOP = 0;
const SEQUENCE = 1;
const FIRST_REGION = 2;

/** A bound UDP socket with a receive worker. */
export class UdpSocket {
  readonly fd: number;
  readonly port: number;
  readonly #worker: Worker;
  readonly #control: Int32Array;
  readonly #data: SharedArrayBuffer;
  readonly #meta: SharedArrayBuffer;
  readonly #slotBytes: number;
  readonly #stopped: Promise<void>;
  /** Resolves once the worker is receiving. */
  readonly ready: Promise<void>;
  #closed = false;
  /** A macrotask queue for yielding between back-to-back batches. */
  readonly #yieldChannel = new MessageChannel();
  #yielded: (() => void) | undefined;

  private constructor(
    fd: number,
    options: UdpSocketOptions,
    onBatch: (batch: ReceivedBatch) => void,
    onError: (error: Error) => void,
  ) {
    this.fd = fd;
    this.port = udpLocalPort(fd);
    this.#slotBytes = options.slotBytes;
    this.#data = new SharedArrayBuffer(
      REGIONS * UDP_RECV_MAX * this.#slotBytes,
    );
    this.#meta = new SharedArrayBuffer(
      REGIONS * UDP_RECV_MAX * UDP_RECV_WORDS * 4,
    );
    const control = new SharedArrayBuffer((FIRST_REGION + REGIONS) * 4);
    this.#control = new Int32Array(control);
    this.#worker = new Worker(
      new URL("./_receive_worker.ts", import.meta.url),
      { type: "module" },
    );
    let resolveStopped!: () => void;
    let resolveReady!: () => void;
    let rejectReady!: (error: Error) => void;
    this.ready = new Promise((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    this.#stopped = new Promise((resolve) => resolveStopped = resolve);
    this.#worker.onmessage = (event: MessageEvent) => {
      const message = event.data;
      if (message === "ready") {
        resolveReady();
      } else if (message === "stopped") {
        resolveStopped();
      } else if (message && typeof message === "object" && "error" in message) {
        const error = new Error(`UDP receive worker failed: ${message.error}`);
        rejectReady(error);
        onError(error);
      }
    };
    this.#worker.onerror = (event) => {
      event.preventDefault();
      const error = new Error(`UDP receive worker crashed: ${event.message}`);
      rejectReady(error);
      onError(error);
      resolveStopped();
    };
    const init: ReceiveWorkerInit = {
      fd,
      data: this.#data,
      meta: this.#meta,
      control,
      regions: REGIONS,
      slotsPerRegion: UDP_RECV_MAX,
      slotBytes: this.#slotBytes,
    };
    this.#worker.postMessage(init);
    this.#yieldChannel.port1.onmessage = () => {
      const resolve = this.#yielded;
      this.#yielded = undefined;
      resolve?.();
    };
    this.#drainLoop(onBatch);
  }

  /**
   * Hands every filled region to `onBatch`, in the order the worker filled
   * them, then sleeps in Atomics.waitAsync until the worker bumps the
   * sequence word. That wakes this thread several times faster than a
   * worker's postMessage, and batches that arrive while it is busy cost no
   * wake-up at all.
   */
  async #drainLoop(onBatch: (batch: ReceivedBatch) => void): Promise<void> {
    const control = this.#control;
    const regionBytes = UDP_RECV_MAX * this.#slotBytes;
    // Views made once: this loop runs for every batch.
    const buffers: Uint8Array[] = [];
    const metas: Uint32Array[] = [];
    for (let r = 0; r < REGIONS; r++) {
      buffers.push(new Uint8Array(this.#data, r * regionBytes, regionBytes));
      metas.push(
        new Uint32Array(
          this.#meta,
          r * UDP_RECV_MAX * UDP_RECV_WORDS * 4,
          UDP_RECV_MAX * UDP_RECV_WORDS,
        ),
      );
    }
    let region = 0;
    while (!this.#closed) {
      const count = Atomics.load(control, FIRST_REGION + region);
      if (count !== 0) {
        try {
          onBatch({
            buffer: buffers[region],
            slotBytes: this.#slotBytes,
            meta: metas[region],
            count,
          });
        } catch (error) {
          // A bug in the handler must not stop receiving; it still
          // surfaces as the uncaught error it would have been.
          queueMicrotask(() => {
            throw error;
          });
        } finally {
          Atomics.store(control, FIRST_REGION + region, 0);
          Atomics.notify(control, FIRST_REGION + region);
        }
        region = (region + 1) % REGIONS;
        // More already waits: let timers and I/O run between batches
        // (acks go out on a macrotask), as a flood must not starve them.
        if (Atomics.load(control, FIRST_REGION + region) !== 0) {
          await new Promise<void>((resolve) => {
            this.#yielded = resolve;
            this.#yieldChannel.port2.postMessage(0);
          });
        }
        continue;
      }
      const sequence = Atomics.load(control, SEQUENCE);
      // Filled between the check above and reading the sequence: the
      // wait would return at once anyway.
      if (Atomics.load(control, FIRST_REGION + region) !== 0) continue;
      const wait = Atomics.waitAsync(control, SEQUENCE, sequence);
      if (wait.async) await wait.value;
    }
  }

  /** Binds `address` (port 0 picks one) and starts the receive worker;
   * resolves once it receives. `onBatch` runs on the main thread for every
   * batch of datagrams. */
  static async open(
    address: UdpAddress,
    options: UdpSocketOptions,
    onBatch: (batch: ReceivedBatch) => void,
    onError: (error: Error) => void,
  ): Promise<UdpSocket> {
    const fd = udpOpen(
      address.ip,
      address.port,
      options.receiveBufferBytes ?? 0,
      options.sendBufferBytes ?? 0,
    );
    let socket: UdpSocket;
    try {
      socket = new UdpSocket(fd, options, onBatch, onError);
    } catch (error) {
      udpClose(fd);
      throw error;
    }
    try {
      await socket.ready;
    } catch (error) {
      await socket.close();
      throw error;
    }
    return socket;
  }

  /** Sends `count` datagrams described by UDP_SEND_WORDS words each;
   * returns how many the kernel took. */
  send(buffer: Uint8Array, descriptors: Uint32Array, count: number): number {
    if (this.#closed || count === 0) return 0;
    return udpSendBatch(this.fd, buffer, descriptors, count);
  }

  /** Stops the worker, then closes the socket (never while the worker may
   * still be polling it, which could catch a reused descriptor). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    Atomics.store(this.#control, STOP, 1);
    Atomics.notify(this.#control, SEQUENCE);
    this.#yieldChannel.port1.close();
    this.#yieldChannel.port2.close();
    this.#yielded?.();
    for (let i = FIRST_REGION; i < this.#control.length; i++) {
      Atomics.store(this.#control, i, 0);
      Atomics.notify(this.#control, i);
    }
    await this.#stopped;
    this.#worker.terminate();
    udpClose(this.fd);
  }
}
