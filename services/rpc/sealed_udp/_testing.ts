/**
 * Test helpers: a UDP relay that sits between two vats on loopback (a man
 * in the middle), records what passes, and can drop, replay or alter it.
 *
 * @module
 */

import { formatAddress, parseAddress } from "./directory.ts";

/** What the relay does with a datagram: pass it, or drop it. */
export type RelayFilter = (datagram: Uint8Array, fromA: boolean) => boolean;

/** A relay between vat A (at `aAddress`) and vat B (at `bAddress`).
 * Give A the relay's address for B and B the relay's address for A. */
export class Relay {
  readonly address: string;
  readonly #socket: Deno.DatagramConn;
  readonly #a: Deno.NetAddr;
  readonly #b: Deno.NetAddr;
  readonly #done: Promise<void>;
  /** Every datagram seen, in order, with its direction. */
  readonly seen: { datagram: Uint8Array; fromA: boolean }[] = [];
  /** Decides what passes; everything does by default. */
  filter: RelayFilter = () => true;

  constructor(aAddress: string, bAddress: string) {
    this.#socket = Deno.listenDatagram({
      transport: "udp",
      hostname: "127.0.0.1",
      port: 0,
    });
    const local = this.#socket.addr as Deno.NetAddr;
    this.address = formatAddress({ ip: 0x7f000001, port: local.port });
    const toNet = (text: string): Deno.NetAddr => {
      const { ip, port } = parseAddress(text);
      const host = formatAddress({ ip, port }).split(":")[0];
      return { transport: "udp", hostname: host, port };
    };
    this.#a = toNet(aAddress);
    this.#b = toNet(bAddress);
    this.#done = this.#run();
  }

  async #run(): Promise<void> {
    try {
      for await (const [datagram, from] of this.#socket) {
        const fromA = (from as Deno.NetAddr).port === this.#a.port;
        this.seen.push({ datagram, fromA });
        if (!this.filter(datagram, fromA)) continue;
        await this.#socket.send(datagram, fromA ? this.#b : this.#a);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  /** Sends a datagram as if it came from A (to B) or from B (to A). */
  async inject(datagram: Uint8Array, toB: boolean): Promise<void> {
    await this.#socket.send(datagram, toB ? this.#b : this.#a);
  }

  async close(): Promise<void> {
    this.#socket.close();
    await this.#done;
  }
}

/** Waits until `predicate` holds, checking every 10 ms; throws after
 * `timeoutMs` with `what` in the message. */
export async function waitFor(
  what: string,
  predicate: () => boolean,
  timeoutMs = 10_000,
): Promise<void> {
  const start = performance.now();
  while (!predicate()) {
    if (performance.now() - start > timeoutMs) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
