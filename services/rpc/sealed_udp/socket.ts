/**
 * A UDP socket driven through the batched shims: the main thread sends with
 * sendmmsg (never blocking), a worker thread receives with recvmmsg into
 * shared memory and posts each batch back.
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
  /** UDP_RECV_WORDS words per packet: length, ip, port, truncated. */
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
    const control = new SharedArrayBuffer((1 + REGIONS) * 4);
    this.#control = new Int32Array(control);
    this.#worker = new Worker(
      new URL("./_receive_worker.ts", import.meta.url),
      { type: "module" },
    );
    const regionBytes = UDP_RECV_MAX * this.#slotBytes;
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
      if (Array.isArray(message)) {
        const [region, count] = message as [number, number];
        try {
          if (!this.#closed) {
            onBatch({
              buffer: new Uint8Array(
                this.#data,
                region * regionBytes,
                regionBytes,
              ),
              slotBytes: this.#slotBytes,
              meta: new Uint32Array(
                this.#meta,
                region * UDP_RECV_MAX * UDP_RECV_WORDS * 4,
                count * UDP_RECV_WORDS,
              ),
              count,
            });
          }
        } finally {
          Atomics.store(this.#control, 1 + region, 0);
          Atomics.notify(this.#control, 1 + region);
        }
      } else if (message === "ready") {
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
    Atomics.store(this.#control, 0, 1);
    for (let i = 1; i < this.#control.length; i++) {
      Atomics.store(this.#control, i, 0);
      Atomics.notify(this.#control, i);
    }
    await this.#stopped;
    this.#worker.terminate();
    udpClose(this.fd);
  }
}
