@0xdf9bc20172856a3a;
# The Sandstorm package (.spk) format and the manifest inside it. IDs,
# ordinals and field types follow Sandstorm's package.capnp so that
# packages built by Sandstorm's `spk` tool and by tasks/pack.ts are read
# alike.
#
# File layout: the eight magic bytes below, then one xz stream. Inside it
# come two Cap'n Proto messages in standard framing: a Signature, then an
# Archive. The signature covers the SHA-512 of the archive message's bytes
# exactly as they appear in the stream (segment table included).

using Util = import "/sandstorm/util.capnp";
using Powerbox = import "/sandstorm/powerbox.capnp";

const magicNumber @0x82bdd60d2cf486c9 :Data = "\x8f\xc6\xcd\xef\x45\x1a\xea\x96";
# Written uncompressed before the xz stream.

struct Signature @0xeca8b9277cb36488 {
  publicKey @0 :Data;
  # 32-byte ed25519 key. Its base32 form is the app ID.
  signature @1 :Data;
  # 128 bytes in libsodium's combined form: the 64-byte ed25519 signature
  # followed by the signed 64-byte message, which is the SHA-512 of the
  # archive message.
}

struct Archive @0xf153ba7dee1c9118 {
  # The package's file tree; it becomes the grain's read-only root.
  files @0 :List(File);

  struct File @0xd92313d72a1ab4d0 {
    name @0 :Text;
    # One path component: never empty, ".", ".." or containing "/".
    lastModificationTimeNs @5 :Int64;

    union {
      regular @1 :Data;
      executable @2 :Data;
      symlink @3 :Text;
      directory @4 :List(File);
    }
  }
}

struct KeyFile @0xe47ce2b3aab90f74 {
  # A signing key as kept in a keyring.
  publicKey @0 :Data;
  # 32 bytes.
  privateKey @1 :Data;
  # 64 bytes in libsodium's form: the 32-byte seed, then the public key.
}

struct AppId @0x880c6c7782a33310 {
  # The app's public key as four words, for places that need a fixed-size
  # value rather than Data.
  id0 @0 :UInt64;
  id1 @1 :UInt64;
  id2 @2 :UInt64;
  id3 @3 :UInt64;
}

struct PackageId @0xe2e344d346ffda6b {
  # The first 16 bytes of the SHA-256 of the whole .spk file.
  id0 @0 :UInt64;
  id1 @1 :UInt64;
}

struct Manifest @0x855f296a69e6e1ca {
  # Kept in the archive as the regular file "sandstorm-manifest" at the
  # top level. Readers cap it at sizeLimitInWords.

  const sizeLimitInWords @0xd9bd68bd9dba918f :UInt64 = 1048576;

  appTitle @7 :Util.LocalizedText;
  appVersion @4 :UInt32;
  # Increases with every release; a grain never moves to a lower one.
  minUpgradableAppVersion @5 :UInt32;
  appMarketingVersion @6 :Util.LocalizedText;
  minApiVersion @0 :UInt32;
  maxApiVersion @1 :UInt32;
  metadata @8 :Metadata;

  actions @2 :List(Action);
  # Ways to create a new grain; the first one is the usual "new" button.
  continueCommand @3 :Command;
  # How to start an existing grain again after it was stopped.

  struct Command @0xc64951b2a02886cf {
    argv @1 :List(Text);
    # argv[0] is resolved inside the package, which is mounted as "/".
    environ @2 :List(Util.KeyValue);
    deprecatedExecutablePath @0 :Text;
    # Old packages put the program here and the rest in argv.
  }

  struct Action @0xe5c59b9296375a00 {
    input :union {
      none @0 :Void;
      capability @1 :List(Powerbox.PowerboxDescriptor);
    }
    command @2 :Command;
    title @3 :Util.LocalizedText;
    nounPhrase @5 :Util.LocalizedText;
    description @4 :Util.LocalizedText;
  }
}

struct Metadata @0xe0c5892a5448f4ee {
  # What an app market or the shell shows about the app.
  icons :group {
    appGrid @0 :Icon;
    grain @1 :Icon;
    market @2 :Icon;
    marketBig @18 :Icon;
  }

  website @3 :Text;
  codeUrl @4 :Text;

  license :group {
    union {
      none @5 :Void;
      openSource @6 :OpenSourceLicense;
      proprietary @7 :Util.LocalizedText;
      publicDomain @8 :Util.LocalizedText;
    }
    notices @9 :Util.LocalizedText;
  }

  categories @10 :List(Category);

  author :group {
    upstreamAuthor @19 :Text;
    contactEmail @11 :Text;
    pgpSignature @12 :Data;
  }

  pgpKeyring @13 :Data;
  description @14 :Util.LocalizedText;
  shortDescription @15 :Util.LocalizedText;
  screenshots @16 :List(Screenshot);
  changeLog @17 :Util.LocalizedText;

  struct Icon @0xe492a2981208ad0b {
    union {
      unknown @0 :Void;
      svg @1 :Text;
      png :group {
        dpi1x @2 :Data;
        dpi2x @3 :Data;
      }
    }
  }

  struct Screenshot @0x8bc9f4365959348e {
    width @0 :UInt32;
    height @1 :UInt32;
    union {
      unknown @2 :Void;
      png @3 :Data;
      jpeg @4 :Data;
    }
  }
}

enum OpenSourceLicense @0xd86e43f42c8b0f74 {
  # Numbering follows Sandstorm; 0 means none was chosen.
  invalid @0;
  mit @1;
  apache2 @2;
  gpl3 @3;
  agpl3 @4;
  bsd3Clause @5;
  bsd2Clause @6;
  gpl2 @7;
  lgpl2 @8;
  lgpl3 @9;
  isc @10;
  artistic2 @11;
  python2 @12;
  php3 @13;
  mpl2 @14;
  cddl @15;
  epl @16;
  cpal @17;
  zlib @18;
}

enum Category @0x938e7e53b106e1c0 {
  other @0;
  productivity @1;
  communications @2;
  social @3;
  webPublishing @4;
  office @5;
  developerTools @6;
  science @7;
  media @8;
  games @9;
  graphics @10;
}
