/**
 * Runs the storage behaviours against a real Ceph radosgw from
 * tests/fixtures/s3.ts: one shared cluster per test file, a fresh user and
 * bucket per test.
 *
 * @module
 */
import { s3Test } from "../../tests/fixtures/s3.ts";
import { s3Backend, type TestBackend } from "./_testing.ts";

/** Registers one test per behaviour on a radosgw bucket. */
export function s3Backends(
  cases: [string, (backend: TestBackend) => Promise<void>][],
): void {
  for (const [name, body] of cases) {
    s3Test(`storage (radosgw): ${name}`, async (s3) => {
      const backend = s3Backend(s3);
      try {
        await body(backend);
      } finally {
        await backend.cleanup();
      }
    });
  }
}
