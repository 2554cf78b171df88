@0xc6a35d1f8e20b947;
# SturdyRefs: what `Persistent.save` returns and a vat's restorer turns back
# into a live capability. A SturdyRef is sealed to the trust zone that saved
# it: its content is encrypted under a secret only that zone's members hold,
# and a restorer serves only peers whose authenticated vat ID belongs to the
# zone. Its bytes alone are useless to anyone else.

using Cluster = import "/cluster.capnp";

struct SturdyRef {
  zone @0 :Cluster.TrustZone;
  # The zone that saved the ref; only its members may restore it.

  savedBy @1 :Data;
  # The saving vat's ID. For zone `vat` it is the only vat that may
  # restore the ref (its secret is that vat's own).

  nonce @2 :Data;
  # 24 random bytes for XChaCha20-Poly1305.

  sealed @3 :Data;
  # A SturdyRefContent message sealed with the zone secret; the zone and
  # savedBy are bound to it as associated data.
}

struct SturdyRefContent {
  # What a ref designates, by kind. Readable only inside the zone.
  union {
    storage @0 :StorageRef;
    grain @1 :GrainRef;
    external @2 :ExternalRef;
    ephemeral @3 :EphemeralRef;
  }
}

struct StorageRef {
  # An object kept by the storage nodes (a volume, a blob).
  objectId @0 :Data;
}

struct GrainRef {
  # A capability a grain saved, restored by asking the grain again.
  grainId @0 :Text;
  objectId @1 :Data;
}

struct ExternalRef {
  # A capability outside the cluster, reached through a gateway.
  url @0 :Text;
  token @1 :Data;
}

struct EphemeralRef {
  # An object of one vat, named by a key into that vat's persisted state,
  # so the ref outlives the vat's process.
  objectId @0 :Data;
}

interface Restorer {
  # Served by every vat that hosts restorable objects.
  restore @0 (sturdyRef :SturdyRef) -> (cap :Capability);
  # Fails with `failed` when the presenting vat is outside the ref's zone,
  # when this vat cannot open it, or when it names nothing.
}
