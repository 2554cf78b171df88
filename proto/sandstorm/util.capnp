@0xecd50d792c3d9992;
# Small types shared by the grain API. File, type and interface IDs and
# field ordinals are those of Sandstorm's published util.capnp, so that a
# Sandstorm app and a Blackrock supervisor agree on every byte.

struct KeyValue @0x94a081e4abb13424 {
  # One environment variable, cookie or similar pair.
  key @0 :Text;
  value @1 :Text;
}

struct LocalizedText @0x8b5db772377be249 {
  # Text shown to people, with optional translations.
  defaultText @0 :Text;
  localizations @1 :List(Localization);

  struct Localization @0xa4f5ae06dd1b7791 {
    locale @0 :Text;
    # A language tag such as "de" or "pt-BR".
    text @1 :Text;
  }
}

interface Handle @0x98f424ac606042e0 {
  # Held to keep something alive or subscribed; dropping the last
  # reference cancels it.
  ping @0 () -> ();
}

interface ByteStream @0xcd57387729cfe35f {
  # A sink for bytes, such as a streamed HTTP response body.
  write @0 (data :Data) -> ();
  # Sandstorm declares this as a streaming call; its result is an empty
  # struct either way, so the plain form is wire-identical.
  done @1 () -> ();
  # No more writes follow; the receiver may finish.
  expectSize @2 (size :UInt64) -> ();
  # An optional hint of the total length, before the first write.
}

interface StaticAsset @0xfabb5e621fa9a23f {
  # A file the platform serves on its own host (for example an icon).
  getUrl @0 () -> (protocol :Protocol, hostPath :Text);

  enum Protocol @0x9714437546d80c39 {
    https @0;
    http @1;
  }
}
