import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type Frame,
  FRAME_ACK,
  FRAME_DATA,
  FRAME_PING,
  FRAME_RESET,
  frameBytes,
  HEADER_BYTES,
  MAX_DATAGRAM_BYTES,
  PacketFormatError,
  parseFrames,
  parseHeader,
  TAG_BYTES,
  writeFrame,
  writeHeader,
} from "./packet.ts";
import { ReplayWindow } from "./replay_window.ts";

/** Fixed budget: enough runs to find shallow parser bugs, seeded so a
 * failure reproduces. */
const RUNS = { numRuns: 3000, seed: 0x5eed };

const frameArbitrary: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({
    type: fc.constant(FRAME_DATA),
    conn: fc.nat(),
    fragment: fc.nat(),
    flags: fc.constantFrom(0, 1),
    data: fc.uint8Array({ maxLength: 300 }),
  }),
  fc.record({
    type: fc.constant(FRAME_ACK),
    conn: fc.nat(),
    cumulative: fc.nat({ max: 1 << 20 }),
    ranges: fc.array(
      fc.tuple(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 1, max: 50 }),
      ),
      {
        maxLength: 10,
      },
    ),
  }).map(({ type, conn, cumulative, ranges }) => {
    const flat: number[] = [];
    let floor = cumulative;
    for (const [gap, length] of ranges) {
      flat.push(floor + gap, floor + gap + length);
      floor += gap + length;
    }
    return { type, conn, cumulative, ranges: flat };
  }),
  fc.record({ type: fc.constant(FRAME_PING), conn: fc.nat() }),
  fc.record({
    type: fc.constant(FRAME_RESET),
    conn: fc.nat(),
    reason: fc.nat({ max: 255 }),
  }),
);

function encode(frames: Frame[]): Uint8Array {
  const bytes = new Uint8Array(frames.reduce((n, f) => n + frameBytes(f), 0));
  const view = new DataView(bytes.buffer);
  let at = 0;
  for (const frame of frames) at = writeFrame(bytes, view, at, frame);
  assert.equal(at, bytes.length);
  return bytes;
}

Deno.test("frames survive a write and parse round trip", () => {
  fc.assert(
    fc.property(fc.array(frameArbitrary, { maxLength: 8 }), (frames) => {
      assert.deepEqual(
        parseFrames(encode(frames)),
        frames.map((f) => ({ ...f })),
      );
    }),
    RUNS,
  );
});

Deno.test("the frame parser only ever throws PacketFormatError on arbitrary bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 1300 }), (bytes) => {
      try {
        parseFrames(bytes);
      } catch (error) {
        if (!(error instanceof PacketFormatError)) throw error;
      }
    }),
    RUNS,
  );
});

Deno.test("the frame parser survives truncated and bit-flipped valid frames", () => {
  fc.assert(
    fc.property(
      fc.array(frameArbitrary, { minLength: 1, maxLength: 6 }),
      fc.nat(),
      fc.nat(),
      fc.integer({ min: 0, max: 7 }),
      (frames, cut, flipAt, bit) => {
        const bytes = encode(frames);
        const truncated = bytes.subarray(0, cut % (bytes.length + 1));
        const flipped = bytes.slice();
        if (flipped.length > 0) flipped[flipAt % flipped.length] ^= 1 << bit;
        for (const candidate of [truncated, flipped]) {
          try {
            const parsed = parseFrames(candidate);
            // Whatever parses must re-encode to the same bytes.
            assert.deepEqual(encode(parsed), candidate);
          } catch (error) {
            if (!(error instanceof PacketFormatError)) throw error;
          }
        }
      },
    ),
    RUNS,
  );
});

Deno.test("the header parser refuses bad lengths and versions, and reads what was written", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 1400 }), (bytes) => {
      try {
        const header = parseHeader(bytes);
        assert.ok(bytes.length >= HEADER_BYTES + TAG_BYTES);
        assert.ok(bytes.length <= MAX_DATAGRAM_BYTES);
        assert.equal(header.senderVatId.length, 32);
      } catch (error) {
        if (!(error instanceof PacketFormatError)) throw error;
      }
    }),
    RUNS,
  );
  const bytes = new Uint8Array(HEADER_BYTES + TAG_BYTES);
  const fields = {
    recipientVatId: crypto.getRandomValues(new Uint8Array(32)),
    senderVatId: crypto.getRandomValues(new Uint8Array(32)),
    stamp: Date.now(),
    boot: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]),
    packetNumber: 2 ** 40 + 5,
    recipientBoot: undefined,
    sentTenths: 12345,
  };
  writeHeader(bytes, new DataView(bytes.buffer), 0, fields);
  const header = parseHeader(bytes);
  assert.deepEqual(header.senderVatId, fields.senderVatId);
  assert.deepEqual(
    header.recipientPrefix,
    fields.recipientVatId.subarray(0, 8),
  );
  assert.equal(header.stamp, fields.stamp);
  assert.equal(header.packetNumber, fields.packetNumber);
  assert.equal(header.bootHigh, 0x01020304);
  assert.equal(header.recipientBootHigh | header.recipientBootLow, 0);
  assert.equal(header.sentTenths, 12345);
  assert.throws(() => parseHeader(bytes.subarray(1)), PacketFormatError);
});

Deno.test("the replay window accepts each packet number once, in any order within the window", () => {
  fc.assert(
    fc.property(
      fc.array(fc.nat({ max: 5000 }), { maxLength: 300 }),
      (numbers) => {
        const window = new ReplayWindow(1024);
        const seen = new Set<number>();
        let highest = -1;
        for (const n of numbers) {
          const accepted = window.accept(n);
          const expected = !seen.has(n) && n > highest - window.size;
          assert.equal(accepted, expected, `number ${n} (highest ${highest})`);
          if (accepted) {
            seen.add(n);
            highest = Math.max(highest, n);
          }
        }
      },
    ),
    RUNS,
  );
});
