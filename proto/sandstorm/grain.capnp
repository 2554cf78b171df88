@0xc8d91463cfc4fb4a;
# The interfaces between a grain's app and the platform, carried over the
# app's file descriptor 3 as two-party Cap'n Proto RPC. Type and interface
# IDs and method and field ordinals follow Sandstorm's grain.capnp, so an
# unchanged Sandstorm app talks to a Blackrock supervisor.
#
# Where Sandstorm's parameter is a type this platform does not interpret
# (activity events, generic object IDs), it is declared AnyPointer here.
# Both are one pointer on the wire, so the encoding is the same.

using Util = import "/sandstorm/util.capnp";
using Powerbox = import "/sandstorm/powerbox.capnp";
using Identity = import "/sandstorm/identity.capnp";

interface SandstormApi @0xd2654fcf2a7002cb {
  # What the supervisor exports to the app as its bootstrap capability.
  deprecatedPublish @0 () -> ();
  deprecatedRegisterAction @1 () -> ();
  shareCap @2 (cap :Capability, displayInfo :Powerbox.PowerboxDisplayInfo)
      -> (sharedCap :Capability, link :SharingLink);
  shareView @3 (view :UiView) -> (sharedView :UiView, link :ViewSharingLink);
  save @8 (cap :Capability, label :Util.LocalizedText) -> (token :Data);
  # Persists a capability the app holds; the token restores it later,
  # also after the grain restarts.
  restore @4 (token :Data) -> (cap :Capability);
  drop @5 (token :Data) -> ();
  deleted @6 (ref :AnyPointer) -> ();
  stayAwake @7 (displayInfo :AnyPointer, notification :AnyPointer)
      -> (handle :Util.Handle);
  # Keeps the grain running while the handle is held (background work).
  backgroundActivity @9 (event :AnyPointer) -> ();
  getIdentityId @10 (identity :Identity.Identity) -> (id :Data);
  schedule @11 ScheduledJob -> ();
}

struct ScheduledJob @0xa34f0cfe24c69d74 {
  name @0 :Util.LocalizedText;
  callback @1 :Callback;
  schedule :group {
    union {
      oneShot :group {
        when @2 :Int64;
        # Nanoseconds since the Unix epoch.
        slack @3 :UInt64;
      }
      periodic @4 :SchedulingPeriod;
    }
  }

  interface Callback @0xab619ad5a8fb7e11 {
    run @0 () -> (cancelFutureRuns :Bool);
  }
}

enum SchedulingPeriod @0x8478a37e9456409d {
  hourly @0;
  daily @1;
  monthly @2;
  annually @3;
  weekly @4;
}

interface UiView @0xdbb4d798ea67e2e7 {
  # The app's bootstrap capability: a view of the grain that sessions are
  # opened on.
  getViewInfo @0 () -> ViewInfo;

  newSession @1 (userInfo :Identity.UserInfo, context :SessionContext,
                 sessionType :UInt64, sessionParams :AnyPointer, tabId :Data)
      -> (session :UiSession);
  # sessionType is the interface ID of the session wanted (WebSession's
  # for a browser tab); sessionParams is that session type's Params.

  newRequestSession @2 (userInfo :Identity.UserInfo, context :SessionContext,
                        sessionType :UInt64, sessionParams :AnyPointer,
                        requestInfo :List(Powerbox.PowerboxDescriptor),
                        tabId :Data)
      -> (session :UiSession);
  newOfferSession @3 (userInfo :Identity.UserInfo, context :SessionContext,
                      sessionType :UInt64, sessionParams :AnyPointer,
                      offer :Capability,
                      descriptor :Powerbox.PowerboxDescriptor, tabId :Data)
      -> (session :UiSession);

  struct ViewInfo @0xbc5e354741a8e665 {
    permissions @0 :List(PermissionDef);
    roles @1 :List(RoleDef);
    deniedPermissions @2 :List(Bool);
    matchRequests @3 :List(Powerbox.PowerboxDescriptor);
    matchOffers @4 :List(Powerbox.PowerboxDescriptor);
    appTitle @5 :Util.LocalizedText;
    grainIcon @6 :Util.StaticAsset;
    eventTypes @7 :AnyPointer;
  }

  struct PowerboxTag @0x982790c08b1958ec {
    title @0 :Text;
  }
}

interface UiSession @0xf63241ee58b5166f {
  # Base of every session type; WebSession extends it.
}

interface SessionContext @0xbf3e401d5a63f336 {
  # What the supervisor passes with a new session: the user's side.
  getSharedPermissions @0 () -> (var :Capability);
  tieToUser @1 (cap :Capability, requiredPermissions :List(Bool),
                displayInfo :Powerbox.PowerboxDisplayInfo)
      -> (tiedCap :Capability);
  offer @2 (cap :Capability, requiredPermissions :List(Bool),
            descriptor :Powerbox.PowerboxDescriptor,
            displayInfo :Powerbox.PowerboxDisplayInfo) -> ();
  request @3 (query :List(Powerbox.PowerboxDescriptor),
              requiredPermissions :List(Bool))
      -> (cap :Capability, descriptor :Powerbox.PowerboxDescriptor);
  claimRequest @7 (requestToken :Text, requiredPermissions :List(Bool))
      -> (cap :Capability);
  fulfillRequest @4 (cap :Capability, requiredPermissions :List(Bool),
                     descriptor :Powerbox.PowerboxDescriptor,
                     displayInfo :Powerbox.PowerboxDisplayInfo) -> ();
  close @5 () -> ();
  openView @6 (view :UiView, path :Text = "", newTab :Bool) -> ();
  activity @8 (event :AnyPointer) -> ();
}

struct PermissionDef @0xf144a5e58889dafb {
  name @3 :Text;
  title @0 :Util.LocalizedText;
  description @1 :Util.LocalizedText;
  obsolete @2 :Bool;
}

struct RoleDef @0xcb3f7064eae4dc5a {
  title @0 :Util.LocalizedText;
  verbPhrase @1 :Util.LocalizedText;
  description @2 :Util.LocalizedText;
  permissions @3 :List(Bool);
  obsolete @4 :Bool;
  default @5 :Bool;
}

interface SharingLink @0xc05520c9b0994ad3 {
  getPetname @0 () -> (name :Capability);
}

interface ViewSharingLink @0xa4f82f764dc3fee8 extends(SharingLink) {
  getRoleAssignment @0 () -> (var :Capability);

  struct RoleAssignment @0xf020f2be35e8e2b5 {
    union {
      none @0 :Void;
      allAccess @1 :Void;
      roleId @2 :UInt16;
    }
    addPermissions @3 :List(Bool);
    removePermissions @4 :List(Bool);
  }
}

interface AppPersistent @0xaffa789add8747b8 {
  save @0 () -> (objectId :AnyPointer, label :Util.LocalizedText);
}

interface MainView @0xc277e9822ae2c8fc extends(UiView) {
  # A UiView that can also restore the app's own persistent objects.
  restore @0 (objectId :AnyPointer) -> (cap :Capability);
  drop @1 (objectId :AnyPointer) -> ();
}
