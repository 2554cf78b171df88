@0x9be7f67a3b95cb80;
# The machine agent: what the master tells each machine, and what the
# machine reports back. The agent keeps everything it is told on its own
# disk, so that a machine keeps running while the master is away.

using Cluster = import "/cluster.capnp";

enum Role {
  coordinator @0;
  storage @1;
  worker @2;
  gateway @3;
  shell @4;
}

struct MachineSpecs {
  cores @0 :UInt32;
  memoryBytes @1 :UInt64;
  diskBytes @2 :UInt64;
  # Size of the filesystem holding the agent's state folder.
}

struct Setting {
  # One `--set path=value` given to a role's process.
  path @0 :Text;
  value @1 :Text;
}

struct RoleAssignment {
  role @0 :Role;
  settings @1 :List(Setting);
}

struct Assignment {
  # Every role the machine runs. A machine refuses a version older than the
  # one it runs, so a master that was cut off cannot undo a newer decision.
  version @0 :UInt64;
  roles @1 :List(RoleAssignment);
}

struct VatEntry {
  # One role process: its vat, where it listens, and the trust zones it
  # belongs to.
  role @0 :Role;
  machine @1 :Text;
  path @2 :Cluster.VatPath;
  zones @3 :List(Cluster.TrustZone);
}

struct Directory {
  # Which peers every vat may talk to. Newer versions replace older ones.
  version @0 :UInt64;
  vats @1 :List(VatEntry);
}

struct RoleStatus {
  role @0 :Role;
  vatId @1 :Cluster.VatId;
  # Made by the agent for this role; the role holds the private key.
  running @2 :Bool;
  restarts @3 :UInt32;
  address @4 :Text;
  # "host:port" the role's vat listens on.
  failed @5 :Bool;
  # It exited with status 2 (invalid configuration): the agent waits for a
  # new assignment or new settings before starting it again.
}

struct AgentReport {
  machine @0 :Text;
  vatId @1 :Cluster.VatId;
  address @2 :Text;
  specs @3 :MachineSpecs;
  assignmentVersion @4 :UInt64;
  directoryVersion @5 :UInt64;
  roles @6 :List(RoleStatus);
}

interface Agent {
  # Served by the agent on every machine; only the master calls it.

  report @0 () -> (report :AgentReport);
  # The machine's specs and the state of its roles.

  assign @1 (assignment :Assignment) -> ();
  # Persists the assignment, then starts and stops roles to match it.

  setDirectory @2 (directory :Directory) -> (applied :Bool);
  # Persists the directory where the roles read it; false when stale.
}
