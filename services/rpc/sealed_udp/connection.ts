/**
 * One reliable, ordered message stream between two vats over sealed UDP.
 *
 * Messages are cut into fragments numbered per connection and direction.
 * The receiver acknowledges with a cumulative point plus ranges above it
 * (selective acks). The sender keeps each fragment until acknowledged,
 * declares it lost once a fragment sent after it is acknowledged and it
 * has been out for 9/8 of the RTT (or on a retransmission timeout), and sends it again in a
 * new packet under a new packet number. Congestion control is NewReno in
 * bytes: slow start, a decrease to 0.7 once per loss episode, and a collapse to the
 * minimum window on timeout. RTT and RTO follow RFC 6298, with Karn's rule
 * (no samples from retransmitted fragments).
 *
 * The network (network.ts) owns packet assembly and timers; this class
 * holds the per-connection state and the MessageConnection face.
 *
 * @module
 */

import { type MessageConnection, TransportClosedError } from "../transport.ts";
import {
  DATA_FRAME_HEADER_BYTES,
  FLAG_CLOSE,
  FLAG_END,
  MAX_ACK_RANGES,
  MAX_FRAGMENT_BYTES,
} from "./packet.ts";

/** A fragment waiting for its acknowledgement. */
export interface Fragment {
  fragment: number;
  flags: number;
  data: Uint8Array;
  /** Packet number of its latest transmission, -1 before the first. */
  packetNumber: number;
  sentAtMs: number;
  transmissions: number;
  lost: boolean;
  acked: boolean;
}

/** Tuning of the reliability layer; see SealedUdpNetworkOptions. */
export interface ReliabilityOptions {
  initialRtoMs: number;
  minRtoMs: number;
  maxRtoMs: number;
  initialWindowBytes: number;
  windowFragments: number;
  maxMessageBytes: number;
}

/** What a connection needs from its network. */
export interface ConnectionHost {
  /** Something to send appeared; the network flushes soon. */
  wake(connection: SealedConnection): void;
  /** The connection was closed or failed and can be forgotten. */
  retire(connection: SealedConnection): void;
  /** Counts a metric. */
  count(name: string, amount?: number): void;
}

/** Multiplicative decrease on loss (CUBIC's beta: gentler than halving,
 * which matters on links with random, non-congestive loss). */
const DECREASE = 0.7;
const EMPTY = new Uint8Array(0);
const MIN_WINDOW_BYTES = 2 * (MAX_FRAGMENT_BYTES + DATA_FRAME_HEADER_BYTES);

type State = "open" | "closing" | "peer-closed" | "failed" | "done";

/** A connection of the sealed UDP network. */
export class SealedConnection implements MessageConnection {
  readonly peerVatId: Uint8Array;
  /** Connection number, unique among this pair of vats' current boots. */
  readonly number: number;
  /** Whether this vat opened it (else the peer did). */
  readonly outbound: boolean;
  readonly createdMs: number;
  /** The peer boot ID this connection belongs to, once heard. */
  peerBoot: string | undefined;

  state: State = "open";
  error: Error | undefined;

  // Sending side.
  readonly #options: ReliabilityOptions;
  readonly #host: ConnectionHost;
  /** Fragments not yet sent, in order. */
  unsent: Fragment[] = [];
  unsentHead = 0;
  /** Sent, unacknowledged fragments in fragment order. */
  readonly inflight = new Map<number, Fragment>();
  /** Fragments declared lost, to send again before new ones. */
  lostQueue: Fragment[] = [];
  nextFragment = 0;
  bytesInFlight = 0;
  windowBytes: number;
  slowStartThresholdBytes = Infinity;
  recoveryPacketNumber = -1;
  largestAckedPacket = -1;
  smoothedRttMs = -1;
  rttVarianceMs = 0;
  rtoMs: number;
  backoff = 1;
  /** When the oldest outstanding fragment times out; Infinity if none. */
  rtoDeadlineMs = Infinity;
  lastAckElicitingSentMs: number;
  pingWanted = false;

  // Receiving side.
  /** Every fragment below this has been received. */
  receivedUpTo = 0;
  readonly #outOfOrder = new Map<number, { flags: number; data: Uint8Array }>();
  /** Flat start, end pairs of fragments held above receivedUpTo. */
  #ranges: number[] = [];
  /** The message being received, copied in as its fragments arrive. */
  #assembly: Uint8Array = EMPTY;
  #messageBytes = 0;
  ackWanted = false;
  /** DATA frames received since the last ACK went out. */
  unackedFrames = 0;
  /** When a delayed ACK must go out at the latest. */
  ackDeadlineMs = Infinity;
  lingerUntilMs = Infinity;

  readonly #messages: Uint8Array[] = [];
  #messageHead = 0;
  readonly #waiters: {
    resolve: (m: Uint8Array | null) => void;
    reject: (e: Error) => void;
  }[] = [];

  constructor(
    peerVatId: Uint8Array,
    number: number,
    outbound: boolean,
    nowMs: number,
    options: ReliabilityOptions,
    host: ConnectionHost,
  ) {
    this.peerVatId = peerVatId;
    this.number = number;
    this.outbound = outbound;
    this.createdMs = nowMs;
    this.lastAckElicitingSentMs = nowMs;
    this.#options = options;
    this.#host = host;
    this.windowBytes = Math.max(options.initialWindowBytes, MIN_WINDOW_BYTES);
    this.rtoMs = options.initialRtoMs;
  }

  // --- MessageConnection ---------------------------------------------

  send(message: Uint8Array): void {
    if (this.state !== "open") {
      throw this.error ??
        new TransportClosedError(
          this.state === "peer-closed"
            ? "peer closed the connection"
            : "connection is closed",
        );
    }
    if (message.length > this.#options.maxMessageBytes) {
      throw new RangeError(
        `message of ${message.length} bytes exceeds the limit of ${this.#options.maxMessageBytes}`,
      );
    }
    // One copy, so the caller may reuse its buffer; fragments are views.
    const copy = message.slice();
    let offset = 0;
    do {
      const end = Math.min(copy.length, offset + MAX_FRAGMENT_BYTES);
      this.#enqueue(
        end === copy.length ? FLAG_END : 0,
        copy.subarray(offset, end),
      );
      offset = end;
    } while (offset < copy.length);
    this.#host.count("messagesSent");
    this.#host.wake(this);
  }

  receive(): Promise<Uint8Array | null> {
    if (this.#messageHead < this.#messages.length) {
      const message = this.#messages[this.#messageHead];
      this.#messages[this.#messageHead++] = undefined as unknown as Uint8Array;
      if (
        this.#messageHead > 1024 &&
        this.#messageHead * 2 > this.#messages.length
      ) {
        this.#messages.splice(0, this.#messageHead);
        this.#messageHead = 0;
      }
      return Promise.resolve(message);
    }
    if (this.state === "failed" || (this.state === "done" && this.error)) {
      return Promise.reject(this.error);
    }
    if (this.state !== "open") return Promise.resolve(null);
    return new Promise((resolve, reject) =>
      this.#waiters.push({ resolve, reject })
    );
  }

  close(_reason?: Error): void {
    if (this.state !== "open" && this.state !== "peer-closed") return;
    const peerClosed = this.state === "peer-closed";
    this.state = "closing";
    this.#settleWaiters();
    if (!peerClosed) {
      this.#enqueue(FLAG_CLOSE, new Uint8Array(0));
      this.#host.wake(this);
    }
    if (this.isDrained()) this.#finish();
  }

  // --- network side ----------------------------------------------------

  /** Breaks the connection with `error`: receives reject, sends throw. */
  fail(error: Error): void {
    if (this.state === "failed" || this.state === "done") return;
    this.state = "failed";
    this.error = error;
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    this.#host.retire(this);
  }

  /** True when nothing this side sent is still unacknowledged. */
  isDrained(): boolean {
    return this.inflight.size === 0 && this.unsentHead >= this.unsent.length;
  }

  /** Whether fragments above a gap are held (an ACK then speeds up the
   * sender's loss recovery, so it should not be delayed). */
  holdsOutOfOrder(): boolean {
    return this.#outOfOrder.size > 0;
  }

  /** Whether anything waits to go out now (fragments, ack, ping). */
  hasWork(): boolean {
    return this.ackWanted || this.pingWanted || this.lostQueue.length > 0 ||
      (this.unsentHead < this.unsent.length && this.#canSendNew());
  }

  #canSendNew(): boolean {
    const next = this.unsent[this.unsentHead];
    return this.bytesInFlight < this.windowBytes &&
      next.fragment < this.#lowestUnacked() + this.#options.windowFragments;
  }

  /** The lowest fragment not yet acknowledged. Fragments enter the
   * inflight map in order, so its first key is that fragment; cached
   * because the map iterator costs more than the rest of a send. */
  #lowestUnacked(): number {
    if (this.#lowestCache >= 0) return this.#lowestCache;
    let lowest = -1;
    for (const fragment of this.inflight.keys()) {
      lowest = fragment;
      break;
    }
    if (lowest < 0) {
      lowest = this.unsentHead < this.unsent.length
        ? this.unsent[this.unsentHead].fragment
        : this.nextFragment;
    }
    this.#lowestCache = lowest;
    return lowest;
  }

  #lowestCache = -1;

  #enqueue(flags: number, data: Uint8Array): void {
    this.unsent.push({
      fragment: this.nextFragment++,
      flags,
      data,
      packetNumber: -1,
      sentAtMs: 0,
      transmissions: 0,
      lost: false,
      acked: false,
    });
  }

  /** The next fragment to put in a packet (a lost one first), or
   * undefined when the window or the queues say wait. */
  nextToSend(): Fragment | undefined {
    while (this.lostQueue.length > 0) {
      const fragment = this.lostQueue[0];
      if (fragment.acked || !fragment.lost) {
        this.lostQueue.shift();
        continue;
      }
      if (this.bytesInFlight >= this.windowBytes && this.bytesInFlight > 0) {
        return undefined;
      }
      this.lostQueue.shift();
      return fragment;
    }
    if (this.unsentHead >= this.unsent.length || !this.#canSendNew()) {
      return undefined;
    }
    const fragment = this.unsent[this.unsentHead];
    this.unsent[this.unsentHead++] = undefined as unknown as Fragment;
    if (this.unsentHead > 1024 && this.unsentHead * 2 > this.unsent.length) {
      this.unsent = this.unsent.slice(this.unsentHead);
      this.unsentHead = 0;
    }
    return fragment;
  }

  /** Records that `fragment` went out in packet `packetNumber`. */
  onSent(fragment: Fragment, packetNumber: number, nowMs: number): void {
    if (fragment.transmissions === 0) {
      this.inflight.set(fragment.fragment, fragment);
    } else this.#host.count("retransmittedFragments");
    fragment.transmissions++;
    fragment.lost = false;
    fragment.packetNumber = packetNumber;
    fragment.sentAtMs = nowMs;
    this.bytesInFlight += fragment.data.length + DATA_FRAME_HEADER_BYTES;
    this.lastAckElicitingSentMs = nowMs;
    if (this.rtoDeadlineMs === Infinity) {
      this.rtoDeadlineMs = nowMs + this.#currentRtoMs();
    }
  }

  #currentRtoMs(): number {
    return Math.min(this.rtoMs * this.backoff, this.#options.maxRtoMs);
  }

  /** Handles an ACK frame from the peer. */
  onAck(cumulative: number, ranges: number[], nowMs: number): void {
    let newestAcked: Fragment | undefined;
    let ackedBytes = 0;
    const ack = (fragment: Fragment) => {
      this.inflight.delete(fragment.fragment);
      this.#lowestCache = -1;
      fragment.acked = true;
      if (!fragment.lost) {
        this.bytesInFlight -= fragment.data.length + DATA_FRAME_HEADER_BYTES;
      }
      ackedBytes += fragment.data.length + DATA_FRAME_HEADER_BYTES;
      if (
        newestAcked === undefined ||
        fragment.packetNumber > newestAcked.packetNumber
      ) {
        newestAcked = fragment;
      }
    };
    if (cumulative > this.nextFragment) cumulative = this.nextFragment;
    for (const [number, fragment] of this.inflight) {
      if (number >= cumulative) break;
      ack(fragment);
    }
    for (let i = 0; i < ranges.length; i += 2) {
      const end = Math.min(ranges[i + 1], this.nextFragment);
      for (let number = ranges[i]; number < end; number++) {
        const fragment = this.inflight.get(number);
        if (fragment !== undefined) ack(fragment);
      }
    }
    if (newestAcked === undefined) return;

    if (newestAcked.transmissions === 1) {
      this.#sampleRtt(nowMs - newestAcked.sentAtMs);
    }
    this.backoff = 1;
    const largest = Math.max(this.largestAckedPacket, newestAcked.packetNumber);
    this.largestAckedPacket = largest;

    // Congestion window growth, except while recovering from a loss.
    if (newestAcked.packetNumber > this.recoveryPacketNumber) {
      if (this.windowBytes < this.slowStartThresholdBytes) {
        this.windowBytes += ackedBytes;
      } else {
        this.windowBytes += Math.ceil(
          (MAX_FRAGMENT_BYTES * ackedBytes) / this.windowBytes,
        );
      }
    }

    this.latestRttMs = newestAcked.transmissions === 1
      ? nowMs - newestAcked.sentAtMs
      : this.latestRttMs;
    this.detectLosses(nowMs);

    this.rtoDeadlineMs = this.inflight.size > 0 && this.bytesInFlight > 0
      ? nowMs + this.#currentRtoMs()
      : Infinity;
    if (this.state === "closing" && this.isDrained()) this.#finish();
  }

  /**
   * Declares lost every fragment sent before the newest acknowledged one
   * and outstanding for more than 9/8 of the RTT (time-based, as in RACK
   * and QUIC): reordering shorter than that costs nothing, where a packet
   * count threshold would mistake a reordered path for loss. Sets
   * `lossDeadlineMs` for the next fragment that may become lost.
   */
  detectLosses(nowMs: number): void {
    this.lossDeadlineMs = Infinity;
    const largest = this.largestAckedPacket;
    if (largest < 0) return;
    const rttMs = this.smoothedRttMs < 0
      ? this.#options.initialRtoMs
      : Math.max(this.smoothedRttMs, this.latestRttMs);
    const thresholdMs = Math.max(rttMs * 9 / 8, 1);
    let lostAny = false;
    let lostNewest = -1;
    // Fragments sent once appear in send order, so the scan stops at the
    // first such fragment that is too new to judge.
    for (const fragment of this.inflight.values()) {
      if (fragment.lost) continue;
      const tooNew = fragment.packetNumber >= largest ||
        nowMs - fragment.sentAtMs < thresholdMs;
      if (tooNew) {
        if (fragment.packetNumber < largest) {
          this.lossDeadlineMs = Math.min(
            this.lossDeadlineMs,
            fragment.sentAtMs + thresholdMs,
          );
        }
        if (fragment.transmissions === 1) break;
        continue;
      }
      fragment.lost = true;
      this.bytesInFlight -= fragment.data.length + DATA_FRAME_HEADER_BYTES;
      this.lostQueue.push(fragment);
      lostAny = true;
      lostNewest = Math.max(lostNewest, fragment.packetNumber);
    }
    if (lostAny) {
      this.#host.count("lossEvents");
      if (lostNewest > this.recoveryPacketNumber) this.#onCongestion(false);
      this.lostQueue.sort((a, b) => a.fragment - b.fragment);
    }
  }

  /** When the next outstanding fragment may be declared lost. */
  lossDeadlineMs = Infinity;
  latestRttMs = 0;

  /** Called with the packet number the next packet will get, so a loss
   * episode ends once packets sent after it are acknowledged. */
  nextPacketNumber = 0;

  #onCongestion(timeout: boolean): void {
    this.recoveryPacketNumber = this.nextPacketNumber;
    this.slowStartThresholdBytes = Math.max(
      this.windowBytes * DECREASE,
      MIN_WINDOW_BYTES,
    );
    this.windowBytes = timeout
      ? MIN_WINDOW_BYTES
      : this.slowStartThresholdBytes;
  }

  #sampleRtt(sampleMs: number): void {
    const sample = Math.max(sampleMs, 0.01);
    if (this.smoothedRttMs < 0) {
      this.smoothedRttMs = sample;
      this.rttVarianceMs = sample / 2;
    } else {
      this.rttVarianceMs = 0.75 * this.rttVarianceMs +
        0.25 * Math.abs(this.smoothedRttMs - sample);
      this.smoothedRttMs = 0.875 * this.smoothedRttMs + 0.125 * sample;
    }
    this.rtoMs = Math.min(
      Math.max(
        this.smoothedRttMs + 4 * this.rttVarianceMs,
        this.#options.minRtoMs,
      ),
      this.#options.maxRtoMs,
    );
  }

  /** The retransmission timer fired: everything outstanding is lost. */
  onRto(nowMs: number): void {
    let lostAny = false;
    for (const fragment of this.inflight.values()) {
      if (fragment.lost) continue;
      fragment.lost = true;
      this.bytesInFlight -= fragment.data.length + DATA_FRAME_HEADER_BYTES;
      this.lostQueue.push(fragment);
      lostAny = true;
    }
    this.#host.count("retransmissionTimeouts");
    if (lostAny) {
      this.lostQueue.sort((a, b) => a.fragment - b.fragment);
      this.#onCongestion(true);
    }
    this.backoff = Math.min(this.backoff * 2, 1 << 16);
    this.rtoDeadlineMs = this.inflight.size > 0
      ? nowMs + this.#currentRtoMs()
      : Infinity;
  }

  /** Handles a DATA frame. */
  onData(fragment: number, flags: number, data: Uint8Array): void {
    this.ackWanted = true;
    this.unackedFrames++;
    if (fragment < this.receivedUpTo || this.#outOfOrder.has(fragment)) {
      this.#host.count("duplicateFragments");
      return;
    }
    if (fragment >= this.receivedUpTo + this.#options.windowFragments) {
      this.#host.count("fragmentsBeyondWindow");
      return;
    }
    if (fragment !== this.receivedUpTo) {
      // `data` views a receive buffer that is about to be reused.
      this.#outOfOrder.set(fragment, { flags, data: data.slice() });
      this.#addRange(fragment);
      return;
    }
    this.#consume(flags, data);
    this.receivedUpTo++;
    let next = this.#outOfOrder.get(this.receivedUpTo);
    while (next !== undefined && this.state !== "failed") {
      this.#outOfOrder.delete(this.receivedUpTo);
      this.#consume(next.flags, next.data);
      this.receivedUpTo++;
      next = this.#outOfOrder.get(this.receivedUpTo);
    }
    while (this.#ranges.length > 0 && this.#ranges[1] <= this.receivedUpTo) {
      this.#ranges.splice(0, 2);
    }
  }

  #addRange(fragment: number): void {
    const r = this.#ranges;
    // Most fragments extend the last range; search from the end.
    let i = r.length - 2;
    while (i >= 0 && r[i] > fragment) i -= 2;
    // Now r[i] <= fragment (or i < 0); ranges never overlap fragment.
    if (i >= 0 && r[i + 1] === fragment) {
      r[i + 1] = fragment + 1;
      if (i + 2 < r.length && r[i + 2] === fragment + 1) {
        r[i + 1] = r[i + 3];
        r.splice(i + 2, 2);
      }
    } else if (i + 2 < r.length && r[i + 2] === fragment + 1) {
      r[i + 2] = fragment;
    } else {
      r.splice(i + 2, 0, fragment, fragment + 1);
    }
  }

  /** Ranges for the next ACK frame: the lowest ones (the holes that block
   * delivery) and the highest (the newest news), at most MAX_ACK_RANGES. */
  ackRanges(maxRanges = MAX_ACK_RANGES): number[] {
    const r = this.#ranges;
    if (r.length <= maxRanges * 2) return r.slice();
    const half = Math.floor(maxRanges / 2) * 2;
    return r.slice(0, half).concat(r.slice(r.length - (maxRanges * 2 - half)));
  }

  #consume(flags: number, data: Uint8Array): void {
    if (flags & FLAG_CLOSE) {
      if (this.state === "open") {
        this.state = "peer-closed";
        this.#settleWaiters();
      } else if (this.state === "closing") {
        if (this.isDrained()) this.#finish();
      }
      return;
    }
    if (this.state !== "open") return;
    this.#messageBytes += data.length;
    if (this.#messageBytes > this.#options.maxMessageBytes) {
      this.#host.count("oversizedMessages");
      this.fail(
        new TransportClosedError(
          `peer sent a message over the limit of ${this.#options.maxMessageBytes} bytes`,
        ),
      );
      return;
    }
    // `data` may view a receive buffer that is about to be reused: copy
    // it now, straight into the message being assembled.
    const at = this.#messageBytes - data.length;
    let message: Uint8Array;
    if (at === 0 && (flags & FLAG_END) !== 0) {
      message = data.slice();
    } else {
      if (this.#assembly.length < this.#messageBytes) {
        // Doubling keeps the copies of a long message to about two.
        const grown = new Uint8Array(
          Math.min(
            Math.max(this.#messageBytes, this.#assembly.length * 2, 65536),
            this.#options.maxMessageBytes,
          ),
        );
        grown.set(this.#assembly.subarray(0, at));
        this.#assembly = grown;
      }
      this.#assembly.set(data, at);
      if ((flags & FLAG_END) === 0) return;
      const assembled = this.#assembly;
      this.#assembly = EMPTY;
      // Hand over the buffer itself when the message fills most of it.
      message = this.#messageBytes * 4 >= assembled.length * 3
        ? assembled.subarray(0, this.#messageBytes)
        : assembled.slice(0, this.#messageBytes);
    }
    this.#messageBytes = 0;
    this.#host.count("messagesReceived");
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(message);
    else this.#messages.push(message);
  }

  #settleWaiters(): void {
    if (this.#messageHead < this.#messages.length) return;
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(null);
  }

  #finish(): void {
    if (this.state === "done") return;
    this.state = "done";
    this.#host.retire(this);
  }

  /** The peer acknowledged our close, or it closed and we lingered. */
  finishIfIdle(nowMs: number): void {
    if (this.state === "closing" && this.isDrained()) this.#finish();
    if (this.state === "peer-closed" && nowMs >= this.lingerUntilMs) {
      this.#finish();
    }
  }

  /** Counts of this connection, for tests and diagnostics. */
  stats(): Record<string, number> {
    return {
      windowBytes: this.windowBytes,
      bytesInFlight: this.bytesInFlight,
      smoothedRttMs: this.smoothedRttMs,
      rtoMs: this.rtoMs,
      inflight: this.inflight.size,
      receivedUpTo: this.receivedUpTo,
      held: this.#outOfOrder.size,
    };
  }
}
