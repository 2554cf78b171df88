import assert from "node:assert/strict";
import * as rpc from "../rpc/mod.ts";
import {
  UiSession$Client,
  UiView,
  type UiView$Client,
  UiView_NewSession$Params,
} from "../../proto/gen/sandstorm/grain.ts";
import { Handle } from "../../proto/gen/sandstorm/util.ts";
import {
  WebSession,
  WebSession_Context,
  WebSession_Params,
  WebSession_Response,
  WebSession_Response_ClientErrorCode,
  WebSession_Response_SuccessCode,
  WebSession_WebSocketStream,
} from "../../proto/gen/sandstorm/web-session.ts";
import * as $ from "capnp-es";
import {
  decodeServerFrames,
  encodeClientFrame,
  openWebSession,
  relayRequest,
  relayWebSocket,
} from "./mod.ts";

/** What the app saw of each session it opened. */
interface SeenSession {
  displayName: string;
  permissions: boolean[];
  basePath: string;
}

function cookiesOf(context: WebSession_Context): string {
  return [...context.cookies].map((c) => `${c.key}=${c.value}`).join(";");
}

function textContent(response: WebSession_Response, text: string): void {
  const content = response._initContent();
  content.statusCode = WebSession_Response_SuccessCode.OK;
  content.mimeType = "text/plain";
  const bytes = new TextEncoder().encode(text);
  content._initBody()._initBytes(bytes.length).copyBuffer(bytes);
}

/**
 * A Sandstorm app's UiView written against the generated schema (no mock
 * of the relay: requests cross a real RPC connection to it).
 */
function testApp(seen: SeenSession[]): rpc.Cap {
  const session = () =>
    rpc.serve(WebSession, {
      get(params, results) {
        const path = params.path;
        if (path === "stream") {
          const stream = rpc.retain(params.context.responseStream);
          const content = results._initContent();
          content.mimeType = "text/plain";
          content._initBody().stream = new Handle.Client(
            rpc.serve(Handle, {}),
          );
          (async () => {
            for (const part of ["one ", "two ", "three"]) {
              await stream.write((p) => {
                const bytes = new TextEncoder().encode(part);
                p._initData(bytes.length).copyBuffer(bytes);
              }).promise();
            }
            await stream.done().promise();
            rpc.release(stream);
          })();
        } else if (path === "moved") {
          const redirect = results._initRedirect();
          redirect.isPermanent = false;
          redirect.switchToGet = true;
          redirect.location = "/there";
        } else if (path.startsWith("echo")) {
          const cookie = results._initSetCookies(1).get(0);
          cookie.name = "seen";
          cookie.value = "yes";
          cookie.path = "/";
          cookie.httpOnly = true;
          textContent(
            results,
            `${path} cookies=${
              cookiesOf(params.context)
            } head=${params.ignoreBody}`,
          );
        } else {
          const error = results._initClientError();
          error.statusCode = WebSession_Response_ClientErrorCode.NOT_FOUND;
          error.descriptionHtml = `<p>no ${path}</p>`;
        }
        return Promise.resolve();
      },
      post(params, results) {
        const body = new TextDecoder().decode(
          params.content.content.toUint8Array(),
        );
        textContent(
          results,
          `posted ${body} as ${params.content.mimeType} to ${params.path}`,
        );
        return Promise.resolve();
      },
      delete(params, results) {
        results._initNoContent();
        assert.equal(params.path, "item/7");
        return Promise.resolve();
      },
      openWebSocket(params, results) {
        // Echoes every frame back, unmasked, as a server sends it.
        const client = rpc.retain(params.clientStream);
        results._initProtocol(1).set(0, params.protocol.get(0));
        results.serverStream = new WebSession_WebSocketStream.Client(
          rpc.serve(WebSession_WebSocketStream, {
            async sendBytes(p) {
              const frame = p.message.toUint8Array();
              const length = frame[1] & 0x7f;
              const mask = frame.slice(2, 6);
              const reply = new Uint8Array(2 + length);
              reply[0] = frame[0];
              reply[1] = length;
              for (let i = 0; i < length; i++) {
                reply[2 + i] = frame[6 + i] ^ mask[i & 3];
              }
              await client.sendBytes((q) => {
                q._initMessage(reply.length).copyBuffer(reply);
              }).promise();
            },
          }, () => rpc.release(client)),
        );
        return Promise.resolve();
      },
    });
  return rpc.serve(UiView, {
    newSession(params: UiView_NewSession$Params, results) {
      const web = $.utils.getAs(WebSession_Params, params.sessionParams);
      seen.push({
        displayName: params.userInfo.displayName.defaultText,
        permissions: [...params.userInfo.permissions],
        basePath: web.basePath,
      });
      assert.equal(params.sessionType, WebSession.Client.interfaceId);
      results.session = new UiSession$Client(session());
      return Promise.resolve();
    },
  });
}

async function withApp(
  run: (
    view: UiView$Client,
    seen: SeenSession[],
  ) => Promise<void>,
) {
  const seen: SeenSession[] = [];
  const app = testApp(seen);
  const [a, b] = rpc.memoryPipe();
  const appSide = new rpc.RpcConnection(a, { bootstrap: app });
  const platform = new rpc.RpcConnection(b);
  const view = rpc.bootstrap(platform, UiView);
  try {
    await run(view, seen);
  } finally {
    rpc.release(view);
    platform.close();
    appSide.close();
    app.close();
  }
}

Deno.test("a session tells the app who opens it, with what permissions, under which base URL", async () => {
  await withApp(async (view, seen) => {
    const session = await openWebSession(view, {
      displayName: "Ann",
      permissions: [true, false],
    }, { basePath: "https://abc.example" });
    rpc.release(session);
    assert.deepEqual(seen, [{
      displayName: "Ann",
      permissions: [true, false],
      basePath: "https://abc.example",
    }]);
  });
});

Deno.test("requests map onto WebSession calls and responses back onto HTTP", async () => {
  await withApp(async (view) => {
    const session = await openWebSession(view, { displayName: "Ann" });
    try {
      let response = await relayRequest(
        session,
        new Request("http://g/echo?x=1", { headers: { cookie: "a=1; b=2" } }),
      );
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-type"), "text/plain");
      assert.equal(
        response.headers.get("set-cookie"),
        "seen=yes; Path=/; HttpOnly",
      );
      assert.equal(
        await response.text(),
        "echo?x=1 cookies=a=1;b=2 head=false",
      );

      response = await relayRequest(
        session,
        new Request("http://g/save", {
          method: "POST",
          body: "a note",
          headers: { "content-type": "text/x-note" },
        }),
      );
      assert.equal(
        await response.text(),
        "posted a note as text/x-note to save",
      );

      response = await relayRequest(
        session,
        new Request("http://g/item/7", { method: "DELETE" }),
      );
      assert.equal(response.status, 204);

      response = await relayRequest(session, new Request("http://g/moved"));
      assert.equal(response.status, 303);
      assert.equal(response.headers.get("location"), "/there");

      response = await relayRequest(session, new Request("http://g/nothing"));
      assert.equal(response.status, 404);
      assert.equal(await response.text(), "<p>no nothing</p>");

      response = await relayRequest(
        session,
        new Request("http://g/x", { method: "PROPFIND" }),
      );
      assert.equal(response.status, 405);
      await response.body?.cancel();
    } finally {
      rpc.release(session);
    }
  });
});

Deno.test("a streamed response body arrives whole, written after the call returned", async () => {
  await withApp(async (view) => {
    const session = await openWebSession(view, { displayName: "Ann" });
    try {
      const response = await relayRequest(
        session,
        new Request("http://g/stream"),
      );
      assert.equal(response.status, 200);
      assert.equal(await response.text(), "one two three");
    } finally {
      rpc.release(session);
    }
  });
});

Deno.test("WebSocket frames cross the session in both directions", async () => {
  await withApp(async (view) => {
    const session = await openWebSession(view, { displayName: "Ann" });
    const socket = await relayWebSocket(session, "/socket", ["chat"]);
    try {
      assert.deepEqual(socket.protocols, ["chat"]);
      const messages = decodeServerFrames(socket.frames);
      for (const text of ["hello", "again"]) {
        await socket.send(encodeClientFrame(1, new TextEncoder().encode(text)));
        const { value } = await messages.next();
        assert.equal(value?.opcode, 1);
        assert.equal(new TextDecoder().decode(value?.payload), text);
      }
      await messages.return(undefined);
    } finally {
      socket.close();
      rpc.release(session);
    }
  });
});

Deno.test("a page load's Accept list and cookies cross a middle vat, as gateway to worker to app", async () => {
  // The worker hands the gateway the app's UiView, so every WebSession
  // call is forwarded through the worker's vat.
  const seen: SeenSession[] = [];
  const app = testApp(seen);
  const [a, b] = rpc.memoryPipe();
  const appSide = new rpc.RpcConnection(a, { bootstrap: app });
  const workerToApp = new rpc.RpcConnection(b);
  const appView = rpc.bootstrap(workerToApp, UiView);
  const [c, d] = rpc.memoryPipe();
  const workerSide = new rpc.RpcConnection(c, {
    bootstrap: rpc.capOf(appView).addRef(),
  });
  const gatewaySide = new rpc.RpcConnection(d);
  const view = rpc.bootstrap(gatewaySide, UiView);
  const session = await openWebSession(view, { displayName: "Ann" });
  try {
    const response = await relayRequest(
      session,
      new Request("http://g/echo", {
        headers: {
          accept: "text/html,application/xhtml+xml,application/xml;q=0.9," +
            "image/avif,image/webp,image/apng,*/*;q=0.8," +
            "application/signed-exchange;v=b3;q=0.7",
          cookie: `theme=dark; session=${"s".repeat(64)}`,
        },
      }),
    );
    assert.equal(response.status, 200);
    assert.equal(
      await response.text(),
      `echo cookies=theme=dark;session=${"s".repeat(64)} head=false`,
    );
  } finally {
    rpc.release(session);
    rpc.release(view);
    rpc.release(appView);
    gatewaySide.close();
    workerSide.close();
    workerToApp.close();
    appSide.close();
    app.close();
  }
});
