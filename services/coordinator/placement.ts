/**
 * Grain placement: which worker should run the next grain.
 *
 * A worker's load is one score in [0, 1], a weighted mean of its memory,
 * CPU and grain-count fractions. Workers sit in buckets by score, and a
 * bitmap of non-empty buckets finds the least-loaded bucket with a few
 * `Math.clz32` calls, so a placement costs about the same for 16 workers as
 * for 65,536. A placement moves the chosen worker to the bucket of its new
 * score, so equal workers take turns without any round-robin counter.
 *
 * Anti-affinity: a grain of an app flagged suspicious never lands on a
 * worker that runs a high-value grain, and a high-value grain never lands
 * on a worker that runs a suspicious one. Workers are kept in one bucket
 * index per class (clean, high-value, suspicious, mixed) so that each kind
 * of grain searches only the classes it may share a machine with.
 *
 * @module
 */

/** What a worker can hold. */
export interface WorkerCapacity {
  memoryBytes: number;
  cores: number;
  /** Grains the worker accepts at most, whatever its free memory. */
  maxGrains: number;
}

/** A worker's load, as its heartbeat reports it. */
export interface WorkerLoad {
  memoryUsedBytes: number;
  /** Busy cores, from 0 to `cores` (a load average). */
  cpuLoad: number;
  grains: number;
  /** Grains of high-value apps running there. */
  highValueGrains: number;
  /** Grains of apps flagged suspicious running there. */
  suspiciousGrains: number;
}

/** What a grain about to start needs and how it is flagged. */
export interface GrainNeeds {
  /** Memory the grain is expected to use. */
  memoryBytes: number;
  /** Its app is flagged suspicious: keep it away from high-value grains. */
  suspicious?: boolean;
  /** It holds data worth protecting: keep suspicious apps away from it. */
  highValue?: boolean;
}

/** How much each kind of load counts in a worker's score. */
export interface PlacementWeights {
  memory: number;
  cpu: number;
  grains: number;
}

/** Weights used when none are given: memory is what runs out first. */
export const DEFAULT_WEIGHTS: PlacementWeights = {
  memory: 0.5,
  cpu: 0.3,
  grains: 0.2,
};

/** Raised when no worker can take a grain. */
export class NoWorkerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoWorkerError";
  }
}

/** A worker as the index sees it. */
interface WorkerEntry {
  id: string;
  capacity: WorkerCapacity;
  load: WorkerLoad;
  /** Index of the class it is filed under, or -1 when not filed (full). */
  classIndex: number;
  bucket: number;
}

const CLEAN = 0;
const HIGH_VALUE = 1;
const SUSPICIOUS = 2;
const MIXED = 3;
const CLASS_NAMES = ["clean", "high-value", "suspicious", "mixed"] as const;

const NORMAL_CLASSES = [CLEAN, HIGH_VALUE, SUSPICIOUS, MIXED];
const SUSPICIOUS_CLASSES = [CLEAN, SUSPICIOUS];
const HIGH_VALUE_CLASSES = [CLEAN, HIGH_VALUE];

/** Number of score buckets; a power of 32 times 32 keeps the bitmap tidy. */
const BUCKETS = 1024;
const WORDS = BUCKETS / 32;

/** Workers of one class, bucketed by score. */
class BucketIndex {
  readonly buckets: Set<WorkerEntry>[] = Array.from(
    { length: BUCKETS },
    () => new Set(),
  );
  /** Bit b of word w is set when bucket 32w+b is non-empty. */
  readonly nonEmpty = new Uint32Array(WORDS);
  size = 0;

  add(entry: WorkerEntry): void {
    const bucket = this.buckets[entry.bucket];
    bucket.add(entry);
    this.size++;
    this.nonEmpty[entry.bucket >>> 5] |= 0x80000000 >>> (entry.bucket & 31);
  }

  delete(entry: WorkerEntry): void {
    const bucket = this.buckets[entry.bucket];
    if (!bucket.delete(entry)) {
      throw new Error(`placement index lost worker ${entry.id}`);
    }
    this.size--;
    if (bucket.size === 0) {
      this.nonEmpty[entry.bucket >>> 5] &=
        ~(0x80000000 >>> (entry.bucket & 31));
    }
  }

  /** The first non-empty bucket at or after `from`, or -1. */
  nextBucket(from: number): number {
    let word = from >>> 5;
    if (word >= WORDS) return -1;
    let bits = this.nonEmpty[word] & (0xffffffff >>> (from & 31));
    while (bits === 0) {
      word++;
      if (word >= WORDS) return -1;
      bits = this.nonEmpty[word];
    }
    return (word << 5) + Math.clz32(bits);
  }
}

function fits(entry: WorkerEntry, needs: GrainNeeds): boolean {
  return entry.load.grains < entry.capacity.maxGrains &&
    entry.load.memoryUsedBytes + needs.memoryBytes <=
      entry.capacity.memoryBytes;
}

function classOf(load: WorkerLoad): number {
  if (load.highValueGrains > 0) {
    return load.suspiciousGrains > 0 ? MIXED : HIGH_VALUE;
  }
  return load.suspiciousGrains > 0 ? SUSPICIOUS : CLEAN;
}

function eligibleClasses(needs: GrainNeeds): number[] {
  if (needs.suspicious && needs.highValue) {
    throw new RangeError(
      "a grain cannot be both suspicious and high-value: expected one flag",
    );
  }
  if (needs.suspicious) return SUSPICIOUS_CLASSES;
  if (needs.highValue) return HIGH_VALUE_CLASSES;
  return NORMAL_CLASSES;
}

function checkCapacity(id: string, capacity: WorkerCapacity): void {
  for (const name of ["memoryBytes", "cores", "maxGrains"] as const) {
    const value = capacity[name];
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(
        `worker ${id}: capacity.${name} is ${value}, expected a positive number`,
      );
    }
  }
}

function checkLoad(id: string, load: WorkerLoad): void {
  for (
    const name of [
      "memoryUsedBytes",
      "cpuLoad",
      "grains",
      "highValueGrains",
      "suspiciousGrains",
    ] as const
  ) {
    const value = load[name];
    if (!Number.isFinite(value) || value < 0) {
      throw new RangeError(
        `worker ${id}: load.${name} is ${value}, expected a number >= 0`,
      );
    }
  }
}

/** An idle worker's load. */
export function idleLoad(): WorkerLoad {
  return {
    memoryUsedBytes: 0,
    cpuLoad: 0,
    grains: 0,
    highValueGrains: 0,
    suspiciousGrains: 0,
  };
}

/**
 * A worker's score: 0 idle, 1 full. Each fraction is clamped to [0, 1] so a
 * worker reporting more than its capacity counts as full, not as more.
 */
export function loadScore(
  capacity: WorkerCapacity,
  load: WorkerLoad,
  weights: PlacementWeights = DEFAULT_WEIGHTS,
): number {
  const clamp = (x: number) => (x < 0 ? 0 : x > 1 ? 1 : x);
  const total = weights.memory + weights.cpu + weights.grains;
  return (weights.memory * clamp(load.memoryUsedBytes / capacity.memoryBytes) +
    weights.cpu * clamp(load.cpuLoad / capacity.cores) +
    weights.grains * clamp(load.grains / capacity.maxGrains)) / total;
}

/**
 * Decides where grains run, from the workers' reported loads.
 *
 * @example
 * ```ts
 * import { PlacementIndex } from "./placement.ts";
 * const index = new PlacementIndex();
 * const capacity = { memoryBytes: 8e9, cores: 4, maxGrains: 100 };
 * index.addWorker("w1", capacity);
 * index.addWorker("w2", capacity);
 * const first = index.place({ memoryBytes: 1e9 });
 * const second = index.place({ memoryBytes: 1e9 });
 * if (first === second) throw new Error("load was ignored");
 * ```
 */
export class PlacementIndex {
  readonly #weights: PlacementWeights;
  readonly #workers = new Map<string, WorkerEntry>();
  readonly #classes = [
    new BucketIndex(),
    new BucketIndex(),
    new BucketIndex(),
    new BucketIndex(),
  ];

  constructor(weights: PlacementWeights = DEFAULT_WEIGHTS) {
    const sum = weights.memory + weights.cpu + weights.grains;
    if (
      !(weights.memory >= 0 && weights.cpu >= 0 && weights.grains >= 0) ||
      !(sum > 0)
    ) {
      throw new RangeError(
        `placement weights ${
          JSON.stringify(weights)
        } must be >= 0 with a positive sum`,
      );
    }
    this.#weights = weights;
  }

  /** Number of workers known, full or not. */
  get size(): number {
    return this.#workers.size;
  }

  has(id: string): boolean {
    return this.#workers.has(id);
  }

  /** A copy of a worker's load as the index currently counts it. */
  load(id: string): WorkerLoad | undefined {
    const entry = this.#workers.get(id);
    return entry === undefined ? undefined : { ...entry.load };
  }

  /** Adds a worker, or replaces its capacity and load if known. */
  addWorker(
    id: string,
    capacity: WorkerCapacity,
    load: WorkerLoad = idleLoad(),
  ): void {
    checkCapacity(id, capacity);
    checkLoad(id, load);
    this.removeWorker(id);
    const entry: WorkerEntry = {
      id,
      capacity: { ...capacity },
      load: { ...load },
      classIndex: -1,
      bucket: 0,
    };
    this.#workers.set(id, entry);
    this.#file(entry);
  }

  /** Forgets a worker (it died or is draining). Unknown IDs are ignored. */
  removeWorker(id: string): boolean {
    const entry = this.#workers.get(id);
    if (entry === undefined) return false;
    this.#unfile(entry);
    this.#workers.delete(id);
    return true;
  }

  /** Replaces a worker's load with what its heartbeat reported. */
  updateLoad(id: string, load: WorkerLoad): void {
    const entry = this.#workers.get(id);
    if (entry === undefined) {
      throw new RangeError(`unknown worker ${JSON.stringify(id)}`);
    }
    checkLoad(id, load);
    this.#unfile(entry);
    entry.load = { ...load };
    this.#file(entry);
  }

  /**
   * Picks the least-loaded worker that may run the grain and counts the
   * grain on it until the worker's next load report.
   */
  place(needs: GrainNeeds): string {
    if (!Number.isFinite(needs.memoryBytes) || needs.memoryBytes < 0) {
      throw new RangeError(
        `grain memoryBytes is ${needs.memoryBytes}, expected a number >= 0`,
      );
    }
    let best: WorkerEntry | undefined;
    for (const classIndex of eligibleClasses(needs)) {
      const candidate = this.#firstFit(
        this.#classes[classIndex],
        needs,
        best?.bucket ?? BUCKETS,
      );
      if (candidate !== undefined) best = candidate;
    }
    if (best === undefined) {
      throw new NoWorkerError(
        `no worker of ${this.#workers.size} can take a grain needing ${needs.memoryBytes} bytes` +
          (needs.suspicious ? " away from high-value grains" : "") +
          (needs.highValue ? " away from suspicious grains" : ""),
      );
    }
    this.#unfile(best);
    best.load.memoryUsedBytes += needs.memoryBytes;
    best.load.grains += 1;
    if (needs.highValue) best.load.highValueGrains += 1;
    if (needs.suspicious) best.load.suspiciousGrains += 1;
    this.#file(best);
    return best.id;
  }

  /** Takes a grain that stopped off a worker's count. */
  release(id: string, needs: GrainNeeds): void {
    const entry = this.#workers.get(id);
    if (entry === undefined) return;
    this.#unfile(entry);
    const load = entry.load;
    load.memoryUsedBytes = Math.max(
      0,
      load.memoryUsedBytes - needs.memoryBytes,
    );
    load.grains = Math.max(0, load.grains - 1);
    if (needs.highValue) {
      load.highValueGrains = Math.max(0, load.highValueGrains - 1);
    }
    if (needs.suspicious) {
      load.suspiciousGrains = Math.max(0, load.suspiciousGrains - 1);
    }
    this.#file(entry);
  }

  /** The class a worker is filed under, for tests and status pages. */
  classOf(id: string): (typeof CLASS_NAMES)[number] | "full" | undefined {
    const entry = this.#workers.get(id);
    if (entry === undefined) return undefined;
    return entry.classIndex < 0 ? "full" : CLASS_NAMES[entry.classIndex];
  }

  /**
   * The first worker that fits, walking buckets from the lowest score up
   * but only below `limitBucket` (a better candidate from another class
   * already sits there). Workers skipped for lack of memory stay where they
   * are; in a cluster of very uneven machines this walk can grow, which is
   * why full workers (at maxGrains) are not filed at all.
   */
  #firstFit(
    index: BucketIndex,
    needs: GrainNeeds,
    limitBucket: number,
  ): WorkerEntry | undefined {
    if (index.size === 0) return undefined;
    let bucket = index.nextBucket(0);
    while (bucket >= 0 && bucket < limitBucket) {
      for (const entry of index.buckets[bucket]) {
        if (fits(entry, needs)) return entry;
      }
      bucket = index.nextBucket(bucket + 1);
    }
    return undefined;
  }

  #file(entry: WorkerEntry): void {
    if (entry.load.grains >= entry.capacity.maxGrains) {
      entry.classIndex = -1;
      return;
    }
    const score = loadScore(entry.capacity, entry.load, this.#weights);
    entry.bucket = Math.min(BUCKETS - 1, Math.floor(score * BUCKETS));
    entry.classIndex = classOf(entry.load);
    this.#classes[entry.classIndex].add(entry);
  }

  #unfile(entry: WorkerEntry): void {
    if (entry.classIndex >= 0) this.#classes[entry.classIndex].delete(entry);
    entry.classIndex = -1;
  }
}

/**
 * The same decision as {@link PlacementIndex.place} by scanning every
 * worker: the baseline the benchmark measures the index against, and the
 * reference the tests compare it with.
 */
export function placeByLinearScan(
  workers: Map<string, { capacity: WorkerCapacity; load: WorkerLoad }>,
  needs: GrainNeeds,
  weights: PlacementWeights = DEFAULT_WEIGHTS,
): string {
  const allowed = new Set(eligibleClasses(needs));
  let bestId: string | undefined;
  let bestScore = Infinity;
  for (const [id, worker] of workers) {
    const { capacity, load } = worker;
    if (!allowed.has(classOf(load))) continue;
    if (load.grains >= capacity.maxGrains) continue;
    if (load.memoryUsedBytes + needs.memoryBytes > capacity.memoryBytes) {
      continue;
    }
    const score = loadScore(capacity, load, weights);
    if (score < bestScore) {
      bestScore = score;
      bestId = id;
    }
  }
  if (bestId === undefined) {
    throw new NoWorkerError(`no worker of ${workers.size} can take the grain`);
  }
  const load = workers.get(bestId)!.load;
  load.memoryUsedBytes += needs.memoryBytes;
  load.grains += 1;
  if (needs.highValue) load.highValueGrains += 1;
  if (needs.suspicious) load.suspiciousGrains += 1;
  return bestId;
}
