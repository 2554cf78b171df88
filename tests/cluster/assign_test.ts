import assert from "node:assert/strict";
import fc from "fast-check";
import {
  assignRoles,
  type MachineInfo,
  type RoleMap,
  type RoleName,
} from "../../services/master/assign.ts";

const GiB = 2 ** 30;

function machine(name: string, memoryGiB: number, diskGiB: number) {
  return {
    name,
    cores: 8,
    memoryBytes: memoryGiB * GiB,
    diskBytes: diskGiB * GiB,
  };
}

function holders(roles: RoleMap, role: RoleName): string[] {
  return [...roles].filter(([, r]) => r.includes(role)).map(([n]) => n);
}

const five = [
  machine("m1", 32, 200),
  machine("m2", 32, 200),
  machine("disk", 8, 8000),
  machine("m4", 128, 200),
  machine("m5", 128, 200),
];

Deno.test("much disk makes storage, much memory makes workers", () => {
  const roles = assignRoles(five);
  assert.deepEqual(holders(roles, "storage"), ["disk"]);
  assert.ok(roles.get("m4")!.includes("worker"));
  assert.ok(roles.get("m5")!.includes("worker"));
  assert.equal(holders(roles, "coordinator").length, 2);
  assert.equal(holders(roles, "gateway").length, 1);
  assert.equal(holders(roles, "shell").length, 1);
  for (
    const name of [...holders(roles, "storage"), ...holders(roles, "shell")]
  ) {
    assert.ok(!roles.get(name)!.includes("worker"), `worker on ${name}`);
  }
});

Deno.test("a joining machine becomes a worker and nothing else moves", () => {
  const before = assignRoles(five);
  const after = assignRoles([...five, machine("m6", 64, 200)], before);
  for (const [name, roles] of before) assert.deepEqual(after.get(name), roles);
  assert.deepEqual(after.get("m6"), ["worker"]);
});

Deno.test("a dead coordinator's role moves to a live machine", () => {
  const before = assignRoles(five);
  const [lost] = holders(before, "coordinator").filter((n) => n !== "disk");
  const alive = five.filter((m) => m.name !== lost);
  const after = assignRoles(alive, before);
  assert.equal(after.has(lost), false);
  assert.equal(holders(after, "coordinator").length, 2);
  assert.equal(holders(after, "gateway").length, 1);
  assert.equal(holders(after, "shell").length, 1);
  assert.ok(holders(after, "worker").length >= 1);
  for (const [name, roles] of before) {
    if (name === lost) continue;
    for (const role of roles) {
      if (role === "worker") continue;
      assert.ok(after.get(name)!.includes(role), `${name} lost ${role}`);
    }
  }
});

Deno.test("one or two machines still get every role", () => {
  const one = assignRoles([machine("solo", 16, 100)]);
  assert.deepEqual(one.get("solo"), [
    "storage",
    "coordinator",
    "gateway",
    "shell",
    "worker",
  ]);
  const two = assignRoles([machine("a", 16, 100), machine("b", 16, 100)]);
  assert.equal(holders(two, "coordinator").length, 2);
  assert.equal(holders(two, "worker").length, 1);
});

Deno.test("bad machine specs are refused", () => {
  assert.throws(
    () => assignRoles([{ ...machine("x", 1, 1), memoryBytes: 0 }]),
    /machine x: memoryBytes is 0/,
  );
  assert.throws(
    () => assignRoles([machine("x", 1, 1), machine("x", 2, 2)]),
    /unique/,
  );
});

Deno.test("every cluster shape gets a complete, safe assignment", () => {
  const roleNames: RoleName[] = [
    "storage",
    "coordinator",
    "gateway",
    "shell",
    "worker",
  ];
  const arbitraryMachine = fc.record({
    memoryGiB: fc.integer({ min: 1, max: 512 }),
    diskGiB: fc.integer({ min: 1, max: 20_000 }),
    previous: fc.subarray(roleNames),
  });
  fc.assert(
    fc.property(
      fc.array(arbitraryMachine, { minLength: 1, maxLength: 20 }),
      (list) => {
        const machines: MachineInfo[] = list.map((m, i) =>
          machine(`m${i}`, m.memoryGiB, m.diskGiB)
        );
        const previous: RoleMap = new Map(
          list.map((m, i) => [`m${i}`, m.previous]),
        );
        const roles = assignRoles(machines, previous);
        const n = machines.length;
        for (const m of machines) {
          assert.ok(roles.get(m.name)!.length > 0, `${m.name} has no role`);
        }
        assert.equal(holders(roles, "coordinator").length, Math.min(2, n));
        assert.equal(holders(roles, "storage").length, 1);
        assert.equal(holders(roles, "gateway").length, 1);
        assert.equal(holders(roles, "shell").length, 1);
        assert.ok(holders(roles, "worker").length >= 1);
        if (n >= 3) {
          for (const name of holders(roles, "worker")) {
            const r = roles.get(name)!;
            assert.ok(!r.includes("storage") && !r.includes("shell"), name);
          }
        }
        // Assigning again changes nothing: the result is stable.
        assert.deepEqual(assignRoles(machines, roles), roles);
      },
    ),
    { numRuns: 300, seed: 8 },
  );
});
