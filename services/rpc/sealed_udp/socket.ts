/**
 * UDP sockets driven through the batched shims. The main thread sends with
 * sendmmsg (never blocking). Receiving takes one of two paths:
 *
 * - {@link EventLoopUdpSocket}: Deno's own datagram socket, so the event
 *   loop wakes the main thread directly when a datagram arrives, and a
 *   non-blocking recvmmsg drains the rest of a burst. One thread wakes per
 *   burst: under load (each wake-up waits for a core) this halves the
 *   round trip of a small call against the worker path, at equal bulk
 *   throughput. It needs Deno's unstable datagram API and net permission.
 * - {@link UdpSocket}: a worker thread blocks in recvmmsg into shared
 *   memory and signals each batch through an atomic word the main thread
 *   waits on asynchronously. It needs only FFI (and read access to the
 *   worker's module).
 *
 * {@link UdpSocket.open} picks one; both hand over the same batches.
 *
 * @module
 */

import {
  UDP_RECV_MAX,
  UDP_RECV_WORDS,
  udpClose,
  udpFind,
  udpLocalPort,
  udpOpen,
  udpReceiveBatch,
  udpSendBatch,
  udpTune,
} from "../../../ffi/native.ts";
import { formatAddress, type UdpAddress } from "./directory.ts";

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
  /** "event-loop" receives through Deno's own datagram socket (see
   * {@link EventLoopUdpSocket}), "worker" on a worker thread; "auto", the
   * default, takes the event loop when the process may use it. */
  receiver?: "auto" | "event-loop" | "worker";
}

/** What the network needs of a socket, whichever way it receives. */
export interface BatchSocket {
  readonly fd: number;
  readonly port: number;
  send(buffer: Uint8Array, descriptors: Uint32Array, count: number): number;
  close(): Promise<void>;
}

const REGIONS = 8;
/** Control word indexes; see _receive_worker.ts. */
const STOP = 0;
const SEQUENCE = 1;
const FIRST_REGION = 2;

/** A bound UDP socket with a receive worker; {@link UdpSocket.open} also
 * opens the event-loop kind. */
export class UdpSocket implements BatchSocket {
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

  /** Binds `address` (port 0 picks one) and starts receiving (see
   * {@link UdpSocketOptions.receiver}); resolves once datagrams can
   * arrive. `onBatch` runs on the main thread for every batch. */
  static async open(
    address: UdpAddress,
    options: UdpSocketOptions,
    onBatch: (batch: ReceivedBatch) => void,
    onError: (error: Error) => void,
  ): Promise<BatchSocket> {
    const wanted = options.receiver ?? "auto";
    if (wanted === "event-loop") {
      return EventLoopUdpSocket.open(address, options, onBatch, onError);
    }
    if (wanted === "auto" && canUseEventLoop(address)) {
      try {
        return EventLoopUdpSocket.open(address, options, onBatch, onError);
      } catch (error) {
        // A bind failure is the caller's to see; anything else (say, no
        // /proc to find the descriptor in) falls back to the worker.
        if (error instanceof Deno.errors.AddrInUse) throw error;
      }
    }
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

/**
 * A socket that receives through Deno's own datagram socket, so the
 * runtime's event loop wakes the main thread directly when a datagram
 * arrives (one thread woken instead of two); each wake-up then drains what
 * else is queued with a non-blocking recvmmsg on the same descriptor, and
 * sends use sendmmsg on it too.
 */
export class EventLoopUdpSocket implements BatchSocket {
  readonly fd: number;
  readonly port: number;
  readonly #datagrams: Deno.DatagramConn;
  readonly #slotBytes: number;
  readonly #buffer: Uint8Array;
  readonly #meta = new Uint32Array(UDP_RECV_MAX * UDP_RECV_WORDS);
  readonly #done: Promise<void>;
  #closed = false;

  private constructor(
    datagrams: Deno.DatagramConn,
    fd: number,
    port: number,
    options: UdpSocketOptions,
    onBatch: (batch: ReceivedBatch) => void,
    onError: (error: Error) => void,
  ) {
    this.#datagrams = datagrams;
    this.fd = fd;
    this.port = port;
    this.#slotBytes = options.slotBytes;
    this.#buffer = new Uint8Array(UDP_RECV_MAX * this.#slotBytes);
    this.#done = this.#run(onBatch, onError);
  }

  /** Binds `address` with Deno.listenDatagram and finds its descriptor
   * for the shims. */
  static open(
    address: UdpAddress,
    options: UdpSocketOptions,
    onBatch: (batch: ReceivedBatch) => void,
    onError: (error: Error) => void,
  ): EventLoopUdpSocket {
    const [hostname] = formatAddress(address).split(":");
    const datagrams = Deno.listenDatagram({
      transport: "udp",
      hostname,
      port: address.port,
    });
    try {
      const port = (datagrams.addr as Deno.NetAddr).port;
      const fd = udpFind(address.ip, port);
      udpTune(
        fd,
        options.receiveBufferBytes ?? 0,
        options.sendBufferBytes ?? 0,
      );
      return new EventLoopUdpSocket(
        datagrams,
        fd,
        port,
        options,
        onBatch,
        onError,
      );
    } catch (error) {
      datagrams.close();
      throw error;
    }
  }

  async #run(
    onBatch: (batch: ReceivedBatch) => void,
    onError: (error: Error) => void,
  ): Promise<void> {
    const slotBytes = this.#slotBytes;
    const meta = this.#meta;
    const firstSlot = this.#buffer.subarray(0, slotBytes);
    const otherSlots = this.#buffer.subarray(slotBytes);
    const otherMeta = meta.subarray(UDP_RECV_WORDS);
    const batch: ReceivedBatch = {
      buffer: this.#buffer,
      slotBytes,
      meta,
      count: 0,
    };
    let failures = 0;
    while (!this.#closed) {
      let length: number;
      let from: Deno.NetAddr;
      try {
        const [data, address] = await this.#datagrams.receive(firstSlot);
        length = data.length;
        from = address as Deno.NetAddr;
      } catch (error) {
        if (this.#closed) return;
        // A queued ICMP error surfaces once per receive and carries no
        // datagram; only a socket that keeps failing is broken.
        if (++failures < 100) continue;
        onError(new Error(`UDP receive failed: ${error}`, { cause: error }));
        return;
      }
      failures = 0;
      const ip = parseIpv4(from.hostname);
      if (ip < 0) continue; // Not IPv4: this socket never sends there.
      meta[0] = length;
      meta[1] = ip;
      meta[2] = from.port;
      // Deno reads at most a slot and does not say whether it cut the
      // datagram: a full slot counts as cut (slots exceed any datagram
      // the network sends).
      meta[3] = length >= slotBytes ? 1 : 0;
      let count = 1;
      // Whatever else is queued comes in the same batch: one handler call,
      // one flush of acks and replies for the lot.
      try {
        count += udpReceiveBatch(
          this.fd,
          otherSlots,
          slotBytes,
          UDP_RECV_MAX - 1,
          otherMeta,
          0,
        );
      } catch {
        // The first datagram is still good; the next drain retries.
      }
      if (this.#closed) return;
      batch.count = count;
      try {
        onBatch(batch);
      } catch (error) {
        // As on the worker path: a handler bug surfaces as an uncaught
        // error without stopping the receive loop.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /** Sends `count` datagrams described by UDP_SEND_WORDS words each;
   * returns how many the kernel took. */
  send(buffer: Uint8Array, descriptors: Uint32Array, count: number): number {
    if (this.#closed || count === 0) return 0;
    return udpSendBatch(this.fd, buffer, descriptors, count);
  }

  /** Closes Deno's socket, and with it the descriptor; the pending
   * receive fails and the loop ends. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#datagrams.close();
    await this.#done;
  }
}

/** Whether Deno's datagram socket is there (unstable API, which deno.json
 * enables) and this process may bind `address` with it; a role without
 * that network permission receives on a worker instead. */
function canUseEventLoop(address: UdpAddress): boolean {
  if (typeof Deno.listenDatagram !== "function") return false;
  return Deno.permissions.querySync({
    name: "net",
    host: formatAddress(address),
  }).state === "granted";
}

/** A dotted IPv4 address in host order, or -1 for anything else. */
function parseIpv4(text: string): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i) - 48;
    if (c >= 0 && c <= 9 && digits < 3) {
      part = part * 10 + c;
      digits++;
    } else if (c === -2 && digits > 0 && dots < 3 && part <= 255) {
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else return -1;
  }
  if (dots !== 3 || digits === 0 || part > 255) return -1;
  return value * 256 + part;
}
