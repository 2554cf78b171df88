/**
 * HTTP over Sandstorm's `WebSession`: opens a session on a grain's
 * `UiView` and maps web `Request`s and `Response`s onto WebSession calls
 * (get, post, put, patch, delete with bodies; streamed responses through a
 * `ByteStream`), and WebSockets onto `openWebSocket` as raw frames. It
 * depends only on the RPC engine and the Sandstorm schemas, so the worker's
 * supervisor (fd 3 of a grain) and the gateway (a worker's grain over the
 * cluster RPC) share it.
 *
 * @module
 */
import * as $ from "capnp-es";
import * as rpc from "../rpc/mod.ts";
import {
  SessionContext,
  type UiView$Client,
} from "../../proto/gen/sandstorm/grain.ts";
import {
  ByteStream,
  type ByteStream$Client,
} from "../../proto/gen/sandstorm/util.ts";
import {
  WebSession,
  type WebSession$Client,
  WebSession_Context,
  WebSession_Params,
  WebSession_Response,
  WebSession_Response_Content_Body_Which,
  WebSession_Response_Which,
  WebSession_WebSocketStream,
} from "../../proto/gen/sandstorm/web-session.ts";

/** HTTP status of each WebSession.Response.SuccessCode, by ordinal. */
const SUCCESS_STATUS = [200, 201, 202, 204, 206, 207, 304];
/** HTTP status of each ClientErrorCode, by ordinal. */
const CLIENT_ERROR_STATUS = [
  400,
  403,
  404,
  405,
  406,
  409,
  410,
  413,
  414,
  415,
  418,
  412,
  422,
];

/** Request headers an app may see besides those the Context carries;
 * Sandstorm passes the same set. A trailing `*` matches a prefix. */
const FORWARDED_HEADERS = [
  "x-sandstorm-app-*",
  "oc-total-length",
  "oc-chunk-size",
  "x-oc-mtime",
  "oc-fileid",
  "oc-chunked",
  "oc-checksum",
  "oc-chunk-offset",
  "oc-lazyops",
  "x-hgarg-*",
  "x-phabricator-*",
  "x-requested-with",
  "x-csrftoken",
  "x-csrf-token",
];

function forwarded(name: string): boolean {
  return FORWARDED_HEADERS.some((pattern) =>
    pattern.endsWith("*")
      ? name.startsWith(pattern.slice(0, -1))
      : name === pattern
  );
}

/** Who opens a session, as the app will be told. */
export interface SessionUser {
  displayName: string;
  /** Stable per user; empty for an anonymous visitor. */
  identityId?: Uint8Array;
  preferredHandle?: string;
  /** One flag per permission in the app's ViewInfo. */
  permissions?: boolean[];
}

/** A WebSocket relayed to the app as raw frames. */
export interface RelayedWebSocket {
  /** The subprotocols the app accepted. */
  protocols: string[];
  /** Sends raw frame bytes (masked, as a client sends them). */
  send(frames: Uint8Array): Promise<void>;
  /** Raw frame bytes from the app, as they arrive. */
  frames: ReadableStream<Uint8Array>;
  close(): void;
}

/** A byte stream the app writes a response body into. */
function responseStreamServer(): {
  client: ByteStream$Client;
  readable: ReadableStream<Uint8Array>;
  finished: Promise<void>;
} {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const readable = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  const finished = Promise.withResolvers<void>();
  let open = true;
  const end = () => {
    if (!open) return;
    open = false;
    try {
      controller.close();
    } catch { /* reader cancelled */ }
    finished.resolve();
  };
  const cap = rpc.serve(ByteStream, {
    write(params) {
      if (!open) {
        return Promise.reject(
          new rpc.RpcError("failed", "stream already done"),
        );
      }
      // The message's buffer is not ours to keep.
      controller.enqueue(params.data.toUint8Array().slice());
      return Promise.resolve();
    },
    done() {
      end();
      return Promise.resolve();
    },
    expectSize: () => Promise.resolve(),
  }, end);
  return {
    client: new ByteStream.Client(cap),
    readable,
    finished: finished.promise,
  };
}

function fillContext(context: WebSession_Context, request: Request) {
  const cookies = (request.headers.get("cookie") ?? "").split(";")
    .map((part) => part.trim()).filter((part) => part.includes("="));
  const list = context._initCookies(cookies.length);
  cookies.forEach((cookie, i) => {
    const at = cookie.indexOf("=");
    list.get(i).key = cookie.slice(0, at);
    list.get(i).value = cookie.slice(at + 1);
  });

  const accept = (request.headers.get("accept") ?? "").split(",")
    .map((part) => part.trim()).filter((part) => part !== "");
  const types = context._initAccept(accept.length);
  accept.forEach((entry, i) => {
    const [mimeType, ...params] = entry.split(";").map((p) => p.trim());
    types.get(i).mimeType = mimeType;
    const q = params.find((p) => p.startsWith("q="));
    types.get(i).qValue = q ? Number(q.slice(2)) || 0 : 1;
  });

  const extra = [...request.headers].filter(([name]) => forwarded(name));
  const headers = context._initAdditionalHeaders(extra.length);
  extra.forEach(([name, value], i) => {
    headers.get(i).name = name;
    headers.get(i).value = value;
  });

  const ifMatch = request.headers.get("if-match");
  const ifNoneMatch = request.headers.get("if-none-match");
  if (ifMatch === "*") context.eTagPrecondition.exists = true;
  else if (ifNoneMatch === "*") context.eTagPrecondition.doesntExist = true;
}

/** Turns the app's Response into a web Response. */
function toWebResponse(
  response: WebSession_Response,
  stream: ReadableStream<Uint8Array>,
): { response: Response; streamed: boolean } {
  const headers = new Headers();
  for (const cookie of response.setCookies) {
    let text = `${cookie.name}=${cookie.value}`;
    if (cookie.path !== "") text += `; Path=${cookie.path}`;
    if (cookie.httpOnly) text += "; HttpOnly";
    if (cookie.expires._isAbsolute) {
      text += `; Expires=${
        new Date(Number(cookie.expires.absolute) * 1000).toUTCString()
      }`;
    } else if (cookie.expires._isRelative) {
      text += `; Max-Age=${cookie.expires.relative}`;
    }
    headers.append("set-cookie", text);
  }
  for (const header of response.additionalHeaders) {
    headers.append(header.name, header.value);
  }

  switch (response.which()) {
    case WebSession_Response_Which.CONTENT: {
      const content = response.content;
      const status = SUCCESS_STATUS[content.statusCode] ?? 200;
      if (content.mimeType !== "") {
        headers.set("content-type", content.mimeType);
      }
      if (content.encoding !== "") {
        headers.set("content-encoding", content.encoding);
      }
      if (content.language !== "") {
        headers.set("content-language", content.language);
      }
      if (content._hasETag()) {
        const tag = content.eTag;
        headers.set("etag", `${tag.weak ? "W/" : ""}"${tag.value}"`);
      }
      if (content.disposition._isDownload) {
        headers.set(
          "content-disposition",
          `attachment; filename="${
            content.disposition.download.replace(/["\\]/g, "")
          }"`,
        );
      }
      const streamed = content.body.which() ===
        WebSession_Response_Content_Body_Which.STREAM;
      const body = status === 204 || status === 304
        ? null
        : streamed
        ? stream
        : content.body.bytes.toUint8Array().slice();
      return { response: new Response(body, { status, headers }), streamed };
    }
    case WebSession_Response_Which.NO_CONTENT: {
      const status = response.noContent.shouldResetForm ? 205 : 204;
      return {
        response: new Response(null, { status, headers }),
        streamed: false,
      };
    }
    case WebSession_Response_Which.PRECONDITION_FAILED:
      return {
        response: new Response(null, { status: 412, headers }),
        streamed: false,
      };
    case WebSession_Response_Which.REDIRECT: {
      const redirect = response.redirect;
      const status = redirect.isPermanent
        ? (redirect.switchToGet ? 301 : 308)
        : (redirect.switchToGet ? 303 : 307);
      headers.set("location", redirect.location);
      return {
        response: new Response(null, { status, headers }),
        streamed: false,
      };
    }
    case WebSession_Response_Which.CLIENT_ERROR: {
      const error = response.clientError;
      const status = CLIENT_ERROR_STATUS[error.statusCode] ?? 400;
      return {
        response: errorResponse(status, headers, error),
        streamed: false,
      };
    }
    case WebSession_Response_Which.SERVER_ERROR:
    default:
      return {
        response: errorResponse(500, headers, response.serverError),
        streamed: false,
      };
  }
}

function errorResponse(
  status: number,
  headers: Headers,
  error: {
    descriptionHtml: string;
    _hasNonHtmlBody(): boolean;
    nonHtmlBody: { data: $.Data; mimeType: string };
  },
): Response {
  if (error._hasNonHtmlBody()) {
    const body = error.nonHtmlBody;
    if (body.mimeType !== "") headers.set("content-type", body.mimeType);
    return new Response(body.data.toUint8Array().slice(), { status, headers });
  }
  headers.set("content-type", "text/html; charset=utf-8");
  return new Response(error.descriptionHtml, { status, headers });
}

/** Opens a WebSession for `user`; the caller releases it when done. */
export async function openWebSession(
  uiView: UiView$Client,
  user: SessionUser,
  options: { basePath?: string; userAgent?: string } = {},
): Promise<WebSession$Client> {
  const context = rpc.serve(
    SessionContext,
    {},
  );
  try {
    const result = await uiView.newSession((params) => {
      const info = params._initUserInfo();
      info._initDisplayName().defaultText = user.displayName;
      info.preferredHandle = user.preferredHandle ?? "";
      const id = user.identityId ?? new Uint8Array();
      info._initIdentityId(id.length).copyBuffer(id);
      const flags = user.permissions ?? [];
      const permissions = info._initPermissions(flags.length);
      flags.forEach((flag, i) => permissions.set(i, flag));
      params.context = new SessionContext.Client(context);
      params.sessionType = WebSession.Client.interfaceId;
      // sessionParams is an AnyPointer (pointer 2 of the params struct)
      // holding WebSession.Params.
      const web = $.utils.initStructAt(2, WebSession_Params, params);
      web.basePath = options.basePath ?? "http://grain.invalid";
      web.userAgent = options.userAgent ?? "";
      web._initAcceptableLanguages(1).set(0, "en");
      params._initTabId(0);
    }).promise();
    return new WebSession.Client(rpc.retain(result.session).client);
  } finally {
    context.close();
  }
}

/** Relays one HTTP request to a WebSession and returns its response. */
export async function relayRequest(
  session: WebSession$Client,
  request: Request,
): Promise<Response> {
  const url = new URL(request.url);
  const path = (url.pathname + url.search).replace(/^\//, "");
  const method = request.method.toUpperCase();
  const body = method === "GET" || method === "HEAD" || method === "DELETE"
    ? new Uint8Array()
    : new Uint8Array(await request.arrayBuffer());
  const mimeType = request.headers.get("content-type") ?? "";
  const encoding = request.headers.get("content-encoding") ?? "";
  const stream = responseStreamServer();

  const setContent = (content: {
    mimeType: string;
    encoding: string;
    _initContent(length: number): $.Data;
  }) => {
    content.mimeType = mimeType;
    content.encoding = encoding;
    content._initContent(body.length).copyBuffer(body);
  };
  const setContext = (context: WebSession_Context) => {
    fillContext(context, request);
    context.responseStream = stream.client;
  };

  let pending;
  switch (method) {
    case "GET":
    case "HEAD":
      pending = session.get((p) => {
        p.path = path;
        setContext(p._initContext());
        p.ignoreBody = method === "HEAD";
      });
      break;
    case "POST":
      pending = session.post((p) => {
        p.path = path;
        setContent(p._initContent());
        setContext(p._initContext());
      });
      break;
    case "PUT":
      pending = session.put((p) => {
        p.path = path;
        setContent(p._initContent());
        setContext(p._initContext());
      });
      break;
    case "PATCH":
      pending = session.patch((p) => {
        p.path = path;
        setContent(p._initContent());
        setContext(p._initContext());
      });
      break;
    case "DELETE":
      pending = session.delete((p) => {
        p.path = path;
        setContext(p._initContext());
      });
      break;
    default:
      stream.client.client.close();
      return new Response(`method ${method} not relayed`, { status: 405 });
  }

  let result: WebSession_Response;
  try {
    result = await pending.promise();
  } catch (error) {
    stream.client.client.close();
    throw error;
  }
  const { response, streamed } = toWebResponse(result, stream.readable);
  if (streamed) {
    // Dropping the handle would tell the app to stop; keep it until the
    // body is complete.
    const handle = rpc.retain(result.content.body.stream);
    stream.finished.finally(() => {
      rpc.release(handle);
      stream.client.client.close();
    });
  } else {
    stream.client.client.close();
  }
  return response;
}

/** Opens a WebSocket on the session; frames pass through unchanged. */
export async function relayWebSocket(
  session: WebSession$Client,
  path: string,
  protocols: string[] = [],
): Promise<RelayedWebSocket> {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const frames = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  const clientStream = rpc.serve(WebSession_WebSocketStream, {
    sendBytes(params) {
      try {
        controller.enqueue(params.message.toUint8Array().slice());
      } catch { /* reader gone */ }
      return Promise.resolve();
    },
  }, () => {
    try {
      controller.close();
    } catch { /* already closed */ }
  });
  const stream = responseStreamServer();
  const result = await session.openWebSocket((p) => {
    p.path = path.replace(/^\//, "");
    const context = p._initContext();
    context.responseStream = stream.client;
    const list = p._initProtocol(protocols.length);
    protocols.forEach((protocol, i) => list.set(i, protocol));
    p.clientStream = new WebSession_WebSocketStream.Client(clientStream);
  }).promise();
  stream.client.client.close();
  const server = rpc.retain(result.serverStream);
  const accepted = [...result.protocol];
  return {
    protocols: accepted,
    frames,
    async send(bytes: Uint8Array) {
      await server.sendBytes((p) => {
        p._initMessage(bytes.length).copyBuffer(bytes);
      }).promise();
    },
    close() {
      rpc.release(server);
      clientStream.close();
    },
  };
}
