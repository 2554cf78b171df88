/**
 * A coordinator: starts grains on workers chosen by load, and starts them
 * again elsewhere when their worker dies or drains.
 *
 * Where a grain runs is a record in the {@link SharedStateStore}, keyed by
 * grain ID, holding its worker and an epoch that grows with every move. A
 * coordinator moves a grain only by compare-and-set on that record, so any
 * number of coordinators may act at once and exactly one wins each move;
 * the epoch goes to the worker, which takes the grain's volume lease with
 * it, so that storage fences out the worker that held an older epoch.
 *
 * A coordinator's own memory holds only what it can rebuild: the workers
 * it hears heartbeats from and their loads. Killing a coordinator loses
 * nothing; another one reads the same records.
 *
 * @module
 */
import type { Logger } from "../runtime/log.ts";
import {
  type GrainNeeds,
  NoWorkerError,
  PlacementIndex,
  type PlacementWeights,
  type WorkerCapacity,
  type WorkerLoad,
} from "./placement.ts";
import type { SharedStateStore } from "./shared_state.ts";

/** Where a grain runs, as the shared state records it. */
export interface GrainRecord {
  grainId: string;
  /** The worker running it, or null while stopped. */
  workerId: string | null;
  /** Grows by one each time the grain is (re)started anywhere. */
  epoch: number;
  needs: GrainNeeds;
  /** What the worker needs to start the grain, base64, passed through. */
  spec: string;
}

/** How a coordinator reaches one worker. Over RPC in the cluster. */
export interface WorkerHandle {
  /** Starts (or confirms) the grain at this epoch; the worker takes the
   * grain's volume lease at that epoch before answering. */
  startGrain(
    grainId: string,
    epoch: number,
    needs: GrainNeeds,
    spec: Uint8Array,
  ): Promise<void>;
  /** Stops the grain after flushing its volume. */
  stopGrain(grainId: string): Promise<void>;
  /** Drops the handle (an RPC reference) when the worker is forgotten. */
  close?(): void;
}

/** A heartbeat as a worker sends it to every coordinator. */
export interface Heartbeat {
  workerId: string;
  capacity: WorkerCapacity;
  load: WorkerLoad;
}

/** Options of {@link Coordinator}. */
export interface CoordinatorOptions {
  state: SharedStateStore;
  /** Makes a handle for a worker whose heartbeat brought none. */
  connect?(workerId: string): WorkerHandle;
  log: Logger;
  /** A worker silent for this long is dead. */
  heartbeatTimeoutMs?: number;
  weights?: PlacementWeights;
  /** The clock; tests and simulations pass their own. */
  now?: () => number;
}

/** Raised when a grain could not be started after every retry. */
export class GrainStartError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "GrainStartError";
  }
}

const GRAIN_PREFIX = "grain/";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function decodeRecord(bytes: Uint8Array): GrainRecord {
  const record = JSON.parse(decoder.decode(bytes)) as GrainRecord;
  if (typeof record.grainId !== "string" || typeof record.epoch !== "number") {
    throw new Error(`malformed grain record ${decoder.decode(bytes)}`);
  }
  return record;
}

function encodeBase64(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

function decodeBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function checkGrainId(grainId: string): void {
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(grainId)) {
    throw new RangeError(
      `grain ID ${
        JSON.stringify(grainId)
      } must be 1 to 128 letters, digits, '-' or '_'`,
    );
  }
}

interface WorkerState {
  lastHeartbeatMs: number;
  handle: WorkerHandle;
  draining: boolean;
}

/** The placement half of the coordinator role. */
export class Coordinator {
  readonly #state: SharedStateStore;
  readonly #connect: ((workerId: string) => WorkerHandle) | undefined;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #now: () => number;
  readonly #placement: PlacementIndex;
  readonly #workers = new Map<string, WorkerState>();
  readonly #startedMs: number;

  constructor(options: CoordinatorOptions) {
    this.#state = options.state;
    this.#connect = options.connect;
    this.#log = options.log;
    this.#timeoutMs = options.heartbeatTimeoutMs ?? 3000;
    this.#now = options.now ?? (() => performance.now());
    this.#placement = new PlacementIndex(options.weights);
    this.#startedMs = this.#now();
  }

  /** Records a worker's heartbeat; the first one makes it eligible. */
  heartbeat(beat: Heartbeat, handle?: WorkerHandle): void {
    const known = this.#workers.get(beat.workerId);
    if (known === undefined) {
      const resolved = handle ?? this.#connect?.(beat.workerId);
      if (resolved === undefined) {
        throw new RangeError(
          `worker ${beat.workerId} sent no handle and none can be made`,
        );
      }
      this.#workers.set(beat.workerId, {
        lastHeartbeatMs: this.#now(),
        handle: resolved,
        draining: false,
      });
      this.#placement.addWorker(beat.workerId, beat.capacity, beat.load);
      this.#log.info("worker-joined", { worker: beat.workerId });
      return;
    }
    known.lastHeartbeatMs = this.#now();
    if (handle !== undefined && handle !== known.handle) {
      // A restarted worker process brings a new handle.
      known.handle.close?.();
      known.handle = handle;
    }
    if (known.draining) return;
    if (this.#placement.has(beat.workerId)) {
      this.#placement.updateLoad(beat.workerId, beat.load);
    } else {
      this.#placement.addWorker(beat.workerId, beat.capacity, beat.load);
    }
  }

  /** Whether the worker is known (alive or draining). */
  hasWorker(workerId: string): boolean {
    return this.#workers.has(workerId);
  }

  /** Workers this coordinator considers alive. */
  liveWorkers(): string[] {
    return [...this.#workers.keys()];
  }

  /** The shared record of a grain, if it was ever started. */
  async locate(grainId: string): Promise<GrainRecord | null> {
    checkGrainId(grainId);
    const stored = await this.#state.get(GRAIN_PREFIX + grainId);
    return stored === null ? null : decodeRecord(stored.value);
  }

  /** Every grain record (for status pages and failover). */
  async grains(): Promise<GrainRecord[]> {
    const rows = await this.#state.list(GRAIN_PREFIX);
    return rows.map((row) => decodeRecord(row.value));
  }

  /**
   * Returns where the grain runs, starting it on the least-loaded worker
   * if it is not running on a live one. Safe to call from any coordinator
   * at any time: losing a compare-and-set means another coordinator moved
   * the grain, and the loop then looks again.
   */
  async openGrain(
    grainId: string,
    needs: GrainNeeds,
    spec: Uint8Array = new Uint8Array(),
  ): Promise<GrainRecord> {
    checkGrainId(grainId);
    const key = GRAIN_PREFIX + grainId;
    const failed = new Set<string>();
    for (let attempt = 0; attempt < 8; attempt++) {
      const stored = await this.#state.get(key);
      const current = stored === null ? null : decodeRecord(stored.value);
      if (
        current?.workerId != null && this.#isUsable(current.workerId) &&
        !failed.has(current.workerId)
      ) {
        return current;
      }
      const workerId = this.#placeAvoiding(needs, failed);
      const record: GrainRecord = {
        grainId,
        workerId,
        epoch: (current?.epoch ?? 0) + 1,
        needs: current?.needs ?? needs,
        spec: current?.spec ?? encodeBase64(spec),
      };
      const result = await this.#state.compareAndSet(
        key,
        stored?.version ?? 0,
        encoder.encode(JSON.stringify(record)),
      );
      if (!result.ok) {
        this.#placement.release(workerId, needs);
        continue;
      }
      try {
        await this.#workers.get(workerId)!.handle.startGrain(
          grainId,
          record.epoch,
          record.needs,
          decodeBase64(record.spec),
        );
      } catch (error) {
        this.#log.warn("grain-start-failed", {
          grain: grainId,
          worker: workerId,
          error,
        });
        failed.add(workerId);
        // The record must not name a worker that does not run the grain,
        // or the next open would trust it. Losing this race is fine: then
        // another coordinator has already moved the grain.
        await this.#state.compareAndSet(
          key,
          result.version,
          encoder.encode(JSON.stringify({ ...record, workerId: null })),
        );
        continue;
      }
      this.#log.info("grain-started", {
        grain: grainId,
        worker: workerId,
        epoch: record.epoch,
        moved: current?.workerId ?? null,
      });
      return record;
    }
    throw new GrainStartError(
      `grain ${grainId} could not be started: workers ${
        [...failed].join(", ") || "(none)"
      } failed and the record kept changing`,
    );
  }

  /**
   * Declares dead every worker silent for longer than the heartbeat
   * timeout and starts its grains elsewhere. Returns the grains moved.
   */
  async checkWorkers(): Promise<GrainRecord[]> {
    const now = this.#now();
    const dead: string[] = [];
    for (const [id, worker] of this.#workers) {
      if (now - worker.lastHeartbeatMs > this.#timeoutMs) dead.push(id);
    }
    for (const id of dead) {
      this.#workers.get(id)!.handle.close?.();
      this.#workers.delete(id);
      this.#placement.removeWorker(id);
      this.#log.warn("worker-dead", { worker: id });
    }
    if (dead.length === 0) return [];
    const deadSet = new Set(dead);
    const orphans = (await this.grains()).filter((record) =>
      record.workerId !== null && deadSet.has(record.workerId)
    );
    return await this.#restartAll(orphans);
  }

  /**
   * Moves every grain off a worker before it leaves the cluster: each
   * grain starts on another worker first and is then stopped on this one,
   * so a user's next request finds it running.
   */
  async drainWorker(workerId: string): Promise<GrainRecord[]> {
    // A worker this coordinator never heard from may still hold grains in
    // the shared records (placed by another coordinator): those move too,
    // and only a known worker is asked to stop them.
    const worker = this.#workers.get(workerId);
    if (worker !== undefined) worker.draining = true;
    this.#placement.removeWorker(workerId);
    const grains = (await this.grains()).filter((r) => r.workerId === workerId);
    const moved = await this.#restartAll(grains);
    if (worker === undefined) return moved;
    for (const record of grains) {
      try {
        await worker.handle.stopGrain(record.grainId);
      } catch (error) {
        this.#log.warn("grain-stop-failed", {
          grain: record.grainId,
          worker: workerId,
          error,
        });
      }
    }
    this.#log.info("worker-drained", {
      worker: workerId,
      grains: moved.length,
    });
    return moved;
  }

  /** Forgets a worker that was drained and left. */
  forgetWorker(workerId: string): void {
    this.#workers.get(workerId)?.handle.close?.();
    this.#workers.delete(workerId);
    this.#placement.removeWorker(workerId);
  }

  async #restartAll(records: GrainRecord[]): Promise<GrainRecord[]> {
    const moved = await Promise.all(records.map(async (record) => {
      try {
        return await this.openGrain(
          record.grainId,
          record.needs,
          decodeBase64(record.spec),
        );
      } catch (error) {
        this.#log.error("grain-restart-failed", {
          grain: record.grainId,
          error,
        });
        return null;
      }
    }));
    return moved.filter((r): r is GrainRecord => r !== null);
  }

  #isUsable(workerId: string): boolean {
    const worker = this.#workers.get(workerId);
    if (worker === undefined) {
      // A coordinator that just started has not heard every worker yet; it
      // trusts the record until a full heartbeat timeout has passed.
      return this.#now() - this.#startedMs <= this.#timeoutMs;
    }
    return worker !== undefined && !worker.draining &&
      this.#now() - worker.lastHeartbeatMs <= this.#timeoutMs;
  }

  #placeAvoiding(needs: GrainNeeds, failed: Set<string>): string {
    // A worker that failed this grain leaves the index; its next heartbeat
    // files it again, with the load it then reports.
    for (const id of failed) this.#placement.removeWorker(id);
    try {
      return this.#placement.place(needs);
    } catch (error) {
      if (error instanceof NoWorkerError) {
        throw new GrainStartError(
          `no live worker can take the grain: ${error.message}`,
          { cause: error },
        );
      }
      throw error;
    }
  }
}
