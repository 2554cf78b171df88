// Two simulated clusters on one host must share neither a worker cgroup
// (a starting worker clears its own, killing whatever runs there) nor a
// grain uid. These tests read the agent commands tasks/cluster.ts really
// runs, so a change that drops the cluster ID from them fails here.
import assert from "node:assert/strict";
import {
  agentCommand,
  clusterWorkerSlot,
  MACHINES_MAX,
  newClusterId,
} from "../../tasks/cluster.ts";

/** The worker cgroup and uid range an agent command hands its worker. */
function workerSettings(command: string[]) {
  const value = (key: string) => {
    const found = command.find((arg) => arg.startsWith(`${key}=`));
    assert.ok(found, `the agent command sets ${key}`);
    return found.slice(key.length + 1);
  };
  return {
    cgroupName: value("workerCgroupName"),
    uidFirst: Number(value("workerUidFirst")),
    uidCount: Number(value("workerUidCount")),
  };
}

function machinesOf(clusterId: string, count: number) {
  const state = {
    dir: `/tmp/cluster-${clusterId}`,
    addresses: Array.from({ length: count }, (_, i) => `10.77.1.${i + 1}`),
    clusterId,
  };
  return state.addresses.map((_, i) =>
    workerSettings(agentCommand(state, i + 1))
  );
}

Deno.test("workers of two clusters get disjoint cgroups and uid ranges", () => {
  // Random IDs as `cluster start` makes them, retried only past the one in
  // 1024 chance that two clusters' uid blocks meet (which the slot's doc
  // states); the fixed pair below checks the same without chance.
  const pairs: [string, string][] = [["0123456789abcdef", "fedcba9876543210"]];
  for (let i = 0; i < 20; i++) pairs.push([newClusterId(), newClusterId()]);
  let disjointPairs = 0;
  for (const [first, second] of pairs) {
    assert.notEqual(first, second);
    const workers = [...machinesOf(first, 7), ...machinesOf(second, 7)];
    const cgroups = new Set(workers.map((w) => w.cgroupName));
    assert.equal(cgroups.size, workers.length, "every cgroup is its own");
    const ranges = workers.map((w) => [w.uidFirst, w.uidFirst + w.uidCount])
      .sort((a, b) => a[0] - b[0]);
    const overlaps = ranges.slice(1).filter((r, i) => r[0] < ranges[i][1]);
    if (overlaps.length === 0) disjointPairs++;
    for (const worker of workers) {
      assert.ok(worker.uidFirst >= 4_000_000, "above single-machine uids");
      assert.ok(worker.uidFirst + worker.uidCount < 2 ** 31);
    }
  }
  assert.ok(disjointPairs >= pairs.length - 2, `${disjointPairs} disjoint`);
});

Deno.test("the workers of one cluster never share a uid", () => {
  const clusterId = newClusterId();
  const slots = Array.from(
    { length: MACHINES_MAX },
    (_, i) => clusterWorkerSlot(clusterId, i + 1),
  );
  for (let i = 1; i < slots.length; i++) {
    assert.equal(
      slots[i].uidFirst,
      slots[i - 1].uidFirst + slots[i - 1].uidCount,
    );
  }
  assert.throws(() => clusterWorkerSlot(clusterId, MACHINES_MAX + 1), {
    name: "RangeError",
  });
  assert.throws(() => clusterWorkerSlot(clusterId, 0), { name: "RangeError" });
});

Deno.test("cluster IDs are random 16-digit hex", () => {
  const ids = new Set(Array.from({ length: 100 }, newClusterId));
  assert.equal(ids.size, 100);
  for (const id of ids) assert.match(id, /^[0-9a-f]{16}$/);
});
