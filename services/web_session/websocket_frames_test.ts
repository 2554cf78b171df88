import assert from "node:assert/strict";
import { decodeServerFrames, encodeClientFrame } from "./websocket_frames.ts";

Deno.test("WebSocket frames to and from apps round-trip, fragmented or split anywhere", async () => {
  const big = new Uint8Array(70_000).map((_, i) => (i * 31) & 0xff);
  const frames = [
    encodeClientFrame(1, new TextEncoder().encode("hello")),
    encodeClientFrame(2, big),
    encodeClientFrame(9, new Uint8Array([1])),
  ];
  // A fragmented text message: "ab" then continuation "cd" (final).
  frames.push(new Uint8Array([0x01, 0x82, 0, 0, 0, 0, 97, 98]));
  frames.push(new Uint8Array([0x80, 0x82, 0, 0, 0, 0, 99, 100]));
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    all.set(f, at);
    at += f.length;
  }
  // Deliver in 7-byte pieces so headers and masks are split.
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < all.length; i += 7) {
        controller.enqueue(all.slice(i, i + 7));
      }
      controller.close();
    },
  });
  const messages = [];
  for await (const message of decodeServerFrames(stream)) {
    messages.push(message);
  }
  assert.equal(messages.length, 4);
  assert.equal(new TextDecoder().decode(messages[0].payload), "hello");
  assert.deepEqual(messages[1].payload, big);
  assert.equal(messages[2].opcode, 9);
  assert.equal(messages[3].opcode, 1);
  assert.equal(new TextDecoder().decode(messages[3].payload), "abcd");

  const oversized = new Uint8Array(10);
  oversized.set([0x82, 127]);
  new DataView(oversized.buffer).setBigUint64(2, 1n << 40n);
  await assert.rejects(async () => {
    for await (
      const _ of decodeServerFrames(
        new ReadableStream({
          start(c) {
            c.enqueue(oversized);
            c.close();
          },
        }),
      )
    ) { /* drained */ }
  }, /too big/);
});
