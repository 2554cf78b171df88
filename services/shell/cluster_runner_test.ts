// The cluster runner's refusals. Its working path (a real coordinator
// placing the grain on a real worker, and placing it again after that
// worker dies) is covered by tests/cluster/simulated_cluster_test.ts.
import assert from "node:assert/strict";
import { ClusterGrainRunner } from "./cluster_runner.ts";
import { GrainUnavailableError } from "./grain_runner.ts";
import type { Grain } from "./repo/types.ts";

const grain: Grain = {
  id: "g1",
  ownerId: "u1",
  packageId: "0123456789abcdef0123456789abcdef",
  appId: "app",
  title: "Test",
  sizeBytes: 0,
  createdAt: 0,
  lastUsedAt: 0,
  firstStartedAt: 0,
};

/** A loopback port nothing listens on. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test("a missing vat directory is a clear refusal", async () => {
  const runner = new ClusterGrainRunner({
    coordinators: [{ hostname: "127.0.0.1", port: closedPort() }],
    directoryFile: "/nonexistent/directory.json",
  });
  await assert.rejects(
    runner.open(grain, "/nonexistent.spk"),
    (error) =>
      error instanceof GrainUnavailableError &&
      /vat directory/.test(error.message),
  );
  runner.close();
});

Deno.test("without a coordinator that answers, no grain opens", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/directory.json`,
      JSON.stringify({ version: 1, vats: [] }),
    );
    const port = closedPort();
    const runner = new ClusterGrainRunner({
      coordinators: [{ hostname: "127.0.0.1", port }],
      directoryFile: `${dir}/directory.json`,
    });
    await assert.rejects(
      runner.open(grain, `${dir}/none.spk`),
      (error) =>
        error instanceof GrainUnavailableError &&
        error.message.includes(`127.0.0.1:${port}`),
    );
    runner.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
