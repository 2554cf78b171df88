/**
 * The sealed UDP vat network: vat-to-vat connections over UDP, every
 * datagram sealed under a key the two vats derive from their static
 * ed25519 keys, with no handshake. See network.ts for the protocol and
 * packet.ts for the wire format.
 *
 * @module
 */

export {
  type SealedUdpMetrics,
  SealedUdpNetwork,
  type SealedUdpNetworkOptions,
} from "./network.ts";
export { SealedConnection } from "./connection.ts";
export {
  AddressError,
  formatAddress,
  parseAddress,
  type UdpAddress,
  VatDirectory,
} from "./directory.ts";
export { PacketFormatError } from "./packet.ts";
