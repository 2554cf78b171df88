/**
 * How a grain's file descriptor 3 reaches the worker. Deno cannot hand an
 * extra descriptor to a child, so the grain's launcher (a root bash, before
 * it drops to the grain's uid and starts bubblewrap) opens a TCP
 * connection to this hub on loopback, writes the grain's one-time token
 * and a newline, and leaves the connection on fd 3 for the app. The hub
 * matches the token and gives the connection to whoever awaits it.
 *
 * The connection exists before the grain's network namespace does, so it
 * is the grain's one way out; the namespace itself has only loopback.
 *
 * @module
 */

const TOKEN_BYTES = 16;
const TOKEN_LINE_BYTES = TOKEN_BYTES * 2 + 1;

/** Accepts grain connections on 127.0.0.1 and routes them by token. */
export class ApiSocketHub {
  #listener: Deno.TcpListener;
  #waiting = new Map<string, PromiseWithResolvers<Deno.TcpConn>>();
  #closed = false;
  readonly accepting: Promise<void>;

  private constructor(listener: Deno.TcpListener) {
    this.#listener = listener;
    this.accepting = this.#acceptLoop();
  }

  /** Listens on an ephemeral loopback port. */
  static open(): ApiSocketHub {
    return new ApiSocketHub(
      Deno.listen({ hostname: "127.0.0.1", port: 0 }),
    );
  }

  get port(): number {
    return this.#listener.addr.port;
  }

  /**
   * A fresh token and the connection that will present it. Cancel with
   * `forget(token)` if the grain never starts.
   */
  expect(): { token: string; connection: Promise<Deno.TcpConn> } {
    const bytes = crypto.getRandomValues(new Uint8Array(TOKEN_BYTES));
    const token = [...bytes].map((b) => b.toString(16).padStart(2, "0"))
      .join("");
    const waiter = Promise.withResolvers<Deno.TcpConn>();
    waiter.promise.catch(() => {});
    this.#waiting.set(token, waiter);
    return { token, connection: waiter.promise };
  }

  /** Stops waiting for a token; its promise rejects with `reason`. */
  forget(token: string, reason: Error): void {
    this.#waiting.get(token)?.reject(reason);
    this.#waiting.delete(token);
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return;
      }
      this.#admit(conn).catch(() => {
        try {
          conn.close();
        } catch { /* already closed */ }
      });
    }
  }

  async #admit(conn: Deno.TcpConn): Promise<void> {
    conn.setNoDelay(true);
    // Read exactly the token line, byte for byte, so that nothing the app
    // sends after it is consumed here.
    const line = new Uint8Array(TOKEN_LINE_BYTES);
    let filled = 0;
    const deadline = setTimeout(() => conn.close(), 5_000);
    try {
      while (filled < line.length) {
        const n = await conn.read(line.subarray(filled));
        if (n === null) throw new Error("closed before its token");
        filled += n;
      }
    } finally {
      clearTimeout(deadline);
    }
    const token = new TextDecoder().decode(line.subarray(0, -1));
    const waiter = this.#waiting.get(token);
    if (line[line.length - 1] !== 0x0a || waiter === undefined) {
      throw new Error("unknown grain token");
    }
    this.#waiting.delete(token);
    waiter.resolve(conn);
  }

  close(): void {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const waiter of this.#waiting.values()) {
      waiter.reject(new Error("worker is shutting down"));
    }
    this.#waiting.clear();
  }
}
