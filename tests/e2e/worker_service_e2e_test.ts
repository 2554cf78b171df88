// The shell and gateway with the worker role itself (services/worker/
// main.ts, a separate process speaking proto/worker.capnp over RPC): the
// shell installs and starts grains through it, and the gateway opens each
// session's WebSession through it. The app is the worker engineer's
// "notes" HTTP test app, used from the grain's own origin in Chromium;
// its data survives restarting every process. The grain's page is checked
// as Chromium renders it in the frame (a page load's long Accept list and
// cookies cross the worker, which forwards the gateway's WebSession calls
// to the app), and its data through fetch from the grain's own origin.
import assert from "node:assert/strict";
import { buildTestApps } from "../apps/build.ts";
import { fromGrain, grainFrame, launchBrowser, signIn } from "./browser.ts";
import { freePort, RoleProcess, startWebSide } from "./harness.ts";

const SCREENSHOTS = Deno.env.get("BLACKROCK_SCREENSHOTS");
const WORKER_MAIN = new URL("../../services/worker/main.ts", import.meta.url)
  .pathname;

function startWorker(stateDir: string, port: number): RoleProcess {
  return new RoleProcess("worker", [
    Deno.execPath(),
    "run",
    "--no-prompt",
    `--allow-net=127.0.0.1,unix:${stateDir}/api.sock`,
    `--allow-read=${stateDir}`,
    `--allow-write=${stateDir}`,
    "--allow-run=bash,chown,sync,xz",
    "--allow-ffi=/lib/x86_64-linux-gnu/libc.so.6",
    "--allow-sys=systemMemoryInfo,loadavg",
    WORKER_MAIN,
    "--set",
    `stateDir=${stateDir}`,
    "--set",
    `listen.port=${port}`,
    "--set",
    `cgroupName=blackrock-e2e-worker-${Deno.pid}`,
    "--set",
    "uidFirst=73000",
    "--set",
    "uidCount=8",
  ]);
}

Deno.test({
  name:
    "grains run on the worker role: data saved through the browser survives restarting shell, gateway and worker",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const apps = await buildTestApps();
    const dataDir = await Deno.makeTempDir({ prefix: "blackrock-wsvc-e2e-" });
    await Deno.chmod(dataDir, 0o711);
    const workerPort = freePort();
    const options = {
      dataDir,
      port: freePort(),
      controlPort: freePort(),
      token: crypto.randomUUID(),
      workerPort,
    };
    let worker = startWorker(`${dataDir}/worker`, workerPort);
    let web: Awaited<ReturnType<typeof startWebSide>> | undefined;
    const browser = await launchBrowser();
    try {
      await worker.waitForLine(/"event":"listening"/);
      web = await startWebSide(options);
      const page = browser.page;
      await signIn(page, web.url, "admin", web.adminPassword!);
      await page.setInputFiles("#spk", apps.notesSpk);
      await Promise.all([page.waitForURL(/installed=/), page.click("#upload")]);
      await Promise.all([
        page.waitForURL(/\/grain\//),
        page.click(".new-grain"),
      ]);
      const grainUrl = page.url();
      let frame = await grainFrame(page);
      const saved = await fromGrain(frame, "/notes/list", {
        method: "PUT",
        body: "call the plumber",
      });
      assert.equal(saved.status, 201, saved.text);
      await page.reload();
      frame = await grainFrame(page);
      assert.equal((await frame.textContent("body"))?.trim(), "list");
      assert.equal((await fromGrain(frame, "/")).text.trim(), "list");

      // The admin page shows the worker and the grain's live memory.
      await page.goto(`${web.url}/admin`);
      assert.match(
        await page.textContent("#workers") ?? "",
        new RegExp(`worker 127\\.0\\.0\\.1:${workerPort}`),
      );
      assert.match(
        await page.textContent("#all-grains") ?? "",
        /running\s*[\d.]+ (KiB|MiB)/,
      );
      if (SCREENSHOTS) {
        await page.screenshot({ path: `${SCREENSHOTS}/admin-worker.png` });
      }

      await web.stop();
      await worker.stop();
      worker = startWorker(`${dataDir}/worker`, workerPort);
      await worker.waitForLine(/"event":"listening"/);
      web = await startWebSide(options);
      await page.goto(grainUrl);
      frame = await grainFrame(page);
      assert.equal((await frame.textContent("body"))?.trim(), "list");
      await frame.goto(new URL("/notes/list", frame.url()).href);
      assert.equal(
        (await frame.textContent("body"))?.trim(),
        "call the plumber",
      );
      assert.equal(
        (await fromGrain(frame, "/notes/list")).text,
        "call the plumber",
      );
    } finally {
      await browser.close();
      await web?.stop();
      await worker.stop();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
