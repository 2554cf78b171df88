import assert from "node:assert/strict";
import * as rpc from "./mod.ts";
import { serveTestHost } from "./testdata/test_host.ts";

/** Runs testdata/fd_client.ts on fd 3 with only `--allow-ffi=ffiPath`,
 * in an empty working directory (where a bare library name would be
 * looked for under scoped permissions). */
async function speaksOverFd3(ffiPath: string): Promise<void> {
  const state = serveTestHost();
  const listener = rpc.listenTcp({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept().then((transport) =>
    new rpc.RpcConnection(transport, { bootstrap: state.cap })
  );
  const cwd = Deno.makeTempDirSync({ prefix: "fd-stream-" });
  const client = new URL("./testdata/fd_client.ts", import.meta.url).pathname;
  // bash opens the socket as fd 3 and hands it to the child, the way a
  // grain's supervisor hands it the supervisor connection.
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `exec 3<>/dev/tcp/127.0.0.1/${listener.port}; exec "$0" run ` +
      `--no-prompt --allow-ffi="$2" "$1"`,
      Deno.execPath(),
      client,
      ffiPath,
    ],
    cwd,
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
    Deno.removeSync(cwd, { recursive: true });
  }
}

Deno.test("libc is found by an absolute path", () => {
  const path = rpc.libcPath();
  assert.ok(path.startsWith("/"), path);
  assert.ok(Deno.statSync(path).isFile);
});

Deno.test("a process speaks RPC over fd 3 with --allow-ffi scoped to libc", async () => {
  await speaksOverFd3(rpc.libcPath());
});

Deno.test("a process allowed another name of libc still opens it", async () => {
  // Merged-/usr systems reach the same libc under /lib and /usr/lib; a
  // role may have been given either name.
  const others = rpc.LIBC_CANDIDATES.filter((path) => {
    try {
      return path !== rpc.libcPath() && Deno.statSync(path).isFile;
    } catch {
      return false;
    }
  });
  if (others.length === 0) return;
  await speaksOverFd3(others[0]);
});
