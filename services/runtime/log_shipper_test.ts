import assert from "node:assert/strict";
import { Logger } from "./log.ts";
import { LogShipper, shipperNetPermissions } from "./log_shipper.ts";

Deno.test("log shipper: packs lines into datagrams and drops beyond its queue bound without blocking", async () => {
  const receiver = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  try {
    const port = (receiver.addr as Deno.NetAddr).port;
    const shipper = new LogShipper({
      port,
      stderr: false,
      maxQueuedLines: 10,
      maxDatagramBytes: 1024,
    });
    const log = new Logger({ role: "worker", writer: shipper.writer });
    // All written in one task: nothing is sent until it yields, so the
    // queue fills and the rest is dropped instead of waiting.
    for (let i = 0; i < 25; i++) log.info("tick", { index: i });
    log.info("huge", { blob: "x".repeat(2000) });
    assert.equal(shipper.stats.dropped, 16);
    await shipper.close();
    assert.equal(shipper.stats.shipped, 10);

    const received: number[] = [];
    let datagrams = 0;
    while (received.length < 10) {
      const [data] = await receiver.receive();
      datagrams++;
      assert.ok(data.length <= 1024);
      for (const line of new TextDecoder().decode(data).split("\n")) {
        if (line !== "") received.push(JSON.parse(line).index);
      }
    }
    assert.deepEqual(received, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.ok(datagrams < 10, `${datagrams} datagrams for 10 lines`);

    // After close, lines still go to stderr (if enabled) but not the sink.
    log.info("late");
    assert.equal(shipper.stats.dropped, 17);
  } finally {
    receiver.close();
  }
});

Deno.test("log shipper: names the permissions a shipping role needs", () => {
  assert.deepEqual(shipperNetPermissions(4510), [
    "127.0.0.1:0",
    "127.0.0.1:4510",
  ]);
});
