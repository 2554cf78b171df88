/**
 * The block daemon's control socket: the worker attaches and detaches
 * grain volumes at run time, handing over each Volume's SturdyRef when the
 * grain starts, so one daemon (one storage vat) serves every grain of the
 * worker.
 *
 * Wire format: one JSON object a line each way, one request at a time per
 * connection.
 *
 * - `{"op":"attach","grain":G,"sizeBytes":N,"volumeRef":B64}` starts
 *   serving the volume and answers `{"ok":true,"socketPath":P,
 *   "exportName":E}`;
 * - `{"op":"detach","grain":G}` stops serving it once every dirty block is
 *   written back to storage and the lease is given up; `{"ok":true}`.
 *
 * A bad request gets `{"ok":false,"error":"..."}` and the connection lives
 * on. Exports live on a fixed set of socket paths (`slot-N.sock`), because
 * a process's unix socket permission names exact paths and grains are not
 * known when the daemon starts.
 *
 * @module
 */
import { z } from "zod";
import type { Logger } from "../runtime/log.ts";
import { BLOCK_BYTES } from "./block_store.ts";
import type { BlockDaemon } from "./daemon.ts";

/** A control request. */
export const ControlRequest = z.discriminatedUnion("op", [
  z.strictObject({
    op: z.literal("attach"),
    grain: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
    sizeBytes: z.number().int().positive().multipleOf(BLOCK_BYTES),
    volumeRef: z.string().min(1).max(4096),
  }),
  z.strictObject({
    op: z.literal("detach"),
    grain: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  }),
]);

/** A parsed control request. */
export type ControlRequest = z.infer<typeof ControlRequest>;

/** The name of slot `index`'s export (and socket file, with `.sock`). */
export function slotName(index: number): string {
  return `slot-${index}`;
}

/** What the control server needs of the daemon's configuration. */
export interface ControlOptions {
  daemon: BlockDaemon;
  slots: number;
  /** Registers what the store opener needs for an export before it is
   * started, and forgets it after it stopped. */
  register(exportName: string, sizeBytes: number, volumeRef: string): void;
  unregister(exportName: string): void;
  log: Logger;
}

/** See the module documentation. */
export class ControlServer {
  readonly #options: ControlOptions;
  /** Grain to slot index. */
  readonly #bySlot = new Map<string, number>();
  readonly #busy = new Set<string>();
  /** Grains whose detach failed to write back: never reported detached. */
  readonly #failed = new Set<string>();

  constructor(options: ControlOptions) {
    this.#options = options;
  }

  /** Serves connections until the listener closes. */
  async serve(listener: Deno.Listener): Promise<void> {
    for await (const conn of listener) {
      this.#handle(conn).catch((error) =>
        this.#options.log.warn("control-connection-failed", { error })
      );
    }
  }

  async #handle(conn: Deno.Conn): Promise<void> {
    const encoder = new TextEncoder();
    let buffered = "";
    try {
      for await (
        const chunk of conn.readable.pipeThrough(new TextDecoderStream())
      ) {
        buffered += chunk;
        if (buffered.length > 16_384) {
          throw new RangeError("control request longer than 16 KiB");
        }
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          const reply = await this.answer(line);
          const bytes = encoder.encode(JSON.stringify(reply) + "\n");
          for (let at = 0; at < bytes.length;) {
            at += await conn.write(bytes.subarray(at));
          }
        }
      }
    } finally {
      try {
        conn.close();
      } catch {
        // Closed by the stream already.
      }
    }
  }

  /** Answers one request line. */
  async answer(line: string): Promise<Record<string, unknown>> {
    let request: ControlRequest;
    try {
      request = ControlRequest.parse(JSON.parse(line));
    } catch (error) {
      return { ok: false, error: `bad control request: ${error}` };
    }
    if (this.#busy.has(request.grain)) {
      return { ok: false, error: `grain ${request.grain} is busy` };
    }
    this.#busy.add(request.grain);
    try {
      return request.op === "attach"
        ? await this.#attach(request)
        : await this.#detach(request.grain);
    } catch (error) {
      this.#options.log.warn("control-request-failed", {
        op: request.op,
        grain: request.grain,
        error,
      });
      return { ok: false, error: String(error) };
    } finally {
      this.#busy.delete(request.grain);
    }
  }

  async #attach(
    request: Extract<ControlRequest, { op: "attach" }>,
  ): Promise<Record<string, unknown>> {
    const { daemon } = this.#options;
    const known = this.#bySlot.get(request.grain);
    if (known !== undefined) {
      const name = slotName(known);
      return {
        ok: true,
        socketPath: daemon.socketPath(name),
        exportName: name,
      };
    }
    const used = new Set(this.#bySlot.values());
    let slot = 0;
    while (slot < this.#options.slots && used.has(slot)) slot++;
    if (slot === this.#options.slots) {
      return { ok: false, error: `all ${this.#options.slots} slots are used` };
    }
    const name = slotName(slot);
    this.#options.register(name, request.sizeBytes, request.volumeRef);
    try {
      await daemon.startGrain(name);
    } catch (error) {
      this.#options.unregister(name);
      throw error;
    }
    this.#bySlot.set(request.grain, slot);
    this.#options.log.info("volume-attached", { grain: request.grain, slot });
    return { ok: true, socketPath: daemon.socketPath(name), exportName: name };
  }

  async #detach(grain: string): Promise<Record<string, unknown>> {
    if (this.#failed.has(grain)) {
      return {
        ok: false,
        error: `grain ${grain}'s write-back failed: unflushed data is lost`,
      };
    }
    const slot = this.#bySlot.get(grain);
    if (slot === undefined) return { ok: true };
    const name = slotName(slot);
    try {
      await this.#options.daemon.stopGrain(name);
    } catch (error) {
      this.#failed.add(grain);
      throw error;
    }
    this.#bySlot.delete(grain);
    this.#options.unregister(name);
    this.#options.log.info("volume-detached", { grain, slot });
    return { ok: true };
  }
}
