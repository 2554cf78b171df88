/**
 * The control socket's request handling: any line that is not a valid
 * request gets an error reply, never an exception.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ControlServer } from "./control.ts";
import { quietLogger } from "./_testing.ts";
import type { BlockDaemon } from "./daemon.ts";

function server(): ControlServer {
  // No request in these tests is valid, so the daemon is never reached.
  const daemon = {} as BlockDaemon;
  return new ControlServer({
    daemon,
    slots: 4,
    register: () => {
      throw new Error("register must not be called");
    },
    unregister: () => {},
    log: quietLogger(),
  });
}

Deno.test("control: malformed lines get an error reply", async () => {
  const control = server();
  for (
    const line of [
      "",
      "{",
      "null",
      "[]",
      '{"op":"attach"}',
      '{"op":"attach","grain":"../x","sizeBytes":4096,"volumeRef":"AA"}',
      '{"op":"attach","grain":"g","sizeBytes":100,"volumeRef":"AA"}',
      '{"op":"detach","grain":"g","extra":1}',
      '{"op":"format","grain":"g"}',
    ]
  ) {
    const reply = await control.answer(line);
    assert.equal(reply.ok, false, line);
    assert.match(String(reply.error), /bad control request/, line);
  }
});

Deno.test("control: random lines never throw", async () => {
  const control = server();
  await fc.assert(
    fc.asyncProperty(fc.string({ maxLength: 200 }), async (line) => {
      const reply = await control.answer(line);
      assert.equal(reply.ok, false);
    }),
    { numRuns: 500, seed: 42 },
  );
});
