// An agent in its own process, with the test role as its worker, for the
// test of an agent killed with SIGKILL: usage `agent_process.ts STATE_DIR
// [PRINTED]`. With PRINTED, the roles' output is kept (not discarded) and
// the worker prints PRINTED on its standard output.
import { Logger } from "../../../services/runtime/log.ts";
import { Agent } from "../../../services/agent/agent.ts";

const testRole = new URL("./test_role.ts", import.meta.url).pathname;
const agent = await Agent.start({
  machine: "m1",
  stateDir: Deno.args[0],
  address: "127.0.0.1",
  log: new Logger({ role: "agent", level: "warn" }),
  roleOutput: Deno.args[1] === undefined ? "null" : "inherit",
  catalogue: {
    worker: {
      entry: testRole,
      permissions: (c) => ({ read: [c.roleDir], write: [c.roleDir] }),
      overrides: (c) => [
        `roleDir=${c.roleDir}`,
        `vatKeyFile=${c.vatKeyFile}`,
        `directoryFile=${c.directoryFile}`,
      ],
    },
  },
});
if (agent.report().assignmentVersion === 0) {
  await agent.assign({
    version: 1,
    roles: [{
      role: "worker",
      settings: Deno.args[1] === undefined ? {} : { print: Deno.args[1] },
    }],
  });
}
console.log("ready");
