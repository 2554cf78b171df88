/**
 * The gateway service: routes the main hostname to a live shell replica
 * and each grain hostname to that grain session's web session, WebSockets
 * included, and keeps the list of shells that registered.
 *
 * A grain hostname is `<label>.<grain suffix>`; the label names one web
 * session. The gateway asks a shell where the label goes and keeps the
 * answer for a few seconds, so a deleted grain or expired session stops
 * answering within that time. A session that may not write (a viewer's
 * share link) gets 403 for every method but GET, HEAD and OPTIONS, on top
 * of the permissions the app is told in `X-Sandstorm-Permissions`.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash, timingSafeEqual } from "node:crypto";
import * as rpc from "../rpc/mod.ts";
import type { Logger } from "../runtime/log.ts";
import type { Shell$Client } from "../../proto/gen/gateway.ts";
import { isWorkerBackend, WorkerSessions } from "./worker_sessions.ts";

/** Where a grain session's requests go, as a shell answered. */
export interface GrainRoute {
  backend: string;
  grainId: string;
  canWrite: boolean;
  expiresAt: number;
  userId: string;
  userName: string;
  /** The app's permission flags for this session. */
  permissions?: boolean[];
  /** Hex SHA-256 of the session key; a request must carry the key in the
   * grain cookie. An empty hash lets nobody in. */
  sessionKeyHash: string;
}

/** Options of {@link Gateway}. */
export interface GatewayOptions {
  /** Main hostname with port as browsers send it, "localhost:8443". */
  mainHost: string;
  /** Grain hostnames end with "." + this (with port). */
  grainHostSuffix: string;
  /** Public URL of the shell, allowed to frame grains. */
  shellOrigin: string;
  log: Logger;
  /** A shell not heard from for this long is dropped. */
  shellTimeoutMs?: number;
  routeCacheMs?: number;
  /** Largest request body relayed to a grain on a worker. The relay holds
   * a body whole in memory (WebSession requests carry it as one value),
   * so this bounds what one request can make the gateway allocate.
   * Default 128 MiB. */
  maxGrainBodyBytes?: number;
  /** Called when the set of live shells changes. */
  onShellsChanged?: (addresses: string[]) => void;
  /** What the status call reports about this process, beside the
   * shells. */
  status?: () => GatewayProcessStatus;
}

/** This gateway process, as the shells' admin page shows it. */
export interface GatewayProcessStatus {
  hostname: string;
  pid: number;
  rssBytes: number;
  startedAtMs: number;
  /** Where browsers reach it (nginx's host:port). */
  address: string;
}

/** A registration refused for its values (the shell's mistake). */
export class ShellRegistrationError extends Error {
  override name = "ShellRegistrationError";
}

interface RegisteredShell {
  address: string;
  seenAt: number;
  /** Answers route lookups; released when the shell is dropped. */
  shell: Shell$Client;
}

const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
];
const READ_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const LABEL = /^[0-9a-v]{26}$/;
/** Where a grain frame's first URL points: the one-time exchange of the
 * session key for a cookie. */
const SESSION_PATH = "/_blackrock/session";

function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Whether `key` hashes to `hash`, in time independent of the match. */
function keyMatches(key: string | undefined, hash: string): boolean {
  if (key === undefined || hash.length !== 64) return false;
  return timingSafeEqual(
    Buffer.from(sha256Hex(key), "hex"),
    Buffer.from(hash, "hex"),
  );
}

/** The value of cookie `name` in a Cookie header, if any. */
function cookieValue(header: string | null, name: string) {
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      return part.slice(eq + 1).trim();
    }
  }
  return undefined;
}

/** The Cookie header without cookie `name` (the app never sees it). */
function withoutCookie(header: string, name: string): string {
  return header.split(";").filter((part) => {
    const eq = part.indexOf("=");
    return eq <= 0 || part.slice(0, eq).trim() !== name;
  }).map((part) => part.trim()).join("; ");
}

function text(body: string, status: number): Response {
  return new Response(body + "\n", {
    status,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}

/** The routing core; `handle` serves the proxy port, and shells register
 * through the control port's RPC (services/gateway/control.ts,
 * proto/gateway.capnp). */
export class Gateway {
  readonly #options: GatewayOptions;
  readonly #shells = new Map<string, RegisteredShell>();
  readonly #routes = new Map<string, { route: GrainRoute; at: number }>();
  readonly #workerSessions = new WorkerSessions();
  /** Session keys already exchanged for a cookie here, with when their
   * session ends: a key works once per gateway. */
  readonly #usedKeys = new Map<string, number>();
  #next = 0;
  #lastList = "";

  constructor(options: GatewayOptions) {
    this.#options = options;
  }

  /** Live shell addresses, sorted. */
  shells(): string[] {
    const timeout = this.#options.shellTimeoutMs ?? 6000;
    const now = Date.now();
    for (const [id, shell] of this.#shells) {
      if (now - shell.seenAt > timeout) this.#drop(id);
    }
    return [...new Set([...this.#shells.values()].map((s) => s.address))]
      .sort();
  }

  /** Drops shells that stopped calling in and reports any change. */
  sweep(): void {
    const list = this.shells();
    const key = list.join(",");
    if (key !== this.#lastList) {
      this.#lastList = key;
      this.#options.log.info("shells-changed", { shells: list });
      this.#options.onShellsChanged?.(list);
    }
  }

  #drop(id: string): void {
    const known = this.#shells.get(id);
    if (known === undefined) return;
    this.#shells.delete(id);
    rpc.release(known.shell);
  }

  /**
   * Adds or refreshes a shell (its heartbeat). The gateway keeps its own
   * reference to `shell`; the caller keeps (and releases) theirs.
   */
  registerShell(id: string, address: string, shell: Shell$Client): void {
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
      throw new ShellRegistrationError(
        `shell ID ${JSON.stringify(id.slice(0, 80))} must be 1-64 letters, ` +
          `digits, "_" or "-"`,
      );
    }
    if (!/^[0-9A-Za-z.\-]+:\d{1,5}$/.test(address)) {
      throw new ShellRegistrationError(
        `shell address ${JSON.stringify(address.slice(0, 80))} must be ` +
          `host:port`,
      );
    }
    const previous = this.#shells.get(id);
    this.#shells.set(id, {
      address,
      seenAt: Date.now(),
      shell: rpc.retain(shell),
    });
    if (previous !== undefined) rpc.release(previous.shell);
    this.sweep();
  }

  /** Removes a shell at once (it is stopping). */
  unregisterShell(id: string): void {
    this.#drop(id);
    this.sweep();
  }

  /** This process and its live shells, for the status call. */
  status(): GatewayProcessStatus & { shells: string[] } {
    const self = this.#options.status?.() ?? {
      hostname: "",
      pid: 0,
      rssBytes: 0,
      startedAtMs: 0,
      address: "",
    };
    return { ...self, shells: this.shells() };
  }

  /** Serves one request arriving from nginx. */
  async handle(request: Request): Promise<Response> {
    const host = (request.headers.get("host") ?? "").toLowerCase();
    try {
      if (host === this.#options.mainHost) return await this.#toShell(request);
      const suffix = "." + this.#options.grainHostSuffix;
      if (host.endsWith(suffix)) {
        const label = host.slice(0, -suffix.length);
        if (LABEL.test(label)) return await this.#toGrain(request, label);
      }
      return text(`unknown host ${host}`, 404);
    } catch (error) {
      this.#options.log.warn("proxy-failed", { host, error });
      return text("the service behind this address is not answering", 502);
    }
  }

  /** Forwards to shells in turn, trying the next one if one is down. */
  async #toShell(request: Request): Promise<Response> {
    // Reserved for the platform: shells and gateways talk over RPC
    // (proto/gateway.capnp), and no browser reaches a shell's internals.
    if (new URL(request.url).pathname.startsWith("/_blackrock/")) {
      return text("not found", 404);
    }
    const shells = this.shells();
    if (shells.length === 0) return text("no shell is running", 503);
    const url = new URL(request.url);
    // A body can be sent once; only bodiless requests are retried.
    const attempts = request.body === null ? shells.length : 1;
    let lastError: unknown;
    for (let i = 0; i < attempts; i++) {
      const address = shells[this.#next++ % shells.length];
      try {
        return await forward(
          request,
          `http://${address}${url.pathname}${url.search}`,
          {},
        );
      } catch (error) {
        lastError = error;
      }
    }
    throw lastError;
  }

  async #route(label: string): Promise<GrainRoute | undefined> {
    const cacheMs = this.#options.routeCacheMs ?? 5000;
    const cached = this.#routes.get(label);
    const now = Date.now();
    if (cached !== undefined && now - cached.at < cacheMs) {
      return cached.route.expiresAt > now ? cached.route : undefined;
    }
    this.shells();
    for (const { shell } of [...this.#shells.values()]) {
      let answer;
      try {
        answer = await shell.route((p) => p.hostLabel = label).promise();
      } catch {
        continue;
      }
      if (!answer.found) {
        this.#routes.delete(label);
        return undefined;
      }
      const found = answer.route;
      const route: GrainRoute = {
        backend: found.backend,
        grainId: found.grainId,
        canWrite: found.canWrite,
        expiresAt: Number(found.expiresAtMs),
        userId: found.userId,
        userName: found.userName,
        permissions: [...found.permissions],
        sessionKeyHash: found.sessionKeyHash,
      };
      if (this.#routes.size > 10_000) this.#routes.clear();
      this.#routes.set(label, { route, at: now });
      return route;
    }
    throw new Error("no shell answered the route lookup");
  }

  get #grainCookie(): { name: string; secure: boolean } {
    const secure = this.#options.shellOrigin.startsWith("https:");
    return {
      name: secure ? "__Host-blackrock-grain" : "blackrock-grain",
      secure,
    };
  }

  /** Exchanges a session key from the frame's first URL for a host-only
   * cookie, once, and sends the frame on to the app's root. */
  #openSession(request: Request, route: GrainRoute): Response {
    const key = new URL(request.url).searchParams.get("token") ?? undefined;
    const now = Date.now();
    for (const [hash, expiresAt] of this.#usedKeys) {
      if (expiresAt < now) this.#usedKeys.delete(hash);
    }
    if (
      !keyMatches(key, route.sessionKeyHash) ||
      this.#usedKeys.has(route.sessionKeyHash)
    ) {
      return text(
        "This grain link was already used or is not valid. Open the grain again from Blackrock.",
        403,
      );
    }
    this.#usedKeys.set(route.sessionKeyHash, route.expiresAt);
    const { name, secure } = this.#grainCookie;
    const maxAgeSeconds = Math.max(
      0,
      Math.floor((route.expiresAt - now) / 1000),
    );
    return new Response(null, {
      status: 303,
      headers: {
        location: "/",
        "cache-control": "no-store",
        "referrer-policy": "no-referrer",
        // The frame is a cross-site context (a grain hostname is a site of
        // its own), where a Lax cookie is neither set nor sent. None with
        // Partitioned keys the cookie to the shell's top-level site, so it
        // works only inside the shell's frame and survives third-party
        // cookie blocking. No Domain: the cookie stays on this hostname.
        "set-cookie":
          `${name}=${key}; Path=/; HttpOnly; Max-Age=${maxAgeSeconds}; ` +
          (secure ? "Secure; SameSite=None; Partitioned" : "SameSite=Lax"),
      },
    });
  }

  async #toGrain(incoming: Request, label: string): Promise<Response> {
    const route = await this.#route(label);
    if (route === undefined) {
      return text(
        "This grain session has expired or was closed. Open the grain again from Blackrock.",
        404,
      );
    }
    if (new URL(incoming.url).pathname === SESSION_PATH) {
      return this.#openSession(incoming, route);
    }
    const { name } = this.#grainCookie;
    const cookies = incoming.headers.get("cookie");
    if (!keyMatches(cookieValue(cookies, name), route.sessionKeyHash)) {
      return text(
        "This grain session belongs to another browser. Open the grain from Blackrock.",
        403,
      );
    }
    const headers = new Headers(incoming.headers);
    const rest = withoutCookie(cookies ?? "", name);
    if (rest === "") headers.delete("cookie");
    else headers.set("cookie", rest);
    // A WebSocket upgrade needs the very request the server received, so
    // it keeps its headers; every other request reaches the app without
    // the grain cookie.
    const upgrade = incoming.headers.get("upgrade")?.toLowerCase();
    const request = upgrade === "websocket"
      ? incoming
      : new Request(incoming, { headers });
    if (!route.canWrite && !READ_METHODS.has(request.method)) {
      return text("This link only lets you view this grain.", 403);
    }
    const url = new URL(request.url);
    if (isWorkerBackend(route.backend)) {
      const baseUrl = `${
        new URL(this.#options.shellOrigin).protocol
      }//${label}.${this.#options.grainHostSuffix}`;
      if (request.headers.get("upgrade")?.toLowerCase() === "websocket") {
        return await this.#workerSessions.webSocket(
          label,
          route,
          baseUrl,
          request,
        );
      }
      const limitBytes = this.#options.maxGrainBodyBytes ?? 128 << 20;
      const limited = limitBody(request, limitBytes);
      if (limited === undefined) {
        await request.body?.cancel().catch(() => {});
        return text(
          `Request bodies to grains are limited to ${limitBytes} bytes.`,
          413,
        );
      }
      try {
        return this.#framedBy(
          await this.#workerSessions.fetch(
            label,
            route,
            baseUrl,
            limited.request,
          ),
        );
      } catch (error) {
        if (!limited.exceeded()) throw error;
        return text(
          `Request bodies to grains are limited to ${limitBytes} bytes.`,
          413,
        );
      }
    }
    const target = `${
      route.backend.replace(/\/$/, "")
    }${url.pathname}${url.search}`;
    const extra = {
      "x-sandstorm-permissions": route.canWrite ? "write,view" : "view",
      "x-sandstorm-user-id": route.userId,
      "x-sandstorm-username": encodeURIComponent(route.userName),
      "x-sandstorm-grain-id": route.grainId,
    };
    if (request.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return proxyWebSocket(request, target, extra);
    }
    return this.#framedBy(await forward(request, target, extra));
  }

  /** Lets only the shell frame a grain's pages, unless the app said
   * otherwise. */
  #framedBy(response: Response): Response {
    const headers = new Headers(response.headers);
    if (!headers.has("content-security-policy")) {
      headers.set(
        "content-security-policy",
        `frame-ancestors ${this.#options.shellOrigin}`,
      );
    }
    return new Response(response.body, {
      status: response.status,
      statusText: response.statusText,
      headers,
    });
  }

  /** Closes connections to workers and drops every shell. */
  close(): void {
    for (const id of [...this.#shells.keys()]) this.#drop(id);
    this.#workerSessions.close();
  }
}

/**
 * `request` with a body that fails as soon as it passes `limitBytes`
 * (`exceeded` then says why reading it failed), or undefined when its
 * declared length is already past the limit.
 */
export function limitBody(
  request: Request,
  limitBytes: number,
): { request: Request; exceeded: () => boolean } | undefined {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > limitBytes) return undefined;
  let exceeded = false;
  if (request.body === null) return { request, exceeded: () => exceeded };
  let sizeBytes = 0;
  const counted = request.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        sizeBytes += chunk.length;
        if (sizeBytes > limitBytes) {
          exceeded = true;
          controller.error(
            new RangeError(`request body passed ${limitBytes} bytes`),
          );
          return;
        }
        controller.enqueue(chunk);
      },
    }),
  );
  return {
    request: new Request(request, {
      body: counted,
      // @ts-ignore: Deno's Request accepts half-duplex streaming bodies.
      duplex: "half",
    }),
    exceeded: () => exceeded,
  };
}

/** Sends `request` to `target` and returns the answer unchanged except
 * for hop-by-hop headers. */
async function forward(
  request: Request,
  target: string,
  extra: Record<string, string>,
): Promise<Response> {
  const headers = new Headers(request.headers);
  for (const name of HOP_BY_HOP) headers.delete(name);
  for (const name of [...headers.keys()]) {
    if (name.startsWith("x-sandstorm-")) headers.delete(name);
  }
  for (const [name, value] of Object.entries(extra)) headers.set(name, value);
  // fetch sends the target's Host; the original one travels beside it.
  headers.set("x-forwarded-host", request.headers.get("host") ?? "");
  // Bodies pass through as they are; the upstream must not compress what
  // fetch would then decompress behind the client's back.
  headers.set("accept-encoding", "identity");
  const response = await fetch(target, {
    method: request.method,
    headers,
    body: request.body,
    redirect: "manual",
    // @ts-ignore: Deno's fetch accepts half-duplex streaming bodies.
    duplex: "half",
  });
  const out = new Headers(response.headers);
  for (const name of HOP_BY_HOP) out.delete(name);
  return new Response(response.body, {
    status: response.status,
    statusText: response.statusText,
    headers: out,
  });
}

/** Joins the browser's WebSocket to one opened to the backend. */
function proxyWebSocket(
  request: Request,
  target: string,
  extra: Record<string, string>,
): Response {
  const protocols = (request.headers.get("sec-websocket-protocol") ?? "")
    .split(",").map((p) => p.trim()).filter((p) => p !== "");
  const { socket, response } = Deno.upgradeWebSocket(request, {
    protocol: protocols[0],
  });
  const url = target.replace(/^http/, "ws");
  const upstream = new WebSocket(url, {
    protocols,
    headers: extra,
  } as unknown as string[]);
  upstream.binaryType = "arraybuffer";
  socket.binaryType = "arraybuffer";
  const pending: (string | ArrayBuffer)[] = [];
  socket.onmessage = (event) => {
    if (upstream.readyState === WebSocket.OPEN) upstream.send(event.data);
    else pending.push(event.data);
  };
  upstream.onopen = () => {
    for (const message of pending.splice(0)) upstream.send(message);
  };
  upstream.onmessage = (event) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(event.data);
  };
  const closeBoth = (code?: number, reason?: string) => {
    for (const ws of [socket, upstream]) {
      if (ws.readyState === WebSocket.OPEN) {
        try {
          ws.close(code === 1005 || code === undefined ? 1000 : code, reason);
        } catch {
          ws.close();
        }
      }
    }
  };
  socket.onclose = (event) => closeBoth(event.code, event.reason);
  upstream.onclose = (event) => closeBoth(event.code, event.reason);
  upstream.onerror = () => closeBoth(1011, "backend unreachable");
  socket.onerror = () => closeBoth(1011);
  return response;
}
