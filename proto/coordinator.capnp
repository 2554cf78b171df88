@0xf7f080c0c0f7e0e4;
# Coordinators place grains on workers and move them when a worker dies.
# Any coordinator accepts any request: where each grain runs lives in
# shared state changed only by compare-and-set, never in one coordinator.

struct GrainNeeds {
  memoryBytes @0 :UInt64;
  suspicious @1 :Bool;
  # The grain's app is flagged suspicious: it never shares a worker with a
  # high-value grain.
  highValue @2 :Bool;
}

struct GrainPlacement {
  grainId @0 :Text;
  workerId @1 :Text;
  # The worker's vat ID, hex.
  epoch @2 :UInt64;
  # Grows with every (re)start; the worker takes the grain's volume lease
  # at this epoch, which fences out any worker holding an older one.
}

struct WorkerLoad {
  memoryBytes @0 :UInt64;
  # Capacity.
  cores @1 :UInt32;
  maxGrains @2 :UInt32;
  memoryUsedBytes @3 :UInt64;
  cpuLoad @4 :Float64;
  grains @5 :UInt32;
  highValueGrains @6 :UInt32;
  suspiciousGrains @7 :UInt32;
}

interface GrainHost {
  # Served by each worker to the coordinators.

  startGrain @0 (grainId :Text, epoch :UInt64, needs :GrainNeeds, spec :Data) -> ();
  # Starts the grain (or confirms it runs) at this epoch. The worker takes
  # the grain's volume lease at the epoch before it answers. `spec` is what
  # the shell gave openGrain, passed on untouched.

  stopGrain @1 (grainId :Text) -> ();
  # Flushes the grain's volume and stops it.
}

interface Coordinator {
  openGrain @0 (grainId :Text, needs :GrainNeeds, spec :Data) -> (placement :GrainPlacement);
  # Where the grain runs, starting it on the least-loaded worker first if
  # it does not run on a live one. `spec` (what the worker needs to start
  # the grain: package, volume, owner) is kept with the grain's record so
  # that a restart elsewhere after a failure has it too.

  heartbeat @1 (workerId :Text, load :WorkerLoad, host :GrainHost) -> ();
  # Each worker calls every coordinator about once a second with its load
  # and its GrainHost; a worker silent for the heartbeat timeout is dead
  # and its grains move.

  drainWorker @2 (workerId :Text) -> (moved :UInt32);
  # Moves every grain off a worker that is about to leave the cluster.

  listGrains @3 () -> (grains :List(GrainPlacement));
}
