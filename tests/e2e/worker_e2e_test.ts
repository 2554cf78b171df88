// The shell and gateway with real grains: the worker engineer's "notes"
// test app (tests/apps/http, an HTTP app behind the grain-side bridge),
// packed as a real .spk, uploaded through the browser, run by the
// worker's grain manager in its sandbox, and used from the grain's own
// origin in headless Chromium. The worker service itself does not exist
// yet; worker_runner.ts wires the shell's runner protocol to the worker's
// grain manager in the test process.
import assert from "node:assert/strict";
import { buildTestApps } from "../apps/build.ts";
import { fromGrain, grainFrame, launchBrowser, signIn } from "./browser.ts";
import { freePort, startWebSide } from "./harness.ts";
import { startWorkerRunner } from "./worker_runner.ts";

Deno.test({
  name:
    "a real app in a sandboxed grain keeps data saved through the browser across a reload and a restart",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const apps = await buildTestApps();
    const dataDir = await Deno.makeTempDir({ prefix: "blackrock-worker-e2e-" });
    // Grains run as their own uids and must pass through to their package
    // and volume under the worker's state folder.
    await Deno.chmod(dataDir, 0o711);
    const options = {
      dataDir,
      port: freePort(),
      controlPort: freePort(),
      token: crypto.randomUUID(),
    };
    const uidFirst = 71000;
    let runner = await startWorkerRunner(`${dataDir}/worker`, uidFirst);
    let web = await startWebSide({ ...options, runnerUrl: runner.url });
    const browser = await launchBrowser();
    const visitor = await launchBrowser();
    try {
      const page = browser.page;
      await signIn(page, web.url, "admin", web.adminPassword!);
      await page.setInputFiles("#spk", apps.notesSpk);
      await Promise.all([page.waitForURL(/installed=/), page.click("#upload")]);
      assert.equal(await page.locator(".app .title").textContent(), "Notes");
      await Promise.all([
        page.waitForURL(/\/grain\//),
        page.click(".new-grain"),
      ]);
      const grainUrl = page.url();
      assert.equal(await page.textContent("#grain-title"), "Untitled notebook");

      let frame = await grainFrame(page);
      const saved = await fromGrain(frame, "/notes/shopping", {
        method: "PUT",
        body: "milk, eggs, bread",
      });
      assert.equal(saved.status, 201, saved.text);

      await page.reload();
      frame = await grainFrame(page);
      assert.equal((await frame.textContent("body"))?.trim(), "shopping");
      assert.equal(
        (await fromGrain(frame, "/notes/shopping")).text,
        "milk, eggs, bread",
      );

      // Restart everything: the grain stops with its worker and starts
      // again from its volume.
      await web.stop();
      await runner.stop();
      runner = await startWorkerRunner(`${dataDir}/worker`, uidFirst);
      web = await startWebSide({ ...options, runnerUrl: runner.url });
      await page.goto(grainUrl);
      frame = await grainFrame(page);
      assert.equal(
        (await fromGrain(frame, "/notes/shopping")).text,
        "milk, eggs, bread",
      );
      await page.goto(web.url);
      assert.match(
        await page.textContent("#storage-used") ?? "",
        /^\d+(\.\d+)? (bytes|KiB|MiB) of 10 GiB used$/,
      );

      // A viewer link opened without an account reads but cannot write.
      await page.goto(grainUrl);
      await page.click("#share");
      await page.selectOption("#role", { label: "viewer (read only)" });
      await Promise.all([
        page.waitForURL(/#link=|\/grain\/[^/#]+$/),
        page.click("#make-link"),
      ]);
      const link = await (await page.waitForSelector("#share-url:visible"))
        .textContent();
      await visitor.page.goto(link!);
      const viewerFrame = await grainFrame(visitor.page);
      assert.equal(
        (await fromGrain(viewerFrame, "/notes/shopping")).text,
        "milk, eggs, bread",
      );
      const write = await fromGrain(viewerFrame, "/notes/shopping", {
        method: "PUT",
        body: "overwritten",
      });
      assert.equal(write.status, 403);
      assert.equal(
        (await fromGrain(viewerFrame, "/notes/shopping")).text,
        "milk, eggs, bread",
      );
    } finally {
      await visitor.close();
      await browser.close();
      await web.stop();
      await runner.stop();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
