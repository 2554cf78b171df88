@0xc4a1e0b9d3f25a17;
# Identities and addresses shared by every vat of a Blackrock cluster.

struct VatId {
  # An ed25519 public key. A vat proves it owns the ID by signing a
  # challenge with the matching private key, which never leaves its machine.
  publicKey @0 :Data;
}

enum TrustZone {
  # Vats of one zone may restore each other's SturdyRefs. `vat` means the
  # ref can be restored only by the very vat that saved it.
  vat @0;
  storage @1;
  coordinators @2;
  gateways @3;
  shells @4;
}

struct VatPath {
  # Where to reach a vat: its ID and the UDP address it listens on.
  id @0 :VatId;
  address @1 :Text;
  # "host:port"; an IPv6 host is written in brackets.
}
