import assert from "node:assert/strict";
import * as rpc from "./mod.ts";
import { serveTestHost } from "./testdata/test_host.ts";

Deno.test("a process speaks RPC over an inherited fd 3", async () => {
  const state = serveTestHost();
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept().then((transport) =>
    new rpc.RpcConnection(transport, { bootstrap: state.cap })
  );
  const client = new URL("./testdata/fd_client.ts", import.meta.url).pathname;
  // bash opens the socket as fd 3 and hands it to the child, the way a
  // grain's supervisor hands it the supervisor connection.
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `exec 3<>/dev/tcp/127.0.0.1/${listener.port}; exec "$0" run ` +
      `--allow-ffi "$1"`,
      Deno.execPath(),
      client,
    ],
    stdout: "piped",
    stderr: "piped",
  });
  let server: rpc.RpcConnection | undefined;
  try {
    const output = await child.output();
    server = await accepted;
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, stderr);
    assert.equal(new TextDecoder().decode(output.stdout).trim(), "ok 42 8");
    await server.closed;
    assert.equal(state.live(), 0, "the child's counter was released");
  } finally {
    server?.close();
    listener.close();
    state.cap.close();
  }
});
