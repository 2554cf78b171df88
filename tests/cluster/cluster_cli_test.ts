// `deno task cluster remove` given no machine, or one the cluster does not
// have, answers with one clear line and status 2, never a stack trace.
// The cluster's state file is real but no cluster runs: these mistakes
// are caught before anything is asked of the master (a machine the master
// no longer knows is covered in simulated_cluster_test.ts).
import assert from "node:assert/strict";

const clusterTool = new URL("../../tasks/cluster.ts", import.meta.url)
  .pathname;

async function runTool(args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", clusterTool, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: output.code,
    text: new TextDecoder().decode(output.stdout) +
      new TextDecoder().decode(output.stderr),
  };
}

Deno.test("cluster remove without a known machine is a usage error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluster-cli-" });
  try {
    await Deno.writeTextFile(
      `${dir}/state.json`,
      JSON.stringify({
        dir,
        clusterId: "0123456789abcdef",
        namespaces: ["unused-m1", "unused-m2", "unused-m3"],
        addresses: ["10.77.1.1", "10.77.1.2", "10.77.1.3"],
        active: [1, 2],
        masterAddress: "10.77.1.1:7001",
      }),
    );
    for (
      const [args, expected] of [
        [["remove", "--dir", dir], /which machine\?/],
        [["remove", "m9", "--dir", dir], /machine "m9" is not in the cluster/],
        [["remove", "--dir", dir, "m3"], /machine "m3" is not in the cluster/],
      ] as const
    ) {
      const { code, text } = await runTool([...args]);
      assert.equal(code, 2, text);
      assert.match(text, expected);
      assert.match(text, /its machines: m1, m2/);
      assert.match(text, /usage: deno task cluster remove NAME/);
      assert.doesNotMatch(text, /\n\s+at /, "no stack trace");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
