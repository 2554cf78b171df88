/**
 * Grain sessions served by workers over Cap'n Proto: for a route whose
 * backend is `worker://host:port/grainId`, the gateway asks that worker
 * for the grain's UiView, opens one WebSession per session hostname (with
 * the user's name and permissions), and relays each HTTP request and
 * WebSocket to it.
 *
 * The HTTP <-> WebSession translation and the WebSocket framing come from
 * the shared services/web_session/ module, which the worker's supervisor
 * uses too.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import type { WebSession$Client } from "../../proto/gen/sandstorm/web-session.ts";
import { Worker, type Worker$Client } from "../../proto/gen/worker.ts";
import {
  decodeServerFrames,
  encodeClientFrame,
  openWebSession,
  relayRequest,
  relayWebSocket,
} from "../web_session/mod.ts";
import type { GrainRoute } from "./proxy.ts";

const BACKEND =
  /^worker:\/\/([0-9A-Za-z.\-]+):(\d{1,5})\/([A-Za-z0-9_-]{1,64})$/;

/** Whether a route's backend is a worker's grain. */
export function isWorkerBackend(backend: string): boolean {
  return BACKEND.test(backend);
}

interface WorkerLink {
  connection: rpc.RpcConnection;
  worker: Worker$Client;
}

interface OpenSession {
  session: Promise<WebSession$Client>;
  address: string;
  expiresAt: number;
}

/** WebSessions on workers, one per grain session hostname. */
export class WorkerSessions {
  readonly #links = new Map<string, Promise<WorkerLink>>();
  readonly #sessions = new Map<string, OpenSession>();

  #link(address: string, hostname: string, port: number): Promise<WorkerLink> {
    let link = this.#links.get(address);
    if (link === undefined) {
      link = (async () => {
        const connection = new rpc.RpcConnection(
          await rpc.connectTcp({ hostname, port }),
        );
        connection.closed.then(() => this.#forget(address));
        return { connection, worker: rpc.bootstrap(connection, Worker) };
      })();
      link.catch(() => this.#links.delete(address));
      this.#links.set(address, link);
    }
    return link;
  }

  /** Drops a worker's connection and every session opened through it. */
  #forget(address: string): void {
    this.#links.delete(address);
    for (const [label, open] of this.#sessions) {
      if (open.address === address) {
        this.#sessions.delete(label);
        open.session.then(rpc.release, () => {});
      }
    }
  }

  #session(label: string, route: GrainRoute, baseUrl: string) {
    const open = this.#sessions.get(label);
    if (open !== undefined) return open.session;
    const [, hostname, port, grainId] = BACKEND.exec(route.backend)!;
    const address = `${hostname}:${port}`;
    const session = (async () => {
      const { worker } = await this.#link(address, hostname, Number(port));
      const result = await worker.getView((p) => p.grainId = grainId)
        .promise();
      const view = rpc.retain(result.view);
      try {
        return await openWebSession(view, {
          displayName: route.userName,
          // From the shell; without it, the default roles' two flags:
          // write, then view.
          permissions: route.permissions ?? [route.canWrite, true],
        }, { basePath: baseUrl });
      } finally {
        rpc.release(view);
      }
    })();
    session.catch(() => this.#sessions.delete(label));
    this.#sessions.set(label, {
      session,
      address,
      expiresAt: route.expiresAt,
    });
    return session;
  }

  /** Relays one request of a grain session. */
  async fetch(
    label: string,
    route: GrainRoute,
    baseUrl: string,
    request: Request,
  ): Promise<Response> {
    this.sweep();
    const session = await this.#session(label, route, baseUrl);
    return await relayRequest(session, request);
  }

  /** Joins the browser's WebSocket to one the app opens on its session. */
  async webSocket(
    label: string,
    route: GrainRoute,
    baseUrl: string,
    request: Request,
  ): Promise<Response> {
    const session = await this.#session(label, route, baseUrl);
    const url = new URL(request.url);
    const protocols = (request.headers.get("sec-websocket-protocol") ?? "")
      .split(",").map((p) => p.trim()).filter((p) => p !== "");
    const relayed = await relayWebSocket(
      session,
      url.pathname + url.search,
      protocols,
    );
    const { socket, response } = Deno.upgradeWebSocket(request, {
      protocol: relayed.protocols[0],
    });
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      const payload = typeof event.data === "string"
        ? new TextEncoder().encode(event.data)
        : new Uint8Array(event.data as ArrayBuffer);
      relayed.send(encodeClientFrame(
        typeof event.data === "string" ? 1 : 2,
        payload,
      )).catch(() => socket.close(1011));
    };
    socket.onclose = () => {
      relayed.send(encodeClientFrame(8, new Uint8Array())).catch(() => {})
        .finally(() => relayed.close());
    };
    (async () => {
      for await (const message of decodeServerFrames(relayed.frames)) {
        if (socket.readyState !== WebSocket.OPEN) break;
        if (message.opcode === 8) break;
        socket.send(
          message.opcode === 1
            ? new TextDecoder().decode(message.payload)
            : message.payload,
        );
      }
    })().catch(() => {}).finally(() => {
      if (socket.readyState === WebSocket.OPEN) socket.close(1000);
      relayed.close();
    });
    return response;
  }

  /** Releases sessions whose route has expired. */
  sweep(now = Date.now()): void {
    for (const [label, open] of this.#sessions) {
      if (open.expiresAt < now) {
        this.#sessions.delete(label);
        open.session.then(rpc.release, () => {});
      }
    }
  }

  close(): void {
    for (const [label, open] of this.#sessions) {
      this.#sessions.delete(label);
      open.session.then(rpc.release, () => {});
    }
    for (const link of this.#links.values()) {
      link.then((l) => l.connection.close(), () => {});
    }
    this.#links.clear();
  }
}
