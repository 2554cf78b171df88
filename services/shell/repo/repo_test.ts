// One specification of the shell's repository, run against both backends:
// SQLite in a temporary file, and MongoDB through the npm driver against
// CongoDB (npm @push.rocks/smartmongo), the only wire-compatible MongoDB
// stand-in that runs here.
//
// What CongoDB cannot check, and so is NOT proven for the MongoDB backend:
// - unique indexes: CongoDB accepts them but does not enforce them, so two
//   racing inserts of one user name are not tested (the sequential
//   duplicate below is refused by the upsert logic, not by the index);
// - transactions: the backend uses none (see mongo.ts), so nothing here
//   depends on rollback;
// - change streams: not used by the backend.
import assert from "node:assert/strict";
import { congodb } from "@push.rocks/smartmongo";
import { MongoRepository } from "./mongo.ts";
import { SqliteRepository } from "./sqlite.ts";
import { ConflictError, type Grain, type ShellRepository } from "./types.ts";

type Opener = () => Promise<
  {
    repo: ShellRepository;
    reopen(): Promise<ShellRepository>;
    done(): Promise<void>;
  }
>;

async function openSqlite() {
  const dir = await Deno.makeTempDir({ prefix: "shell-repo-" });
  const path = `${dir}/shell.sqlite`;
  return {
    repo: new SqliteRepository(path) as ShellRepository,
    reopen: () => Promise.resolve(new SqliteRepository(path)),
    done: () => Deno.remove(dir, { recursive: true }),
  };
}

async function openMongo() {
  const server = new congodb.CongoServer({ port: 0, host: "127.0.0.1" });
  await server.start();
  // deno-lint-ignore no-explicit-any
  const port = (server as any).server.address().port as number;
  const url = `mongodb://127.0.0.1:${port}/?directConnection=true`;
  return {
    repo: await MongoRepository.connect(url, "shell") as ShellRepository,
    reopen: () => MongoRepository.connect(url, "shell"),
    done: () => server.stop(),
  };
}

const backends: [string, Opener][] = [
  ["sqlite", openSqlite],
  ["mongodb", openMongo],
];

function grain(id: string, ownerId: string, sizeBytes = 0): Grain {
  return {
    id,
    ownerId,
    packageId: "pkg1",
    appId: "app1",
    title: `Grain ${id}`,
    sizeBytes,
    createdAt: 1000 + id.length,
    lastUsedAt: 1000,
    firstStartedAt: 0,
  };
}

function user(id: string, name: string) {
  return {
    id,
    name,
    displayName: name.toUpperCase(),
    passwordHash: "scrypt$x",
    isAdmin: false,
    quotaBytes: 1 << 30,
    createdAt: 1,
  };
}

for (const [backend, open] of backends) {
  const test = (name: string, body: (repo: ShellRepository) => Promise<void>) =>
    Deno.test(`${backend}: ${name}`, async () => {
      const { repo, done } = await open();
      try {
        await body(repo);
      } finally {
        await repo.close();
        await done();
      }
    });

  test("users are found by id and name, and names are unique", async (repo) => {
    await repo.createUser(user("u1", "alice"));
    await repo.createUser(user("u2", "bob"));
    assert.equal((await repo.getUser("u1"))?.name, "alice");
    assert.equal((await repo.getUserByName("bob"))?.id, "u2");
    assert.equal(await repo.getUserByName("carol"), undefined);
    await assert.rejects(
      repo.createUser(user("u3", "alice")),
      (e) => e instanceof ConflictError && /alice/.test(e.message),
    );
    assert.equal(await repo.countUsers(), 2);
    assert.deepEqual((await repo.listUsers()).map((u) => u.id), ["u1", "u2"]);
    await repo.setUserQuota("u1", 42);
    assert.equal((await repo.getUser("u1"))?.quotaBytes, 42);
    assert.deepEqual(await repo.getUser("u2"), user("u2", "bob"));
  });

  test("login sessions expire and can be deleted", async (repo) => {
    const base = { userId: "u1", csrfToken: "c", createdAt: 0 };
    await repo.createLoginSession({ ...base, id: "s1", expiresAt: 100 });
    await repo.createLoginSession({ ...base, id: "s2", expiresAt: 300 });
    assert.equal((await repo.getLoginSession("s1"))?.csrfToken, "c");
    assert.equal(await repo.deleteExpiredLoginSessions(200), 1);
    assert.equal(await repo.getLoginSession("s1"), undefined);
    await repo.deleteLoginSession("s2");
    assert.equal(await repo.getLoginSession("s2"), undefined);
  });

  test("packages are kept once and installs are per user", async (repo) => {
    const info = {
      id: "pkg1",
      appId: "app1",
      title: "Notes",
      version: "1.0",
      newGrainTitle: "New note",
      roles: [{ title: "editor", canWrite: true }, {
        title: "viewer",
        canWrite: false,
      }],
      sizeBytes: 123,
      uploadedBy: "u1",
      createdAt: 5,
    };
    assert.equal(await repo.putPackage(info), true);
    assert.equal(await repo.putPackage({ ...info, title: "Other" }), false);
    assert.deepEqual(await repo.getPackage("pkg1"), info);
    assert.equal((await repo.listPackages()).length, 1);

    const install = { userId: "u1", packageId: "pkg1", appId: "app1" };
    await repo.install({ ...install, createdAt: 1 });
    await repo.install({ ...install, createdAt: 2 });
    assert.equal((await repo.listInstalls("u1")).length, 1);
    assert.equal((await repo.listInstalls("u2")).length, 0);
    await repo.uninstall("u1", "pkg1");
    assert.equal((await repo.listInstalls("u1")).length, 0);
    const declared = [
      { title: "reader", canWrite: true, permissions: [false, true] },
      { title: "old", canWrite: true, permissions: [true], obsolete: true },
    ];
    await repo.setPackageRoles("pkg1", declared);
    assert.deepEqual((await repo.getPackage("pkg1"))?.roles, declared);
    await repo.deletePackage("pkg1");
    assert.equal(await repo.getPackage("pkg1"), undefined);
  });

  test("grains are listed per owner, renamed and sized", async (repo) => {
    await repo.createGrain(grain("g1", "u1", 100));
    await repo.createGrain(grain("g22", "u1", 50));
    await repo.createGrain(grain("g333", "u2", 7));
    assert.deepEqual(
      (await repo.listGrainsOwnedBy("u1")).map((g) => g.id),
      ["g1", "g22"],
    );
    assert.equal((await repo.listAllGrains()).length, 3);
    await repo.renameGrain("g1", "Shopping list");
    assert.equal((await repo.getGrain("g1"))?.title, "Shopping list");
    assert.equal(await repo.storageUsedBy("u1"), 150);
    await repo.setGrainSize("g22", 1000);
    assert.equal(await repo.storageUsedBy("u1"), 1100);
    assert.equal(await repo.storageUsedBy("nobody"), 0);
    await repo.touchGrain("g1", 9999);
    assert.equal((await repo.getGrain("g1"))?.lastUsedAt, 9999);
    assert.equal((await repo.getGrain("g1"))?.firstStartedAt, 0);
    await repo.markGrainStarted("g1", 500);
    await repo.markGrainStarted("g1", 600);
    assert.equal((await repo.getGrain("g1"))?.firstStartedAt, 500);
  });

  test("deleting a grain removes its shares, claims and sessions", async (repo) => {
    await repo.createGrain(grain("g1", "u1"));
    await repo.createGrain(grain("g2", "u1"));
    for (const g of ["g1", "g2"]) {
      await repo.createShare({
        id: `share-${g}`,
        grainId: g,
        createdBy: "u1",
        roleIndex: 1,
        label: "",
        createdAt: 1,
        revoked: false,
      });
      await repo.addClaim({
        userId: "u2",
        grainId: g,
        shareId: `share-${g}`,
        createdAt: 1,
      });
      await repo.createGrainSession({
        id: `sess-${g}`,
        grainId: g,
        userId: "u2",
        hostLabel: `host-${g}`,
        roleIndex: 1,
        canWrite: false,
        backend: "127.0.0.1:1",
        createdAt: 1,
        expiresAt: 10,
      });
    }
    await repo.deleteGrain("g1");
    assert.equal(await repo.getGrain("g1"), undefined);
    assert.equal(await repo.getShare("share-g1"), undefined);
    assert.equal(await repo.getClaim("u2", "g1"), undefined);
    assert.equal(await repo.getGrainSessionByHost("host-g1"), undefined);
    assert.ok(await repo.getShare("share-g2"));
    assert.ok(await repo.getClaim("u2", "g2"));
    assert.ok(await repo.getGrainSessionByHost("host-g2"));
  });

  test("shares can be revoked and claims are idempotent", async (repo) => {
    await repo.createShare({
      id: "s1",
      grainId: "g1",
      createdBy: "u1",
      roleIndex: 0,
      label: "for bob",
      createdAt: 3,
      revoked: false,
    });
    assert.equal((await repo.listShares("g1"))[0].label, "for bob");
    await repo.revokeShare("s1");
    assert.equal((await repo.getShare("s1"))?.revoked, true);
    const claim = { userId: "u2", grainId: "g1", shareId: "s1", createdAt: 4 };
    await repo.addClaim(claim);
    await repo.addClaim({ ...claim, createdAt: 5 });
    assert.deepEqual(await repo.listClaims("u2"), [claim]);
  });

  test("grain sessions are found by host label and expire", async (repo) => {
    const base = {
      grainId: "g1",
      userId: "u1",
      roleIndex: 0,
      canWrite: true,
      backend: "127.0.0.1:9",
      createdAt: 1,
    };
    await repo.createGrainSession({
      ...base,
      id: "a",
      hostLabel: "h1",
      expiresAt: 10,
    });
    await repo.createGrainSession({
      ...base,
      id: "b",
      hostLabel: "h2",
      expiresAt: 30,
    });
    await assert.rejects(
      repo.createGrainSession({
        ...base,
        id: "c",
        hostLabel: "h1",
        expiresAt: 1,
      }),
      ConflictError,
    );
    assert.equal((await repo.getGrainSessionByHost("h2"))?.id, "b");
    const expired = await repo.deleteExpiredGrainSessions(20);
    assert.deepEqual(expired.map((s) => s.id), ["a"]);
    assert.deepEqual((await repo.listGrainSessions()).map((s) => s.id), ["b"]);
    await repo.deleteGrainSession("b");
    assert.equal((await repo.listGrainSessions()).length, 0);
  });

  test("replicas heartbeat and age out of the list", async (repo) => {
    const replica = {
      id: "shell-1",
      role: "shell",
      address: "127.0.0.1:1",
      hostname: "m1",
      pid: 10,
      rssBytes: 5,
      startedAt: 1,
      lastSeenAt: 100,
    };
    await repo.heartbeat(replica);
    await repo.heartbeat({ ...replica, rssBytes: 6, lastSeenAt: 200 });
    await repo.heartbeat({ ...replica, id: "shell-2", lastSeenAt: 50 });
    assert.deepEqual(await repo.listReplicas(150), [{
      ...replica,
      rssBytes: 6,
      lastSeenAt: 200,
    }]);
    await repo.removeReplica("shell-1");
    assert.equal((await repo.listReplicas(0)).length, 1);
  });

  test("settings keep the first value written", async (repo) => {
    assert.equal(await repo.getSetting("cookieKey"), undefined);
    assert.equal(await repo.initSetting("cookieKey", "one"), "one");
    assert.equal(await repo.initSetting("cookieKey", "two"), "one");
    assert.equal(await repo.getSetting("cookieKey"), "one");
  });

  Deno.test(`${backend}: data survives closing and reopening`, async () => {
    const { repo, reopen, done } = await open();
    try {
      await repo.createUser(user("u1", "alice"));
      await repo.createGrain(grain("g1", "u1", 9));
      await repo.close();
      const again = await reopen();
      try {
        assert.equal((await again.getUserByName("alice"))?.id, "u1");
        assert.equal(await again.storageUsedBy("u1"), 9);
      } finally {
        await again.close();
      }
    } finally {
      await done();
    }
  });
}

Deno.test("sqlite: a database from before firstStartedAt is migrated", async () => {
  const dir = await Deno.makeTempDir({ prefix: "shell-repo-migrate-" });
  try {
    const { DatabaseSync } = await import("node:sqlite");
    const old = new DatabaseSync(`${dir}/shell.sqlite`);
    old.exec(`create table grains (
      id text primary key, owner_id text not null, package_id text not null,
      app_id text not null, title text not null, size_bytes integer not null,
      created_at integer not null, last_used_at integer not null)`);
    old.exec(`insert into grains values
      ('g1', 'u1', 'p', 'a', 'Old grain', 5, 1, 2)`);
    old.close();
    const repo = new SqliteRepository(`${dir}/shell.sqlite`);
    try {
      assert.equal((await repo.getGrain("g1"))?.firstStartedAt, 0);
      await repo.markGrainStarted("g1", 7);
      assert.equal((await repo.getGrain("g1"))?.firstStartedAt, 7);
    } finally {
      await repo.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sqlite: replicas opening one new database at once all succeed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "shell-repo-race-" });
  const path = `${dir}/shell.sqlite`;
  const workers = Array.from(
    { length: 4 },
    () =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          `import { SqliteRepository } from ${
            JSON.stringify(new URL("./sqlite.ts", import.meta.url).href)
          };
         const repo = new SqliteRepository(${JSON.stringify(path)});
         await repo.initSetting("x", String(Deno.pid));
         await repo.close();`,
        ],
        cwd: new URL("../../..", import.meta.url).pathname,
        stdout: "piped",
        stderr: "piped",
      }).output(),
  );
  try {
    const results = await Promise.all(workers);
    for (const result of results) {
      assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
    }
    const repo = new SqliteRepository(path);
    assert.ok(await repo.getSetting("x"));
    await repo.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
