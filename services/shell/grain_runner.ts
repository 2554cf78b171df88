/**
 * How the shell gets a grain running and learns where its web session is.
 *
 * In the cluster the shell asks a coordinator, which picks a worker; the
 * worker starts the grain and serves its WebSession. The shell only needs
 * the answer "send this session's HTTP to here", which it records so that
 * the gateway can route the session's hostname.
 *
 * Three runners exist: `worker` (worker_client.ts), which starts grains
 * on a worker role over proto/worker.capnp; `none`, which refuses to open
 * grains with a clear message (the shell still signs in, installs apps and
 * manages grains); and `http`, which talks to a runner service over a
 * small JSON protocol on loopback (the tests' wiring uses it):
 *
 *   POST   {url}/grains/{id}/open   {packageId, packagePath, canWrite}
 *                                   -> {backend: "http://host:port/prefix"}
 *   GET    {url}/grains/{id}/size   -> {sizeBytes}
 *   DELETE {url}/grains/{id}
 *
 * @module
 */
import type { AppRole, Grain } from "./repo/types.ts";

/** Raised when a grain cannot be opened; the message is for people. */
export class GrainUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GrainUnavailableError";
  }
}

/** What a runner reports about the machine(s) and grains it runs. */
export interface RunnerUsage {
  machines: {
    name: string;
    memoryTotalBytes: number;
    memoryAvailableBytes: number;
    grainMemoryBytes: number;
    runningGrains: number;
    load1: number;
  }[];
  /** By grain ID. */
  grains: Map<string, { state: string; memoryBytes: number }>;
}

/** Starts grains and tells where their sessions are served. */
export interface GrainRunner {
  readonly kind: string;
  /** Starts the grain if needed; returns the base URL of its web session. */
  open(grain: Grain, packagePath: string): Promise<string>;
  /** Bytes the grain's storage holds, or undefined if unknown. */
  sizeOf(grainId: string): Promise<number | undefined>;
  /** Stops the grain and deletes its data. */
  destroy(grainId: string): Promise<void>;
  /** Resource use, for the admin page; undefined if the runner has none. */
  usage?(): Promise<RunnerUsage | undefined>;
  /** The roles a running grain's app declares (UiView.getViewInfo); an
   * empty list if it declares none. */
  declaredRoles?(grainId: string): Promise<AppRole[]>;
}

/** A runner for a shell with no worker to run grains on. */
export const noRunner: GrainRunner = {
  kind: "none",
  open() {
    return Promise.reject(
      new GrainUnavailableError(
        "No worker is available to run grains on this Blackrock.",
      ),
    );
  },
  sizeOf: () => Promise.resolve(undefined),
  destroy: () => Promise.resolve(),
};

/** The runner protocol over HTTP on loopback (see the module comment). */
export class HttpGrainRunner implements GrainRunner {
  readonly kind = "http";
  readonly #url: string;

  constructor(url: string) {
    this.#url = url.replace(/\/$/, "");
  }

  async open(grain: Grain, packagePath: string): Promise<string> {
    let response: Response;
    try {
      response = await fetch(`${this.#url}/grains/${grain.id}/open`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          packageId: grain.packageId,
          packagePath,
        }),
      });
    } catch (error) {
      const cause = (error as Error).cause;
      if (
        cause instanceof Deno.errors.ConnectionRefused ||
        /refused/i.test(`${(error as Error).message} ${cause}`)
      ) {
        throw new GrainUnavailableError(
          `No worker is running on this Blackrock yet: nothing answers at ${this.#url}.`,
        );
      }
      throw new GrainUnavailableError(
        `The grain runner cannot be reached (${(error as Error).message}).`,
      );
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.backend !== "string") {
      throw new GrainUnavailableError(
        `The grain could not be started: ${
          body.error ?? `runner answered ${response.status}`
        }`,
      );
    }
    return body.backend;
  }

  async sizeOf(grainId: string): Promise<number | undefined> {
    try {
      const response = await fetch(`${this.#url}/grains/${grainId}/size`);
      if (!response.ok) {
        await response.body?.cancel();
        return undefined;
      }
      const body = await response.json();
      return typeof body.sizeBytes === "number" ? body.sizeBytes : undefined;
    } catch {
      return undefined;
    }
  }

  async destroy(grainId: string): Promise<void> {
    const response = await fetch(`${this.#url}/grains/${grainId}`, {
      method: "DELETE",
    });
    await response.body?.cancel();
    if (!response.ok && response.status !== 404) {
      throw new GrainUnavailableError(
        `The grain runner could not delete the grain (${response.status}).`,
      );
    }
  }
}
