@0xba8ec55ff6631b1a;
# The master configures the cluster and serves no request: machines keep
# what it tells them and run on without it.

using Agent = import "/agent.capnp";

struct MachineStatus {
  name @0 :Text;
  address @1 :Text;
  alive @2 :Bool;
  specs @3 :Agent.MachineSpecs;
  roles @4 :List(Agent.RoleStatus);
  # As the machine last reported them.
  draining @5 :Bool;
}

interface Master {
  status @0 () -> (machines :List(MachineStatus), directoryVersion :UInt64);

  addMachine @1 (name :Text, agentAddress :Text) -> ();
  # The master reads the machine's specs and gives it roles.

  removeMachine @2 (name :Text) -> ();
  # Moves the machine's grains to other workers first, then stops its
  # roles and forgets it.
}
