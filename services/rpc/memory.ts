/**
 * Two {@link MessageConnection}s joined back to back inside one process:
 * for tests and for vats that share a process. Each side may carry a vat
 * ID, standing in for what an authenticating network would report.
 *
 * @module
 */

import { type MessageConnection, TransportClosedError } from "./transport.ts";

class MemoryConnection implements MessageConnection {
  peer!: MemoryConnection;
  #inbox: Uint8Array[] = [];
  #waiting: ((message: Uint8Array | null) => void) | undefined;
  #closed = false;

  constructor(readonly peerVatId: Uint8Array | undefined) {}

  send(message: Uint8Array): void {
    if (this.#closed) throw new TransportClosedError("connection is closed");
    this.peer.deliver(message.slice());
  }

  deliver(message: Uint8Array | null): void {
    if (this.#closed) return;
    const waiting = this.#waiting;
    if (waiting !== undefined) {
      this.#waiting = undefined;
      waiting(message);
    } else if (message !== null) {
      this.#inbox.push(message);
    } else {
      this.#closed = true;
    }
  }

  receive(): Promise<Uint8Array | null> {
    const next = this.#inbox.shift();
    if (next !== undefined) return Promise.resolve(next);
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiting = resolve);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#inbox = [];
    this.#waiting?.(null);
    this.#waiting = undefined;
    this.peer.deliver(null);
  }
}

/**
 * A pair of connected in-process connections. `aVatId` is the ID that
 * side A reports for its peer (so B's own ID), and the other way round.
 *
 * @example
 * ```ts
 * import { memoryPipe } from "./memory.ts";
 * const [a, b] = memoryPipe();
 * a.send(new Uint8Array([1, 2, 3]));
 * console.assert((await b.receive())?.length === 3);
 * a.close();
 * console.assert((await b.receive()) === null);
 * ```
 */
export function memoryPipe(
  options: { aSeesPeerVatId?: Uint8Array; bSeesPeerVatId?: Uint8Array } = {},
): [MessageConnection, MessageConnection] {
  const a = new MemoryConnection(options.aSeesPeerVatId);
  const b = new MemoryConnection(options.bSeesPeerVatId);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
