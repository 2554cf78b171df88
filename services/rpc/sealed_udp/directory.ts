/**
 * Where each vat listens: vat ID to IPv4 host:port. The master pushes
 * updates at runtime; the network reads the newest entry on every send.
 *
 * @module
 */

import { checkVatId, vatIdHex } from "../vat_id.ts";

/** An IPv4 UDP address: address in host byte order, and port. */
export interface UdpAddress {
  ip: number;
  port: number;
}

/** A `host:port` string that is not an IPv4 address with a port. */
export class AddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AddressError";
  }
}

/** Parses `a.b.c.d:port` (IPv4 only: the UDP shim speaks AF_INET). */
export function parseAddress(text: string): UdpAddress {
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3}):(\d{1,5})$/
    .exec(text);
  if (match === null) {
    throw new AddressError(
      `address must be IPv4 a.b.c.d:port, got ${
        JSON.stringify(text.slice(0, 80))
      }`,
    );
  }
  const octets = match.slice(1, 5).map(Number);
  const port = Number(match[5]);
  if (octets.some((o) => o > 255) || port > 65535) {
    throw new AddressError(`address ${text} has a field out of range`);
  }
  const ip =
    ((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]) >>>
    0;
  return { ip, port };
}

/** Formats an address as `a.b.c.d:port`. */
export function formatAddress(address: UdpAddress): string {
  const { ip, port } = address;
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${
    ip & 255
  }:${port}`;
}

/**
 * The vat ID to address map. Listeners hear of every change so a network
 * can send what it queued for a vat whose address was unknown.
 */
export class VatDirectory {
  readonly #entries = new Map<string, UdpAddress>();
  readonly #listeners = new Set<(vatIdHex: string) => void>();

  /** Sets or replaces a vat's address. Throws for a bad ID or address. */
  set(vatId: Uint8Array, address: string): void {
    checkVatId(vatId);
    const parsed = parseAddress(address);
    const hex = vatIdHex(vatId);
    this.#entries.set(hex, parsed);
    for (const listener of this.#listeners) listener(hex);
  }

  /** Replaces the whole map, as when the master pushes a new one. */
  replaceAll(entries: Iterable<[Uint8Array, string]>): void {
    const next = new Map<string, UdpAddress>();
    for (const [vatId, address] of entries) {
      checkVatId(vatId);
      next.set(vatIdHex(vatId), parseAddress(address));
    }
    const changed = new Set([...this.#entries.keys(), ...next.keys()]);
    this.#entries.clear();
    for (const [hex, address] of next) this.#entries.set(hex, address);
    for (const hex of changed) {
      for (const listener of this.#listeners) listener(hex);
    }
  }

  delete(vatId: Uint8Array): void {
    const hex = vatIdHex(vatId);
    if (this.#entries.delete(hex)) {
      for (const listener of this.#listeners) listener(hex);
    }
  }

  /** The address of a vat by its hex ID, if known. */
  lookup(vatIdHex: string): UdpAddress | undefined {
    return this.#entries.get(vatIdHex);
  }

  /** Calls `listener` with the hex ID of every vat whose entry changes;
   * returns a function that stops it. */
  onChange(listener: (vatIdHex: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
