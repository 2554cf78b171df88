/**
 * Headless Chromium (Debian's /usr/bin/chromium) through playwright-core,
 * each launch with a fresh profile folder that is removed on close.
 *
 * @module
 */
import {
  type BrowserContext,
  chromium,
  type Frame,
  type Page,
} from "playwright-core";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** A browser profile; close() ends the browser and deletes the profile. */
export interface TestBrowser {
  context: BrowserContext;
  page: Page;
  close(): Promise<void>;
}

/** Starts Chromium with a new, empty profile. The test certificate is
 * self-signed, so certificate errors are ignored for this profile. */
export async function launchBrowser(): Promise<TestBrowser> {
  const profile = await Deno.makeTempDir({ prefix: "chromium-profile-" });
  try {
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: FLAGS,
      ignoreHTTPSErrors: true,
      viewport: { width: 1200, height: 800 },
    });
    const page = context.pages()[0] ?? await context.newPage();
    return {
      context,
      page,
      async close() {
        await context.close().catch(() => {});
        await Deno.remove(profile, { recursive: true }).catch(() => {});
      },
    };
  } catch (error) {
    await Deno.remove(profile, { recursive: true }).catch(() => {});
    throw error;
  }
}

/** Signs in through the login form and waits for the home page. */
export async function signIn(
  page: Page,
  url: string,
  name: string,
  password: string,
): Promise<void> {
  await page.goto(`${url}/login`);
  await page.fill("#name", name);
  await page.fill("#password", password);
  await Promise.all([
    page.waitForURL((u) => !u.pathname.startsWith("/login")),
    page.click("#signin"),
  ]);
}

/**
 * The grain's iframe once its page has loaded. If the shell shows an
 * error instead of the frame, fails at once with that error's text.
 */
export async function grainFrame(page: Page): Promise<Frame> {
  const shown = await page.waitForSelector("#grain-frame, [role=alert]");
  if ((await shown.getAttribute("id")) !== "grain-frame") {
    throw new Error(`the grain did not open: ${await shown.textContent()}`);
  }
  const frame = await shown.contentFrame();
  if (frame === null) throw new Error("the grain iframe has no frame");
  await frame.waitForLoadState();
  return frame;
}

/** A request made from inside the grain's origin, as the app's own page
 * would make it; returns status and body text. */
export function fromGrain(
  frame: Frame,
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; text: string }> {
  return frame.evaluate(async ([path, init]) => {
    const response = await fetch(path as string, init as RequestInit);
    return { status: response.status, text: await response.text() };
  }, [path, init] as const);
}
