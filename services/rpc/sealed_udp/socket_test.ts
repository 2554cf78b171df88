import assert from "node:assert/strict";
import { UDP_RECV_WORDS } from "../../../ffi/native.ts";
import { type BatchSocket, type ReceivedBatch, UdpSocket } from "./socket.ts";

const LOOPBACK = 0x7f000001;

/** Opens a socket that collects what it receives as [length, first byte]. */
async function collector(receiver: "event-loop" | "worker"): Promise<{
  socket: BatchSocket;
  received: [number, number][];
  arrived: (count: number) => Promise<void>;
}> {
  const received: [number, number][] = [];
  let waiting: { count: number; resolve: () => void } | undefined;
  const socket = await UdpSocket.open(
    { ip: LOOPBACK, port: 0 },
    { slotBytes: 2048, receiveBufferBytes: 4 << 20, receiver },
    (batch: ReceivedBatch) => {
      for (let i = 0; i < batch.count; i++) {
        const length = batch.meta[i * UDP_RECV_WORDS];
        received.push([length, batch.buffer[i * batch.slotBytes]]);
      }
      if (waiting && received.length >= waiting.count) waiting.resolve();
    },
    (error) => {
      throw error;
    },
  );
  return {
    socket,
    received,
    arrived: (count) =>
      received.length >= count ? Promise.resolve() : new Promise((resolve) => {
        waiting = { count, resolve };
      }),
  };
}

for (const kind of ["event-loop", "worker"] as const) {
  Deno.test(`a batch of back-to-back equal packets arrives as separate datagrams (${kind} receiver)`, async () => {
    // Runs like this one go out as segmented datagrams where the kernel can:
    // the receiver must still see every packet whole and in order.
    const sender = await collector(kind);
    const receiver = await collector(kind);
    try {
      const sizes = [...new Array(120).fill(1280), 700, 1280, 1280, 90];
      let total = 0;
      for (const size of sizes) total += size;
      const buffer = new Uint8Array(total);
      const descriptors = new Uint32Array(sizes.length * 4);
      let at = 0;
      sizes.forEach((size, i) => {
        buffer[at] = i;
        descriptors.set([at, size, LOOPBACK, receiver.socket.port], i * 4);
        at += size;
      });
      assert.equal(
        sender.socket.send(buffer, descriptors, sizes.length),
        sizes.length,
      );
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        receiver.arrived(sizes.length),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${receiver.received.length} arrived`)),
            10_000,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      assert.deepEqual(
        receiver.received,
        sizes.map((size, i) => [size, i]),
      );
    } finally {
      await sender.socket.close();
      await receiver.socket.close();
    }
  });
}
