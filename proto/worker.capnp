@0xb88c46f4488deedd;
# A worker runs grains: each an app package's program in its own sandbox,
# with its data on its own volume and the grain API on its fd 3. Shells,
# coordinators and tests reach a worker through this interface; the
# coordinators also use the GrainHost contract of coordinator.capnp, which
# the same capability serves.

using Grain = import "/sandstorm/grain.capnp";

struct GrainSpec {
  # What a worker needs to start a grain. The shell encodes it; the
  # coordinator passes it on untouched as GrainHost.startGrain's `spec`.
  packageId @0 :Text;
  # 32 hex characters; the package must be installed on the worker (see
  # Worker.installPackage).
  isNew @1 :Bool;
  # True runs the manifest's first action on an empty volume; false runs
  # its continue command on the volume as it is.
  memoryBytes @2 :UInt64;
  # Hard memory limit of the grain's cgroup; 0 takes the worker's default.
  volumeDir @3 :Text;
  # Where the grain's volume is mounted on the worker (the NBD-attached
  # ext4); empty keeps it in a directory of the worker's own state.
  volumeRef @4 :Data;
  # The grain's storage Volume: its SturdyRef, sealed to the storage zone.
  # When set, the worker attaches it through its block daemon as the
  # grain's /var (and volumeDir must be empty); a volume that already
  # holds a filesystem never gets the "new" action.
  volumeSizeBytes @5 :UInt64;
  # Size of the volume's block device; 0 takes the worker's default.
}

enum GrainState {
  running @0;
  stopped @1;
  outOfMemory @2;
  # The kernel killed the grain at its memory limit.
  crashed @3;
  # The grain's program exited on its own.
}

struct GrainUsage {
  grainId @0 :Text;
  packageId @1 :Text;
  state @2 :GrainState;
  hostUid @3 :UInt32;
  # 0 when the grain does not run.
  memoryLimitBytes @4 :UInt64;
  memoryBytes @5 :UInt64;
  memoryPeakBytes @6 :UInt64;
  startedAtMs @7 :Int64;
  exitCode @8 :Int32;
  # Meaningful when the grain ended.
  cpuNanoseconds @9 :UInt64;
  # CPU time, user and system, since the grain started.
}

struct MachineUsage {
  memoryTotalBytes @0 :UInt64;
  memoryAvailableBytes @1 :UInt64;
  grainMemoryBytes @2 :UInt64;
  # Sum over the worker's grain cgroups.
  runningGrains @3 :UInt32;
  load1 @4 :Float64;
  freeUids @5 :UInt32;
  # How many more grains the worker's uid range allows.
}

interface Worker {
  installPackage @0 (spk :Data) -> (packageId :Text, appId :Text, appTitle :Text);
  # Verifies and unpacks a package, or finds it cached by its package ID.
  # A bad package fails with a message naming the check that refused it.

  newGrain @1 (grainId :Text, spec :GrainSpec) -> (view :Grain.UiView);
  # Starts a grain for the first time (spec.isNew is taken as true).
  restoreGrain @2 (grainId :Text, spec :GrainSpec) -> (view :Grain.UiView);
  # Starts an existing grain again on its volume (spec.isNew is ignored).
  # `view` is the app's own UiView; calls on it go through the worker to
  # the grain's fd 3.

  getView @3 (grainId :Text) -> (view :Grain.UiView);
  stopGrain @4 (grainId :Text) -> ();
  # Stops the grain and syncs its volume.
  deleteGrain @5 (grainId :Text) -> ();
  # Stops the grain if it runs and removes its volume.

  listGrains @6 () -> (grains :List(GrainUsage));
  grainUsage @7 (grainId :Text) -> (usage :GrainUsage);
  machineUsage @8 () -> (usage :MachineUsage);
}
