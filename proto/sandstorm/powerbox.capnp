@0xf6c200ab14cd53e4;
# The parts of Sandstorm's powerbox schema that packages and views refer
# to. IDs and ordinals follow Sandstorm's powerbox.capnp.

using Util = import "/sandstorm/util.capnp";

struct PowerboxDescriptor @0xedcf0fa3bfc71c58 {
  # Describes a capability an app offers or asks for: a set of tags, each
  # an interface ID with an optional value that narrows it.
  tags @0 :List(Tag);
  quality @1 :MatchQuality;

  struct Tag @0xbe3d16a8df03c418 {
    id @0 :UInt64;
    value @1 :AnyPointer;
  }

  enum MatchQuality @0xbb1afa45d25ce8de {
    acceptable @0;
    preferred @1;
    unacceptable @2;
  }
}

struct PowerboxDisplayInfo @0xa553a209bee32bec {
  title @0 :Util.LocalizedText;
  verbPhrase @1 :Util.LocalizedText;
  description @2 :Util.LocalizedText;
}
