/**
 * The sealed UDP network across simulated machines (network namespaces),
 * each vat in its own process, with faults injected on the links.
 *
 * Loss and the outage are done by the kernel (tests/fixtures/netns.ts).
 * Delay, reordering and duplication use `tc netem` when the kernel has it;
 * this machine's kernel does not (no CONFIG_NET_SCH_NETEM), so then they
 * come from a userspace relay running on a third simulated machine
 * (testdata/impair_relay.ts) that every datagram crosses.
 */

import assert from "node:assert/strict";
import { startNetwork } from "../../../tests/fixtures/netns.ts";
import { libraryPath } from "../../../ffi/native.ts";
import { VatIdentity, vatIdHex } from "../vat_id.ts";

const deno = Deno.execPath();
const root = new URL("../../../", import.meta.url).pathname;
const peerScript = new URL("./testdata/stream_peer.ts", import.meta.url)
  .pathname;
const relayScript = new URL("./testdata/impair_relay.ts", import.meta.url)
  .pathname;
const COUNT = 1000;
const PORT = 7000;

function metricsOf(log: string): Record<string, number> {
  const line = log.split("\n").find((l) => l.startsWith("metrics "));
  assert.ok(line, `no metrics line in:\n${log.slice(-2000)}`);
  return JSON.parse(line.slice("metrics ".length));
}

Deno.test({
  name:
    "across machines with 5% loss, 20 ms delay, reordering, duplication and a 10 s outage, every message arrives exactly once, in order",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await using network = await startNetwork({ machines: 3 });
      const [m1, m2, m3] = network.machines;
      const a = VatIdentity.generate();
      const b = VatIdentity.generate();
      await a.save(`${dir}/a.key`);
      await b.save(`${dir}/b.key`);

      let aSendsTo = `${m2.address}:${PORT}`;
      let bSendsTo = `${m1.address}:${PORT}`;
      const impairment = {
        lossPercent: 5,
        delayMs: 20,
        reorderPercent: 10,
        duplicatePercent: 5,
      };
      await using relay = network.netemAvailable ? undefined : network.spawn(
        3,
        {
          name: "impairing relay",
          command: deno,
          args: [
            "run",
            "--unstable-net",
            `--allow-net=${m1.address},${m2.address},${m3.address}`,
            relayScript,
            m3.address,
            "7001",
            `${m2.address}:${PORT}`,
            "7002",
            `${m1.address}:${PORT}`,
            String(impairment.delayMs),
            String(impairment.reorderPercent),
            String(impairment.duplicatePercent),
          ],
        },
      );
      if (relay === undefined) {
        await network.impair(1, impairment);
      } else {
        await network.impair(1, { lossPercent: impairment.lossPercent });
        await relay.waitReady(() => relay.log.includes("relaying"), {
          what: "the relay listens",
        });
        aSendsTo = `${m3.address}:7001`;
        bSendsTo = `${m3.address}:7002`;
      }

      const peerArgs = (
        role: string,
        key: string,
        bind: string,
        peer: VatIdentity,
        to: string,
      ) => [
        "run",
        "--allow-read",
        `--allow-ffi=${libraryPath}`,
        peerScript,
        role,
        key,
        bind,
        vatIdHex(peer.vatId),
        to,
        String(COUNT),
      ];
      await using receiver = network.spawn(2, {
        name: "receiving vat",
        command: deno,
        cwd: root,
        args: peerArgs(
          "receive",
          `${dir}/b.key`,
          `${m2.address}:${PORT}`,
          a,
          bSendsTo,
        ),
      });
      await receiver.waitReady(() => receiver.log.includes("ready"), {
        what: "the receiving vat starts",
        timeoutMs: 60_000,
      });
      await using sender = network.spawn(1, {
        name: "sending vat",
        command: deno,
        cwd: root,
        args: peerArgs(
          "send",
          `${dir}/a.key`,
          `${m1.address}:${PORT}`,
          b,
          aSendsTo,
        ),
      });

      // The outage falls in the middle of the stream.
      await sender.waitReady(() => sender.log.includes("sent 300"), {
        what: "the sender is mid-stream",
        timeoutMs: 60_000,
      });
      await network.linkDown(2);
      await new Promise((resolve) => setTimeout(resolve, 10_000));
      await network.linkUp(2);

      const [sent, received] = await Promise.all([
        sender.status,
        receiver.status,
      ]);
      assert.equal(received.code, 0, `receiver:\n${receiver.log.slice(-3000)}`);
      assert.equal(sent.code, 0, `sender:\n${sender.log.slice(-3000)}`);
      assert.ok(receiver.log.includes("\nok"), receiver.log.slice(-2000));
      assert.ok(sender.log.includes("\nok"), sender.log.slice(-2000));

      // The faults really happened: the sender had to retransmit, and the
      // receiver saw duplicates that it dropped.
      const senderMetrics = metricsOf(sender.log);
      const receiverMetrics = metricsOf(receiver.log);
      assert.ok(senderMetrics.retransmittedFragments > 0, sender.log);
      assert.ok(
        receiverMetrics.droppedReplayed + receiverMetrics.duplicateFragments >
          0,
        receiver.log,
      );
      assert.equal(receiverMetrics.connectionsAccepted, 1);
      assert.equal(senderMetrics.connectionsFailed, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
