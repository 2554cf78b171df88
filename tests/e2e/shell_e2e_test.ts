// End-to-end tests of the shell and gateway in headless Chromium: real
// nginx with TLS, the real gateway and shell processes with their
// production permissions, and a real browser.
//
// Grains are served by the stand-in runner (stand_in_runner.ts), a test
// fake for the worker that does not exist yet on this branch: it proves
// the shell/gateway path (sessions on random hostnames, routing,
// permissions, WebSockets), not the sandbox.
import assert from "node:assert/strict";
import { congodb } from "@push.rocks/smartmongo";
import type { Frame, Page } from "playwright-core";
import {
  grainFrame as openedGrainFrame,
  launchBrowser,
  signIn,
} from "./browser.ts";
import { freePort, startWebSide, type WebSideOptions } from "./harness.ts";
import { startStandInRunner } from "./stand_in_runner.ts";
import { buildNotesSpk } from "./test_app.ts";

const SCREENSHOTS = Deno.env.get("BLACKROCK_SCREENSHOTS");

async function screenshot(page: Page, name: string) {
  if (SCREENSHOTS) {
    await page.screenshot({ path: `${SCREENSHOTS}/${name}.png` });
  }
}

async function withWorld(
  body: (world: {
    dataDir: string;
    options: WebSideOptions;
    spkPath: string;
  }) => Promise<void>,
) {
  const dataDir = await Deno.makeTempDir({ prefix: "blackrock-e2e-" });
  const spkPath = `${dataDir}/notes.spk`;
  try {
    await Deno.writeFile(spkPath, await buildNotesSpk());
    await body({
      dataDir,
      spkPath,
      options: {
        dataDir,
        port: freePort(),
        controlPort: freePort(),
        token: crypto.randomUUID(),
      },
    });
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

async function uploadApp(page: Page, spkPath: string) {
  await page.setInputFiles("#spk", spkPath);
  await Promise.all([
    page.waitForURL(/installed=/),
    page.click("#upload"),
  ]);
}

/** Creates a share link from the grain page's dialog and returns it. */
async function makeShareLink(page: Page, role: string, label: string) {
  await page.click("#share");
  await page.selectOption("#role", { label: role });
  await page.fill("#label", label);
  await Promise.all([
    page.waitForURL(/#link=|\/grain\/[^/#]+$/),
    page.click("#make-link"),
  ]);
  const shown = await page.waitForSelector("#share-url:visible");
  const link = await shown.textContent();
  assert.match(
    link ?? "",
    /^https:\/\/localhost:\d+\/shared\/[A-Za-z0-9_-]{32}$/,
  );
  return link!;
}

async function grainFrame(page: Page): Promise<Frame> {
  const frame = await openedGrainFrame(page);
  await frame.waitForSelector("#note");
  return frame;
}

Deno.test({
  name:
    "a user signs in, installs an app, saves data in a grain, and finds it after a reload and a restart",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withWorld(async ({ dataDir, options, spkPath }) => {
      let runner = startStandInRunner(`${dataDir}/grains`);
      // Two shell replicas over one SQLite file (the single-machine
      // database), behind one gateway.
      let web = await startWebSide({
        ...options,
        runnerUrl: runner.url,
        shells: 2,
      });
      const browser = await launchBrowser();
      try {
        assert.ok(web.adminPassword, "first start prints the admin password");
        const page = browser.page;
        await page.goto(web.url);
        assert.match(page.url(), /\/login/);
        await screenshot(page, "login");
        await signIn(page, web.url, "admin", web.adminPassword);
        await screenshot(page, "home-empty");

        await uploadApp(page, spkPath);
        assert.match(
          await page.textContent("[role=alert]") ?? "",
          /Notes is installed/,
        );
        await screenshot(page, "home-installed");

        await Promise.all([
          page.waitForURL(/\/grain\//),
          page.click(".new-grain"),
        ]);
        const grainUrl = page.url();
        let frame = await grainFrame(page);
        // The app runs on its own random hostname, not the shell's.
        const frameHost = new URL(frame.url()).host;
        assert.notEqual(frameHost, new URL(web.url).host);
        assert.match(frameHost, /^[0-9a-v]{26}\.localhost:\d+$/);
        await frame.waitForSelector("#ws:text('echo ping as write,view')");
        await frame.fill("#note", "milk, eggs, bread");
        await frame.click("#save");
        await frame.waitForSelector("#status:text('Saved')");
        await screenshot(page, "grain");

        await page.reload();
        frame = await grainFrame(page);
        assert.equal(await frame.inputValue("#note"), "milk, eggs, bread");
        // Each opening gets a fresh hostname.
        assert.notEqual(new URL(frame.url()).host, frameHost);

        // Rename shows in the list.
        await page.fill("#rename-title", "Shopping list");
        await Promise.all([page.waitForURL(grainUrl), page.click("#rename")]);
        assert.equal(await page.textContent("#grain-title"), "Shopping list");

        // Restart every process: gateway, nginx, shells and the runner.
        await web.stop();
        await runner.stop();
        runner = startStandInRunner(`${dataDir}/grains`);
        web = await startWebSide({
          ...options,
          runnerUrl: runner.url,
          shells: 2,
        });
        assert.equal(web.adminPassword, undefined, "admin is created once");

        await page.goto(web.url);
        assert.ok(await page.isVisible("a.grain-link:text('Shopping list')"));
        await Promise.all([
          page.waitForURL(grainUrl),
          page.click("a.grain-link:text('Shopping list')"),
        ]);
        frame = await grainFrame(page);
        assert.equal(await frame.inputValue("#note"), "milk, eggs, bread");
        await page.goto(web.url);
        assert.match(
          await page.textContent("#storage-used") ?? "",
          /^17 bytes of 10 GiB used$/,
        );
        await screenshot(page, "home-after-restart");

        // Deleting the grain removes it and its data.
        await page.goto(grainUrl);
        page.once("dialog", (dialog) => dialog.accept());
        await Promise.all([
          page.waitForURL(`${web.url}/`),
          page.click("#delete"),
        ]);
        assert.equal(await page.isVisible("a.grain-link"), false);
        await assert.rejects(
          Deno.stat(`${dataDir}/grains`).then(async () => {
            for await (const entry of Deno.readDir(`${dataDir}/grains`)) {
              throw new Error(`left behind: ${entry.name}`);
            }
            throw new Deno.errors.NotFound("empty");
          }),
          Deno.errors.NotFound,
        );
      } finally {
        await browser.close();
        await web.stop();
        await runner.stop();
      }
    });
  },
});

Deno.test({
  name:
    "a second user cannot open a grain without a share link, and a viewer link cannot write",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withWorld(async ({ dataDir, options, spkPath }) => {
      const runner = startStandInRunner(`${dataDir}/grains`);
      // Two shell replicas over one MongoDB database, behind one gateway.
      // The database is CongoDB, the wire-compatible stand-in (see
      // services/shell/repo/repo_test.ts for what it cannot check).
      const mongo = new congodb.CongoServer({ port: 0, host: "127.0.0.1" });
      await mongo.start();
      // deno-lint-ignore no-explicit-any
      const mongoPort = (mongo as any).server.address().port as number;
      const web = await startWebSide({
        ...options,
        runnerUrl: runner.url,
        shells: 2,
        database: {
          kind: "mongodb",
          url: `mongodb://127.0.0.1:${mongoPort}/?directConnection=true`,
        },
      }).catch(async (error) => {
        await mongo.stop();
        throw error;
      });
      const alice = await launchBrowser();
      const bob = await launchBrowser();
      const stranger = await launchBrowser();
      try {
        const page = alice.page;
        await signIn(page, web.url, "admin", web.adminPassword!);
        await page.goto(`${web.url}/admin`);
        await page.fill("#new-user-name", "bob");
        await page.click("#create-user");
        const bobPassword = await page.textContent("#new-password");
        assert.ok(bobPassword);
        // Both shell replicas and the gateway show on the admin page.
        const replicas = await page.textContent("#replicas") ?? "";
        assert.equal(replicas.match(/shell/g)?.length, 2, replicas);
        assert.match(replicas, /gateway/);
        await screenshot(page, "admin");

        await page.goto(web.url);
        await uploadApp(page, spkPath);
        await Promise.all([
          page.waitForURL(/\/grain\//),
          page.click(".new-grain"),
        ]);
        const grainUrl = page.url();
        const frame = await grainFrame(page);
        await frame.fill("#note", "the owner's words");
        await frame.click("#save");
        await frame.waitForSelector("#status:text('Saved')");

        // Bob, signed in, cannot open the grain by its URL.
        await signIn(bob.page, web.url, "bob", bobPassword);
        const refused = await bob.page.goto(grainUrl);
        assert.equal(refused?.status(), 403);
        assert.match(
          await bob.page.textContent("h1") ?? "",
          /You cannot open this grain/,
        );
        assert.equal(await bob.page.isVisible("#grain-frame"), false);

        // A viewer link lets Bob see the grain but not change it.
        const viewerLink = await makeShareLink(
          page,
          "viewer (read only)",
          "for bob",
        );
        await screenshot(page, "share");

        await bob.page.goto(viewerLink);
        await bob.page.waitForURL(grainUrl);
        const bobFrame = await grainFrame(bob.page);
        assert.equal(await bobFrame.inputValue("#note"), "the owner's words");
        assert.equal(await bobFrame.textContent("#permissions"), "view");
        await bobFrame.fill("#note", "bob was here");
        await bobFrame.click("#save");
        await bobFrame.waitForSelector("#status:text('Refused (403)')");
        await screenshot(bob.page, "viewer");
        await bob.page.goto(web.url);
        assert.ok(await bob.page.isVisible("#shared a.grain-link"));

        // The owner still sees the original words.
        await page.goto(grainUrl);
        assert.equal(
          await (await grainFrame(page)).inputValue("#note"),
          "the owner's words",
        );

        // An editor link, opened without an account, may write.
        const editorLink = await makeShareLink(page, "editor", "anyone");
        await stranger.page.goto(editorLink);
        const strangerFrame = await grainFrame(stranger.page);
        await strangerFrame.fill("#note", "edited by link");
        await strangerFrame.click("#save");
        await strangerFrame.waitForSelector("#status:text('Saved')");

        // A made-up share link is refused.
        const bogus = await stranger.page.goto(`${web.url}/shared/notAToken`);
        assert.equal(bogus?.status(), 404);
      } finally {
        await Promise.all([alice.close(), bob.close(), stranger.close()]);
        await web.stop();
        await runner.stop();
        await mongo.stop();
      }
    });
  },
});

Deno.test({
  name:
    "bad uploads (not an .spk, corrupt, too big) are refused with a clear message and leave nothing behind",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withWorld(async ({ dataDir, options, spkPath }) => {
      const spk = await Deno.readFile(spkPath);
      const maxUploadBytes = spk.length + 4096;
      const web = await startWebSide({ ...options, maxUploadBytes });
      const browser = await launchBrowser();
      try {
        const page = browser.page;
        await signIn(page, web.url, "admin", web.adminPassword!);

        const notSpk = `${dataDir}/photo.spk`;
        await Deno.writeTextFile(notSpk, "this is a text file, not a package");
        const corrupt = `${dataDir}/corrupt.spk`;
        const damaged = spk.slice();
        for (let i = 40; i < damaged.length - 40; i += 7) damaged[i] ^= 0x5a;
        await Deno.writeFile(corrupt, damaged);
        const tooBig = `${dataDir}/big.spk`;
        const big = new Uint8Array(maxUploadBytes + 1);
        big.set(spk.subarray(0, 8));
        await Deno.writeFile(tooBig, big);

        const cases: [string, RegExp][] = [
          [notSpk, /not a Sandstorm package/],
          [corrupt, /damaged|signature/],
          [tooBig, /larger than the upload limit/],
        ];
        for (const [path, message] of cases) {
          await page.goto(web.url);
          await page.setInputFiles("#spk", path);
          await page.click("#upload");
          const status = await page.waitForSelector("#upload-status.error");
          assert.match(await status.textContent() ?? "", message);
          await screenshot(page, `upload-refused-${path.split("/").pop()}`);
        }

        // Nothing left behind: no package files, no apps, no temp files.
        const left = [];
        for await (const entry of Deno.readDir(`${dataDir}/shell/packages`)) {
          left.push(entry.name);
        }
        assert.deepEqual(left, []);
        await page.goto(web.url);
        assert.equal(await page.isVisible(".app"), false);

        // A good package still installs after the refusals.
        await uploadApp(page, spkPath);
        assert.equal(await page.locator(".app").count(), 1);
      } finally {
        await browser.close();
        await web.stop();
      }
    });
  },
});
