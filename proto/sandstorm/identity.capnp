@0xc822108a5c3d7d25;
# Who is using a grain, as the platform tells the app. IDs and ordinals
# follow Sandstorm's identity.capnp.

using Util = import "/sandstorm/util.capnp";

interface Identity @0xc084987aa951dd18 {
  # A user, as a capability the app can keep and later show or ask about.
  getProfile @0 () -> (profile :Profile);

  struct PowerboxTag @0xf35052cfb1d3bbe8 {
    permissions @0 :List(Bool);
  }
}

struct Profile @0xd3d0c34d7201fcef {
  displayName @0 :Util.LocalizedText;
  preferredHandle @1 :Text;
  picture @2 :Util.StaticAsset;
  pronouns @3 :Pronouns;

  enum Pronouns @0x84752dcf8539ab01 {
    neutral @0;
    male @1;
    female @2;
    robot @3;
  }
}

struct UserInfo @0x94b9d1efb35d11d3 {
  # Handed to the app with every new session.
  displayName @0 :Util.LocalizedText;
  preferredHandle @4 :Text;
  pictureUrl @6 :Text;
  pronouns @5 :Profile.Pronouns;
  deprecatedPermissionsBlob @1 :Data;
  permissions @3 :List(Bool);
  # One flag per permission the app declared in its ViewInfo.
  identityId @2 :Data;
  # Stable per user and per grain's app; 32 bytes, never the user's
  # account ID itself. Empty for anonymous visitors.
  identity @7 :Identity;
}
