@0xe3c1a8f25b7d9046;
# The schema the RPC engine's tests, examples, benchmarks and the C++
# interop peer (tests/interop/) share. Not used by any role.

interface Counter {
  # A small object whose lifetime the host can see, to test Release.
  increment @0 (by :Int32) -> (value :Int32);
}

interface TestHost {
  add @0 (a :Int32, b :Int32) -> (sum :Int32);

  newCounter @1 (start :Int32) -> (counter :Counter);
  # A fresh counter; the host counts it in liveCounters until released.

  useCounter @2 (counter :Counter, by :Int32) -> (value :Int32);
  # Calls `counter.increment(by)` back on the caller's object.

  holdCounter @3 (counter :Counter) -> ();
  # Keeps a reference after the call returns.

  dropHeld @4 () -> ();
  # Releases every reference holdCounter kept.

  liveCounters @5 () -> (count :Int32);
  # How many counters made by newCounter are still referenced.

  fail @6 (kind :Text) -> ();
  # Throws an exception of the given type ("failed", "overloaded", ...).

  echo @7 (data :Data) -> (data :Data);

  self @8 () -> (host :TestHost);
  # This same host, to test a capability that points back.

  bounce @9 (counter :Counter) -> (counter :Counter);
  # Returns the caller's own capability: pipelined calls on the result
  # loop through the host until the caller learns it is local (embargo).

  promisedCounter @10 (start :Int32) -> (counter :Counter);
  # A counter returned as a promise, resolved by the next settle().

  promisedBounce @11 (counter :Counter) -> (counter :Counter);
  # The caller's own capability returned as a promise, resolved by the
  # next settle(): calls made through it meanwhile loop through the host.

  settle @12 () -> ();

  trees @13 () -> (host :TreeHost);
  # A TreeHost, for the forwarding and cancellation tests.
}

struct TestTree {
  # Nested values of every kind, for tests that forward data through a
  # middle vat and check it arrives unchanged.
  number @0 :UInt64;
  flag @1 :Bool;
  text @2 :Text;
  data @3 :Data;
  texts @4 :List(Text);
  numbers @5 :List(Int16);
  flags @6 :List(Bool);
  children @7 :List(TestTree);
  child @8 :TestTree;
  ratio @9 :Float32;
}

interface TreeHost {
  swap @0 (tree :TestTree) -> (tree :TestTree);
  # Takes one tree and answers another: the tests compare both with what
  # they sent and what they asked the host to answer.

  wait @1 () -> (host :TreeHost);
  # Answers when the test lets it, or never: for cancellation tests.

  canceledWaits @2 () -> (count :Int32);
  # How many calls to wait were canceled by their callers so far.
}
