/**
 * Grain sessions served by workers over Cap'n Proto: for a route whose
 * backend is `worker://host:port/grainId`, the gateway asks that worker
 * for the grain's UiView, opens one WebSession per session hostname (with
 * the user's name and permissions), and relays each HTTP request and
 * WebSocket to it.
 *
 * The HTTP <-> WebSession translation is the one the worker's supervisor
 * uses (services/worker/supervisor.ts: openWebSession, relayRequest,
 * relayWebSocket); it depends only on the RPC engine and the Sandstorm
 * schemas, and belongs in a shared module both roles import.
 *
 * @module
 */
import * as rpc from "../rpc/mod.ts";
import type { WebSession$Client } from "../../proto/gen/sandstorm/web-session.ts";
import { Worker, type Worker$Client } from "../../proto/gen/worker.ts";
import {
  openWebSession,
  relayRequest,
  relayWebSocket,
} from "../worker/supervisor.ts";
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

/** One WebSocket frame as a client sends it: final, masked. */
export function encodeClientFrame(
  opcode: number,
  payload: Uint8Array,
): Uint8Array {
  const length = payload.length;
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const frame = new Uint8Array(header + 4 + length);
  frame[0] = 0x80 | opcode;
  const view = new DataView(frame.buffer);
  if (length < 126) frame[1] = 0x80 | length;
  else if (length < 65536) {
    frame[1] = 0x80 | 126;
    view.setUint16(2, length);
  } else {
    frame[1] = 0x80 | 127;
    view.setBigUint64(2, BigInt(length));
  }
  const mask = crypto.getRandomValues(new Uint8Array(4));
  frame.set(mask, header);
  for (let i = 0; i < length; i++) {
    frame[header + 4 + i] = payload[i] ^ mask[i & 3];
  }
  return frame;
}

/** Largest message accepted from an app through the relay. */
const MAX_MESSAGE_BYTES = 16 << 20;

/**
 * Whole messages from a stream of raw server frames (unmasked, possibly
 * fragmented, split anywhere across chunks). Control frames come out as
 * they arrive; a malformed stream ends the iteration with an error.
 */
export async function* decodeServerFrames(
  chunks: ReadableStream<Uint8Array>,
): AsyncGenerator<{ opcode: number; payload: Uint8Array }> {
  let buffer = new Uint8Array(0);
  let fragments: Uint8Array[] = [];
  let fragmentOpcode = 0;
  let fragmentBytes = 0;
  for await (const chunk of chunks) {
    const joined = new Uint8Array(buffer.length + chunk.length);
    joined.set(buffer);
    joined.set(chunk, buffer.length);
    buffer = joined;
    while (buffer.length >= 2) {
      const view = new DataView(buffer.buffer, buffer.byteOffset);
      const fin = (buffer[0] & 0x80) !== 0;
      const opcode = buffer[0] & 0x0f;
      const masked = (buffer[1] & 0x80) !== 0;
      let length = buffer[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) break;
        length = view.getUint16(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) break;
        const long = view.getBigUint64(2);
        if (long > BigInt(MAX_MESSAGE_BYTES)) {
          throw new RangeError(`WebSocket frame of ${long} bytes is too big`);
        }
        length = Number(long);
        offset = 10;
      }
      const maskOffset = offset;
      if (masked) offset += 4;
      if (buffer.length < offset + length) break;
      const payload = buffer.slice(offset, offset + length);
      if (masked) {
        for (let i = 0; i < payload.length; i++) {
          payload[i] ^= buffer[maskOffset + (i & 3)];
        }
      }
      buffer = buffer.slice(offset + length);
      if (opcode >= 8) {
        yield { opcode, payload };
        continue;
      }
      if (opcode !== 0) {
        fragmentOpcode = opcode;
        fragments = [];
        fragmentBytes = 0;
      }
      fragments.push(payload);
      fragmentBytes += payload.length;
      if (fragmentBytes > MAX_MESSAGE_BYTES) {
        throw new RangeError(
          `WebSocket message over ${MAX_MESSAGE_BYTES} bytes`,
        );
      }
      if (fin) {
        const message = new Uint8Array(fragmentBytes);
        let at = 0;
        for (const part of fragments) {
          message.set(part, at);
          at += part.length;
        }
        fragments = [];
        fragmentBytes = 0;
        yield { opcode: fragmentOpcode, payload: message };
      }
    }
  }
}
