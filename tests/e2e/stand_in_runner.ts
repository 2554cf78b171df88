/**
 * A STAND-IN for the worker, used only by tests, until grains run on real
 * workers (services/worker/). It answers the shell's runner protocol
 * (services/shell/grain_runner.ts) and serves every grain as a small
 * notes app over plain HTTP, keeping each grain's note in a file under
 * its own folder, so data survives restarting it. It does not sandbox
 * anything and does not run the package's code: it proves the shell and
 * gateway path (sessions, hostnames, routing, permissions), not the
 * worker's.
 *
 * @module
 */

const PAGE = (note: string, permissions: string) =>
  `<!doctype html><html><head><meta charset="utf-8"><title>Notes</title>
<style>body{font:15px system-ui;margin:24px}textarea{width:100%;height:160px}
</style></head><body><h1>Notes</h1>
<p>Permissions: <span id="permissions">${permissions}</span></p>
<textarea id="note">${
    note.replaceAll("&", "&amp;").replaceAll("<", "&lt;")
  }</textarea>
<p><button id="save">Save</button> <span id="status"></span></p>
<p>WebSocket: <span id="ws">connecting</span></p>
<script>
document.getElementById("save").onclick = async () => {
  const r = await fetch("note", { method: "PUT",
    body: document.getElementById("note").value });
  document.getElementById("status").textContent =
    r.ok ? "Saved" : "Refused (" + r.status + ")";
};
const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws");
ws.onopen = () => ws.send("ping");
ws.onmessage = (e) => document.getElementById("ws").textContent = e.data;
ws.onerror = () => document.getElementById("ws").textContent = "error";
</script></body></html>`;

/** A running stand-in; `url` is what the shell's `runner.url` gets. */
export interface StandInRunner {
  url: string;
  stop(): Promise<void>;
}

/** Starts the stand-in on loopback, keeping notes under `dir`. */
export function startStandInRunner(dir: string): StandInRunner {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const url = new URL(request.url);
      let m = /^\/grains\/([A-Za-z0-9_-]+)\/(open|size)$/.exec(url.pathname);
      if (m !== null) {
        const grainDir = `${dir}/${m[1]}`;
        if (m[2] === "open") {
          await request.body?.cancel();
          await Deno.mkdir(grainDir, { recursive: true });
          return Response.json({ backend: `${url.origin}/g/${m[1]}` });
        }
        const size = await Deno.stat(`${grainDir}/note.txt`).then(
          (s) => s.size,
          () => 0,
        );
        return Response.json({ sizeBytes: size });
      }
      m = /^\/grains\/([A-Za-z0-9_-]+)$/.exec(url.pathname);
      if (m !== null && request.method === "DELETE") {
        await Deno.remove(`${dir}/${m[1]}`, { recursive: true }).catch(
          () => {},
        );
        return new Response("deleted");
      }
      m = /^\/g\/([A-Za-z0-9_-]+)(\/.*)$/.exec(url.pathname);
      if (m === null) return new Response("not found", { status: 404 });
      const file = `${dir}/${m[1]}/note.txt`;
      const path = m[2];
      if (path === "/ws") {
        const permissions = request.headers.get("x-sandstorm-permissions");
        const { socket, response } = Deno.upgradeWebSocket(request);
        socket.onmessage = (e) =>
          socket.send(`echo ${e.data} as ${permissions}`);
        return response;
      }
      if (path === "/note" && request.method === "PUT") {
        await Deno.writeTextFile(file, await request.text());
        return new Response("saved");
      }
      if (path === "/" && request.method === "GET") {
        const note = await Deno.readTextFile(file).catch(() => "");
        return new Response(
          PAGE(note, request.headers.get("x-sandstorm-permissions") ?? ""),
          { headers: { "content-type": "text/html; charset=utf-8" } },
        );
      }
      return new Response("not found", { status: 404 });
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    stop: () => server.shutdown(),
  };
}
