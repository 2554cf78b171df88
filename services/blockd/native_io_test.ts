/**
 * The block shims of ffi/blockops.c as the daemon uses them.
 */
import assert from "node:assert/strict";
import { NativeFile, punchBlocks } from "../../ffi/native.ts";

Deno.test("NativeFile reads and writes at offsets, inline and on the pool", async () => {
  const path = await Deno.makeTempFile();
  try {
    const file = NativeFile.open(path, true);
    const data = new Uint8Array(300_000).map((_, i) => (i * 7) % 256);
    file.writeAt(data.subarray(0, 1000), 5);
    await file.writeAtAsync(data.subarray(1000), 1005);
    const back = new Uint8Array(300_000);
    await file.readAtAsync(back, 5);
    assert.deepEqual(back, data);
    // Past the end reads as zeros.
    const tail = new Uint8Array(10).fill(9);
    file.readAt(tail, 300_000);
    assert.deepEqual(
      tail,
      new Uint8Array([...data.subarray(299_995), 0, 0, 0, 0, 0]),
    );
    file.close();
    assert.throws(() => file.readAt(tail, 0), /errno 9/);
    assert.throws(() => NativeFile.open(`${path}.missing`, false), /errno 2/);
    assert.throws(() => file.writeAt(tail, -1), RangeError);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("punchBlocks frees whole blocks and they read as zeros", async () => {
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeFile(path, new Uint8Array(64 * 4096).fill(1));
    const file = await Deno.open(path, { read: true, write: true });
    await file.sync();
    file.close();
    const before = (await Deno.stat(path)).blocks!;
    punchBlocks(path, 8, 32);
    const after = (await Deno.stat(path)).blocks!;
    assert.ok(after <= before - 32 * 8, `${before} -> ${after} sectors`);
    const bytes = await Deno.readFile(path);
    assert.equal(bytes.length, 64 * 4096);
    assert.ok(bytes.subarray(8 * 4096, 40 * 4096).every((b) => b === 0));
    assert.ok(bytes.subarray(0, 8 * 4096).every((b) => b === 1));
    assert.ok(bytes.subarray(40 * 4096).every((b) => b === 1));
    assert.throws(() => punchBlocks(`${path}.missing`, 0, 1), /errno 2/);
    assert.throws(() => punchBlocks(path, -1, 1), RangeError);
  } finally {
    await Deno.remove(path);
  }
});
