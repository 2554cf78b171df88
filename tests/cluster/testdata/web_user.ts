// A user of a simulated cluster, run inside one of its machines: signs in
// to the shell through a gateway, installs an app, opens a grain, then
// keeps asking the grain for its page through the gateway until STOP_FILE
// exists. Each request's outcome is one JSON line appended to OUT_FILE:
// {"atMs", "ok", "status"?, "error"?}. A failed request is retried after
// 200 ms, against the gateway the directory names then; after three
// failures in a row the user opens the grain again (a fresh session).
//
//   web_user.ts DIRECTORY_FILE PUBLIC_HOST PASSWORD SPK OUT_FILE STOP_FILE
//
// Deno's fetch sets Host from the URL, so requests go through node:http,
// which sends the Host header given: the gateway routes by it.
import http from "node:http";

/** An HTTP answer, its body read. */
export interface WebResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request to a gateway at `address` ("host:port") for `host`. */
export function gatewayRequest(
  address: string,
  host: string,
  options: {
    path: string;
    method?: string;
    headers?: Record<string, string>;
    body?: Uint8Array | string;
    timeoutMs?: number;
  },
): Promise<WebResponse> {
  const at = address.lastIndexOf(":");
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: address.slice(0, at),
      port: Number(address.slice(at + 1)),
      path: options.path,
      method: options.method ?? "GET",
      headers: { ...options.headers, host },
      timeout: options.timeoutMs ?? 10_000,
    }, (response) => {
      const chunks: Uint8Array[] = [];
      response.on("data", (chunk: Uint8Array) => chunks.push(chunk));
      response.on("end", () =>
        resolve({
          status: response.statusCode ?? 0,
          headers: response.headers,
          body: new TextDecoder().decode(
            new Uint8Array(chunks.flatMap((c) => [...c])),
          ),
        }));
      response.on("error", reject);
    });
    request.on("timeout", () => request.destroy(new Error("timed out")));
    request.on("error", reject);
    if (options.body !== undefined) request.write(options.body);
    request.end();
  });
}

async function gatewayAddress(directoryFile: string): Promise<string> {
  const directory = JSON.parse(await Deno.readTextFile(directoryFile));
  const gateway = directory.vats.find((v: { role: string }) =>
    v.role === "gateway"
  );
  if (gateway === undefined) throw new Error("no gateway in the directory");
  return gateway.address;
}

function expect(response: WebResponse, status: number, what: string) {
  if (response.status !== status) {
    throw new Error(
      `${what}: status ${response.status}, wanted ${status}: ` +
        response.body.slice(0, 200),
    );
  }
}

async function main(args: string[]) {
  const [directoryFile, publicHost, password, spkFile, outFile, stopFile] =
    args;
  const origin = `http://${publicHost}`;
  const shell = async (
    path: string,
    options: {
      method?: string;
      headers?: Record<string, string>;
      body?: Uint8Array | string;
    } = {},
  ) =>
    gatewayRequest(await gatewayAddress(directoryFile), publicHost, {
      path,
      ...options,
      headers: { origin, ...(cookie ? { cookie } : {}), ...options.headers },
    });
  let cookie = "";
  const form = { "content-type": "application/x-www-form-urlencoded" };

  const login = await shell("/login", {
    method: "POST",
    headers: form,
    body: new URLSearchParams({ name: "admin", password }).toString(),
  });
  expect(login, 303, "sign-in");
  cookie = String(login.headers["set-cookie"]).split(";")[0];
  const home = await shell("/");
  expect(home, 200, "home page");
  const csrf = /name="csrf"\s+value="([^"]+)"/.exec(home.body)?.[1];
  if (csrf === undefined) throw new Error("no CSRF token on the home page");
  const upload = await shell("/upload", {
    method: "POST",
    headers: { "x-csrf-token": csrf },
    body: await Deno.readFile(spkFile),
  });
  expect(upload, 200, "upload");
  const { packageId } = JSON.parse(upload.body);
  const created = await shell(`/apps/${packageId}/new`, {
    method: "POST",
    headers: form,
    body: new URLSearchParams({ csrf }).toString(),
  });
  expect(created, 303, "new grain");
  const grainPath = String(created.headers.location);

  /** Opens the grain's page; the grain's own host and path. */
  const open = async () => {
    const page = await shell(grainPath);
    expect(page, 200, "grain page");
    const src = /id="grain-frame" src="([^"]+)"/.exec(page.body)?.[1];
    if (src === undefined) {
      const notice = /role="alert">([^<]*)</.exec(page.body)?.[1]?.trim();
      throw new Error(`the grain page has no frame: ${notice}`);
    }
    // The frame's first URL trades the session key for the grain cookie,
    // as a browser's iframe does; later requests carry the cookie.
    const url = new URL(src.replaceAll("&amp;", "&"));
    const exchanged = await gatewayRequest(
      await gatewayAddress(directoryFile),
      url.host,
      { path: url.pathname + url.search },
    );
    expect(exchanged, 303, "grain session cookie");
    const grainCookie = String(exchanged.headers["set-cookie"]).split(";")[0];
    return { host: url.host, path: "/", cookie: grainCookie };
  };
  let session = await open();
  const out = await Deno.open(outFile, { append: true, create: true });
  const record = (line: Record<string, unknown>) =>
    out.write(
      new TextEncoder().encode(
        JSON.stringify({ atMs: Date.now(), ...line }) + "\n",
      ),
    );
  await record({ ok: true, opened: grainPath });
  let failures = 0;
  while (true) {
    try {
      await Deno.stat(stopFile);
      break;
    } catch {
      // Keep going.
    }
    try {
      if (failures >= 3) session = await open();
      const response = await gatewayRequest(
        await gatewayAddress(directoryFile),
        session.host,
        {
          path: session.path,
          headers: { cookie: session.cookie },
          timeoutMs: 5_000,
        },
      );
      const ok = response.status === 200;
      await record({ ok, status: response.status });
      failures = ok ? 0 : failures + 1;
    } catch (error) {
      await record({ ok: false, error: String(error) });
      failures++;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  out.close();
}

if (import.meta.main) await main(Deno.args);
