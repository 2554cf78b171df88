@0xc2fae5b41cdf45be;
# Shells and gateways. A gateway sends the main hostname to a live shell
# replica and each grain hostname to that grain session's backend, which it
# asks a shell for. Shells register with every gateway and call in again
# every few seconds; a gateway forgets a shell it has not heard from.

interface GatewayLogin {
  # The gateway's bootstrap on its control port. Shells and gateways of one
  # Blackrock share a secret token; the control port is on loopback or a
  # private network, and the token keeps other local processes from
  # registering as a shell (which would receive the main hostname's
  # traffic) or asking for the gateway's status.

  login @0 (token :Text) -> (gateway :Gateway);
  # Fails with an error of type `failed` when the token is wrong.
}

interface Gateway {
  registerShell @0 (shellId :Text, httpAddress :Text, shell :Shell) -> ();
  # Adds the shell, or refreshes it when it is known: each call counts as
  # the shell's heartbeat, and the gateway drops a shell it has not heard
  # from within its timeout (a few heartbeats). `shellId` is unique per
  # shell process (letters, digits, `_` and `-`, at most 64);
  # `httpAddress` is "host:port" of the shell's web server, where the
  # gateway forwards the main hostname's requests; `shell` answers route
  # lookups and replaces the one given before.

  unregisterShell @1 (shellId :Text) -> ();
  # A shell that stops says so, to leave the gateway's rotation at once.

  status @2 () -> (status :GatewayStatus);
  # For the shell's admin page.
}

struct GatewayStatus {
  hostname @0 :Text;
  pid @1 :UInt32;
  rssBytes @2 :UInt64;
  startedAtMs @3 :Int64;
  address @4 :Text;
  # Where browsers reach this gateway (nginx's host:port).
  shells @5 :List(Text);
  # httpAddress of every live shell, sorted.
}

interface Shell {
  route @0 (hostLabel :Text) -> (found :Bool, route :GrainRoute);
  # Where a grain hostname's requests go. `hostLabel` is the hostname's
  # first label (a session's random name). `found` is false when no live
  # session has that label: the gateway answers the browser 404.
}

struct GrainRoute {
  backend @0 :Text;
  # "worker://host:port/grainId" for a grain on a worker (the gateway
  # opens a WebSession on it), or an http:// URL for an HTTP grain runner.
  grainId @1 :Text;
  canWrite @2 :Bool;
  # False for a viewer: the gateway refuses every method but GET, HEAD and
  # OPTIONS.
  expiresAtMs @3 :Int64;
  userId @4 :Text;
  # Empty for an anonymous visitor.
  userName @5 :Text;
  permissions @6 :List(Bool);
  # The app's permission flags for this session, in the order of its
  # ViewInfo's permissions.
  sessionKeyHash @7 :Text;
  # Hex SHA-256 of the session's secret key. The shell's iframe first loads
  # /_blackrock/session?token=<key> on the grain hostname; the gateway
  # turns that into a cookie for that hostname and refuses every request
  # without it, so the hostname alone grants nothing.
}
