// A role for agent tests: it records its pid and what its sandbox let it
// do in its role folder, then serves until stopped. `crash=true` makes it
// exit with status 3 right after starting; `print=TEXT` prints TEXT on
// standard output once started (as the shell prints its admin password).
import { z } from "zod";
import { runService } from "../../../services/runtime/service.ts";

await runService({
  role: "test",
  config: z.strictObject({
    roleDir: z.string(),
    vatKeyFile: z.string(),
    directoryFile: z.string(),
    forbiddenFile: z.string().optional(),
    crash: z.boolean().default(false),
    color: z.string().default("none"),
    print: z.string().optional(),
  }),
  async start(config) {
    let forbiddenReadable = false;
    if (config.forbiddenFile !== undefined) {
      try {
        await Deno.readTextFile(config.forbiddenFile);
        forbiddenReadable = true;
      } catch {
        forbiddenReadable = false;
      }
    }
    const record = {
      pid: Deno.pid,
      color: config.color,
      vatKeyReadable: (await Deno.readTextFile(config.vatKeyFile)).length > 0,
      forbiddenReadable,
    };
    await Deno.writeTextFile(
      `${config.roleDir}/started-${Deno.pid}.json`,
      JSON.stringify(record),
    );
    if (config.print !== undefined) console.log(config.print);
    if (config.crash) Deno.exit(3);
    return { stop: () => Promise.resolve() };
  },
});
