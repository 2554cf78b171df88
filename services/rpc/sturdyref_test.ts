// Vat IDs here come from memoryPipe, standing in for the authenticated
// sealed UDP network (services/rpc/sealed_udp/), which reports real ones.
import assert from "node:assert/strict";
import { Counter } from "../../proto/gen/rpc_test.ts";
import { Restorer } from "../../proto/gen/sturdyref.ts";
import * as rpc from "./mod.ts";
import {
  deriveVatSecret,
  persistentServer,
  restore,
  restoreLocal,
  save,
  serveRestorer,
  SturdyRefError,
  SturdyRefs,
  type SturdyRefTarget,
  TrustZone,
} from "./sturdyref.ts";

function vat(n: number) {
  const seed = new Uint8Array(32).fill(n);
  return { id: new Uint8Array(32).fill(100 + n), seed };
}

const storageA = vat(1);
const storageB = vat(2);
const coordinator = vat(3);
const storageSecret = new Uint8Array(32).fill(77);
const coordinatorSecret = new Uint8Array(32).fill(88);

function refsOf(v: ReturnType<typeof vat>): SturdyRefs {
  const isStorage = v === storageA || v === storageB;
  return new SturdyRefs({
    vatId: v.id,
    vatSecret: deriveVatSecret(v.seed),
    metrics: new rpc.RpcMetrics(),
    zones: [
      {
        zone: TrustZone.STORAGE,
        members: [storageA.id, storageB.id],
        secret: isStorage ? storageSecret : undefined,
      },
      {
        zone: TrustZone.COORDINATORS,
        members: [coordinator.id],
        secret: isStorage ? undefined : coordinatorSecret,
      },
    ],
  });
}

/** A persistent counter store on a vat: objects by ID, restorable. */
function counterStore(refs: SturdyRefs, zone: TrustZone) {
  const values = new Map<string, number>();
  const make = (target: SturdyRefTarget): rpc.Cap => {
    const key = Array.from(
      "objectId" in target ? target.objectId : new Uint8Array(),
    ).join(",");
    if (!values.has(key)) {
      throw new rpc.RpcError("failed", `no object ${key}`);
    }
    return rpc.serveAll([
      new Counter.Server({
        // deno-lint-ignore require-await
        async increment(p, r) {
          values.set(key, values.get(key)! + p.by);
          r.value = values.get(key)!;
        },
      }),
      persistentServer(refs, zone, () => target),
    ]);
  };
  return { values, make };
}

/** Connects `client` to `host`'s restorer, each side seeing the other's ID. */
function connect(
  host: ReturnType<typeof vat>,
  client: ReturnType<typeof vat> | undefined,
  restorerCap: (presenter: Uint8Array | undefined) => rpc.Cap,
) {
  const [a, b] = rpc.memoryPipe({
    aSeesPeerVatId: host.id,
    bSeesPeerVatId: client?.id,
  });
  const bootstrap = restorerCap(b.peerVatId);
  const server = new rpc.RpcConnection(b, { bootstrap });
  const connection = new rpc.RpcConnection(a);
  const restorer = rpc.bootstrap(connection, Restorer);
  return {
    restorer,
    close() {
      connection.close();
      server.close();
      bootstrap.close();
    },
  };
}

Deno.test("a storage ref saved on one storage node restores on another, and never for a coordinator", async () => {
  const refsA = refsOf(storageA);
  const refsB = refsOf(storageB);
  const storeA = counterStore(refsA, TrustZone.STORAGE);
  storeA.values.set("5", 0);
  // Both storage nodes see the same objects (shared storage).
  const storeB = { ...counterStore(refsB, TrustZone.STORAGE) };
  storeB.values.set("5", 0);

  const counter = storeA.make({
    kind: "storage",
    objectId: new Uint8Array([5]),
  });
  const bytes = await save(counter);
  counter.close();

  // Storage node A presents it to storage node B: restored.
  const fromA = connect(
    storageB,
    storageA,
    (presenter) =>
      serveRestorer(refsB, presenter, (target) => storeB.make(target)),
  );
  try {
    const restored = restore(fromA.restorer, bytes, Counter);
    assert.equal(
      (await restored.increment((p) => p.by = 3).promise()).value,
      3,
    );
    rpc.release(restored);
  } finally {
    fromA.close();
  }

  // A coordinator presents the same bytes to B: refused.
  const fromCoordinator = connect(
    storageB,
    coordinator,
    (presenter) =>
      serveRestorer(refsB, presenter, (target) => storeB.make(target)),
  );
  try {
    const refused = restore(fromCoordinator.restorer, bytes, Counter);
    await assert.rejects(
      refused.increment((p) => p.by = 1).promise(),
      (error) =>
        error instanceof rpc.RpcError && error.type === "failed" &&
        /not a member of zone storage/.test(error.message),
    );
    assert.equal(refsB.metrics.restoresRefused, 1);
  } finally {
    fromCoordinator.close();
  }

  // The bytes alone are useless to the coordinator: it cannot open them.
  assert.throws(
    () => refsOf(coordinator).open(bytes, coordinator.id),
    SturdyRefError,
  );
});

Deno.test("a forged or altered SturdyRef is refused", () => {
  const refs = refsOf(storageA);
  const bytes = refs.save(
    { kind: "grain", grainId: "g1", objectId: new Uint8Array([1]) },
    TrustZone.STORAGE,
  );
  assert.equal(refs.open(bytes, storageB.id).kind, "grain");
  const altered = bytes.slice();
  altered[altered.length - 20] ^= 1;
  assert.throws(() => refs.open(altered, storageB.id), SturdyRefError);
  assert.throws(() => refs.open(bytes.subarray(0, 10), storageB.id));
  assert.throws(
    () => refs.open(bytes, undefined),
    /not authenticated/,
  );
  // A vat cannot save into a zone it is not in.
  assert.throws(
    () =>
      refs.save(
        { kind: "external", url: "https://x", token: new Uint8Array(1) },
        TrustZone.COORDINATORS,
      ),
    SturdyRefError,
  );
});

Deno.test("an ephemeral ref survives its vat's restart and no other vat can use it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const statePath = `${dir}/objects.json`;
    // First process of the vat: an object kept in persisted state.
    {
      const refs = refsOf(storageA);
      await Deno.writeTextFile(statePath, JSON.stringify({ "9": 41 }));
      const bytes = refs.save(
        { kind: "ephemeral", objectId: new Uint8Array([9]) },
        TrustZone.VAT,
      );
      await Deno.writeFile(`${dir}/ref`, bytes);
    }
    // The process restarts: same seed, fresh memory.
    const refs = refsOf(storageA);
    const state = JSON.parse(await Deno.readTextFile(statePath));
    const bytes = await Deno.readFile(`${dir}/ref`);
    const handler = (target: SturdyRefTarget) => {
      assert.equal(target.kind, "ephemeral");
      let value: number = state[String(target.objectId[0])];
      return rpc.serve(Counter, {
        // deno-lint-ignore require-await
        async increment(p, r) {
          value += p.by;
          r.value = value;
        },
      });
    };
    const cap = await restoreLocal(refs, bytes, handler);
    const counter = new Counter.Client(cap);
    assert.equal(
      (await counter.increment((p) => p.by = 1).promise()).value,
      42,
    );
    cap.close();

    // Another vat, even one sharing a zone, cannot restore it.
    const other = connect(
      storageA,
      storageB,
      (presenter) => serveRestorer(refs, presenter, handler),
    );
    try {
      await assert.rejects(
        restore(other.restorer, bytes, Counter).increment().promise(),
        /not a member of zone vat/,
      );
    } finally {
      other.close();
    }
    assert.throws(() => refsOf(storageB).open(bytes, storageB.id));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an unauthenticated peer cannot restore anything", async () => {
  const refs = refsOf(storageA);
  const store = counterStore(refs, TrustZone.STORAGE);
  store.values.set("1", 0);
  const bytes = refs.save(
    { kind: "storage", objectId: new Uint8Array([1]) },
    TrustZone.STORAGE,
  );
  const anonymous = connect(
    storageA,
    undefined,
    (presenter) => serveRestorer(refs, presenter, store.make),
  );
  try {
    await assert.rejects(
      restore(anonymous.restorer, bytes, Counter).increment().promise(),
      /not authenticated/,
    );
  } finally {
    anonymous.close();
  }
});
