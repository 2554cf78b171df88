@0xd7b3e52a90c41f68;
# The storage role: encrypted objects kept by storage nodes on their disks
# (a local directory or an S3 bucket). Every object is owned by a user's
# root or by another object; removing an owner removes what it owns.
#
# Every object capability below is also served as the standard
# `Persistent` (persistent.capnp): `save` returns a SturdyRef sealed to the
# storage zone, which holds the object's key. A storage node keeps no key:
# it learns one when a ref is restored and forgets it when the capability
# is released.
#
# Errors are Cap'n Proto exceptions of type `failed` whose reason starts
# with the error's name, for example "QuotaExceededError: quota of root
# "alice" exceeded: ...", "LeaseLostError: ...", "VersionMismatchError:
# ...", "CorruptObjectError: ...", "ObjectNotFoundError: ...".

interface StorageNode {
  # A storage node's bootstrap capability.

  root @0 (name :Text) -> (root :UserRoot);
  # The named user root, created (with no quota limit) if missing. Only
  # vats the node's configuration trusts (coordinators, shells) may call.

  restore @1 (sturdyRef :Data) -> (cap :Capability);
  # Turns a storage SturdyRef (the serialized `SturdyRef` struct of
  # sturdyref.capnp) back into the object's capability. Fails if the
  # presenting vat may not present storage refs.
}

interface UserRoot {
  setQuota @0 (quotaBytes :UInt64);
  usage @1 () -> (usedBytes :UInt64, quotaBytes :UInt64);
  factory @2 () -> (factory :StorageFactory);
  # Objects made by this factory are owned by the root.
}

interface StorageFactory {
  # Makes objects owned by one root or object.

  newVolume @0 () -> (volume :Volume);
  uploadBlob @1 () -> (upload :BlobUpload);
  newAssignable @2 (value :StoredValue) -> (assignable :Assignable);
  newImmutable @3 (value :StoredValue) -> (immutable :Immutable);
}

struct StoredValue {
  # A Cap'n Proto value (one serialized message) and the capabilities it
  # refers to. Each capability is saved (`Persistent.save`) when the value
  # is stored, and restored when it is read; `caps[i]` stands for the
  # capability a value's own encoding numbers i.
  content @0 :Data;
  caps @1 :List(CapSlot);
}

struct CapSlot {
  cap @0 :Capability;
}

struct Usage {
  ownBytes @0 :UInt64;
  subtreeBytes @1 :UInt64;
  # Own bytes plus those of everything the object owns.
}

interface BlobUpload {
  # Stream the bytes with write (keep a few calls in flight), then done.
  write @0 (data :Data);
  done @1 () -> (blob :Blob);
  # Fails (and nothing is kept) if a write failed, e.g. over quota.
}

interface Blob {
  size @0 () -> (sizeBytes :UInt64);
  read @1 (offsetBytes :UInt64, lengthBytes :UInt32) -> (data :Data);
  # At most 4 MiB per call; shorter at the end of the blob.
  usage @2 () -> (usage :Usage);
  factory @3 () -> (factory :StorageFactory);
  remove @4 ();
}

interface Volume {
  # 2^32 blocks of 4096 bytes; blocks never written read as zeros.
  read @0 (blockIndex :UInt32, blockCount :UInt32) -> (data :Data);
  takeLease @1 () -> (writer :VolumeWriter);
  # Fences out every earlier writer, on every storage node.
  stat @2 () -> (usedBlocks :UInt64, epoch :UInt64);
  usage @3 () -> (usage :Usage);
  factory @4 () -> (factory :StorageFactory);
  remove @5 ();
}

interface VolumeWriter {
  # Writes under one lease epoch; every call fails with LeaseLostError
  # once a newer lease was taken. A write returns once it is durable.
  write @0 (blockIndex :UInt32, data :Data);
  zero @1 (blockIndex :UInt32, blockCount :UInt64);
  sync @2 ();
  read @3 (blockIndex :UInt32, blockCount :UInt32) -> (data :Data);
  epoch @4 () -> (epoch :UInt64);
}

interface Assignable {
  get @0 () -> (value :StoredValue, version :UInt64);
  set @1 (value :StoredValue, expectedVersion :UInt64) -> (version :UInt64);
  # Compare-and-set: VersionMismatchError unless still at expectedVersion.
  usage @2 () -> (usage :Usage);
  factory @3 () -> (factory :StorageFactory);
  remove @4 ();
}

interface Immutable {
  get @0 () -> (value :StoredValue);
  usage @1 () -> (usage :Usage);
  factory @2 () -> (factory :StorageFactory);
  remove @3 ();
}
