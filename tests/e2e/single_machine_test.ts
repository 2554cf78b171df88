// The whole single-machine Blackrock as a person starts it (tasks/start.ts
// over the role table), driven in headless Chromium: the launcher prints
// the URL and the admin password; users, apps and grains survive stopping
// and starting it again.
//
// Every role is the launcher's: the shell starts grains on the worker role
// (services/worker/main.ts, sandboxed grains) over proto/worker.capnp, and
// the gateway relays the grain's hostname to its WebSession there. The app
// is the worker engineer's "notes" test app.
import assert from "node:assert/strict";
import { buildTestApps } from "../apps/build.ts";
import { fromGrain, grainFrame, launchBrowser, signIn } from "./browser.ts";
import { RoleProcess } from "./harness.ts";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** A base port with the next 16 ports free (the table's roles take a few
 * each). */
function freeRange(): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    const listeners: Deno.Listener[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        listeners.push(Deno.listen({ hostname: "127.0.0.1", port: base + i }));
      }
      return base;
    } catch {
      // Taken; try elsewhere.
    } finally {
      for (const l of listeners) l.close();
    }
  }
  throw new Error("no free port range");
}

function startBlackrock(dataDir: string, basePort: number): RoleProcess {
  return new RoleProcess("launcher", [
    Deno.execPath(),
    "run",
    "--allow-read",
    `--allow-write=${dataDir}`,
    "--allow-run",
    "--allow-env",
    "--allow-net=127.0.0.1",
    `${ROOT}/tasks/start.ts`,
    "--data-dir",
    dataDir,
    "--base-port",
    String(basePort),
  ]);
}

Deno.test({
  name:
    "the single-machine Blackrock prints its URL and admin password and keeps users, apps and grain data across a restart",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const apps = await buildTestApps();
    const dataDir = await Deno.makeTempDir({ prefix: "blackrock-single-" });
    // Grains run as their own uids and pass through to their folders.
    await Deno.chmod(dataDir, 0o711);
    const basePort = freeRange();
    let launcher = startBlackrock(dataDir, basePort);
    const browser = await launchBrowser();
    try {
      const [, url] = await launcher.waitForLine(
        /open (https:\/\/localhost:\d+)\/ /,
        60_000,
      );
      await launcher.waitForLine(/grains on the worker at 127\.0\.0\.1:\d+/);
      const [, password] = await launcher.waitForLine(/Password: (\S+)/);
      await launcher.waitForLine(/all roles started/, 60_000);
      // Tokens, password hashes and logs are private to the service user.
      for (
        const path of [
          "shell/config.json",
          "gateway/config.json",
          "shell/shell.sqlite",
          "gateway/nginx",
          "gateway/nginx/access.log",
          "gateway/nginx/server.key",
        ]
      ) {
        const { mode } = await Deno.stat(`${dataDir}/${path}`);
        assert.equal((mode ?? 0o777) & 0o077, 0, `${path} is private`);
      }

      const page = browser.page;
      for (let i = 0;; i++) {
        const ok = await page.goto(`${url}/login`).then(
          (r) => r?.status() === 200,
          () => false,
        );
        if (ok) break;
        assert.ok(i < 50, "the shell answers through the gateway");
        await new Promise((r) => setTimeout(r, 200));
      }
      await signIn(page, url, "admin", password);
      await page.setInputFiles("#spk", apps.notesSpk);
      await Promise.all([page.waitForURL(/installed=/), page.click("#upload")]);
      await Promise.all([
        page.waitForURL(/\/grain\//),
        page.click(".new-grain"),
      ]);
      const grainUrl = page.url();
      let frame = await grainFrame(page);
      const saved = await fromGrain(frame, "/notes/todo", {
        method: "PUT",
        body: "water the plants",
      });
      assert.equal(saved.status, 201, saved.text);
      await page.reload();
      frame = await grainFrame(page);
      assert.equal((await frame.textContent("body"))?.trim(), "todo");
      await page.fill("#rename-title", "Kept across restarts");
      await Promise.all([page.waitForURL(grainUrl), page.click("#rename")]);
      await page.goto(`${url}/admin`);
      assert.match(await page.textContent("#replicas") ?? "", /shell/);

      // Stop everything and start again on the same data folder.
      await launcher.stop();
      assert.equal((await launcher.child.status).code, 0, launcher.output);
      launcher = startBlackrock(dataDir, basePort);
      await launcher.waitForLine(/all roles started/, 60_000);
      assert.doesNotMatch(launcher.output, /Password:/, "admin made once");

      for (let i = 0;; i++) {
        const response = await page.goto(url).catch(() => undefined);
        if (response?.status() === 200) break;
        assert.ok(i < 50, "the shell answers again after the restart");
        await new Promise((r) => setTimeout(r, 200));
      }
      // The sign-in session survived too: the home page shows the grain.
      assert.ok(
        await page.isVisible("a.grain-link:text('Kept across restarts')"),
      );
      assert.equal(await page.locator(".app .title").textContent(), "Notes");
      await page.goto(grainUrl);
      frame = await grainFrame(page);
      assert.equal(
        (await fromGrain(frame, "/notes/todo")).text,
        "water the plants",
      );
    } finally {
      await browser.close();
      await launcher.stop();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
