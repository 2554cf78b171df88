/**
 * The sealed UDP network across simulated machines (network namespaces),
 * each vat in its own process, with faults injected on the links.
 *
 * Loss and the outage are done by the kernel (tests/fixtures/netns.ts).
 * Delay, reordering and duplication use `tc netem` when the kernel has it;
 * this machine's kernel does not (no CONFIG_NET_SCH_NETEM), so then they
 * come from a userspace relay running on a third simulated machine
 * (testdata/impair_relay.ts) that every datagram crosses.
 *
 * Two pairs of vats cross the same faults at once: one streams sealed
 * messages (testdata/stream_peer.ts), the other makes real RPC calls
 * (testdata/rpc_peer.ts).
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
const rpcScript = new URL("./testdata/rpc_peer.ts", import.meta.url).pathname;
const COUNT = 1000;
/** Sequential calls, each a round trip through the 20 ms delays. */
const RPC_COUNT = 300;
const STREAM_PORT = 7000;
const RPC_PORT = 7100;

function metricsOf(log: string): Record<string, number> {
  const line = log.split("\n").find((l) => l.startsWith("metrics "));
  assert.ok(line, `no metrics line in:\n${log.slice(-2000)}`);
  return JSON.parse(line.slice("metrics ".length));
}

Deno.test({
  name:
    "across machines with 5% loss, 20 ms delay, reordering, duplication and a 10 s outage, every message and call arrives exactly once, in order",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      await using network = await startNetwork({ machines: 3 });
      const [m1, m2, m3] = network.machines;
      const impairment = {
        lossPercent: 5,
        delayMs: 20,
        reorderPercent: 10,
        duplicatePercent: 5,
      };
      const relays: { stop(): Promise<unknown> }[] = [];
      if (network.netemAvailable) {
        await network.impair(1, impairment);
      } else {
        await network.impair(1, { lossPercent: impairment.lossPercent });
      }

      /** Where vat 1 and vat 2 send to reach each other on `port`: each
       * other's address, or the relay's ports when netem is missing. */
      const route = async (port: number): Promise<[string, string]> => {
        const direct: [string, string] = [
          `${m2.address}:${port}`,
          `${m1.address}:${port}`,
        ];
        if (network.netemAvailable) return direct;
        const relay = network.spawn(3, {
          name: `impairing relay ${port}`,
          command: deno,
          args: [
            "run",
            "--unstable-net",
            `--allow-net=${m1.address},${m2.address},${m3.address}`,
            relayScript,
            m3.address,
            String(port + 1),
            direct[0],
            String(port + 2),
            direct[1],
            String(impairment.delayMs),
            String(impairment.reorderPercent),
            String(impairment.duplicatePercent),
          ],
        });
        relays.push(relay);
        await relay.waitReady(() => relay.log.includes("relaying"), {
          what: "the relay listens",
        });
        return [`${m3.address}:${port + 1}`, `${m3.address}:${port + 2}`];
      };

      /** Starts one pair of vats: `first` on machine 1, `second` on 2. */
      const startPair = async (
        script: string,
        port: number,
        first: string,
        second: string,
      ) => {
        const [oneSendsTo, twoSendsTo] = await route(port);
        const one = VatIdentity.generate();
        const two = VatIdentity.generate();
        await one.save(`${dir}/${port}-1.key`);
        await two.save(`${dir}/${port}-2.key`);
        const args = (
          role: string,
          key: string,
          bind: string,
          peer: VatIdentity,
          to: string,
        ) => [
          "run",
          "--allow-read",
          `--allow-ffi=${libraryPath}`,
          script,
          role,
          key,
          bind,
          vatIdHex(peer.vatId),
          to,
          String(script === rpcScript ? RPC_COUNT : COUNT),
        ];
        const second2 = network.spawn(2, {
          name: `${second} vat`,
          command: deno,
          cwd: root,
          args: args(
            second,
            `${dir}/${port}-2.key`,
            `${m2.address}:${port}`,
            one,
            twoSendsTo,
          ),
        });
        await second2.waitReady(() => second2.log.includes("ready"), {
          what: `the ${second} vat starts`,
          timeoutMs: 60_000,
        });
        const first1 = network.spawn(1, {
          name: `${first} vat`,
          command: deno,
          cwd: root,
          args: args(
            first,
            `${dir}/${port}-1.key`,
            `${m1.address}:${port}`,
            two,
            oneSendsTo,
          ),
        });
        return [first1, second2] as const;
      };

      const [sender, receiver] = await startPair(
        peerScript,
        STREAM_PORT,
        "send",
        "receive",
      );
      const [caller, server] = await startPair(
        rpcScript,
        RPC_PORT,
        "call",
        "serve",
      );
      try {
        // The outage falls in the middle of both streams.
        await sender.waitReady(() => sender.log.includes("sent 300"), {
          what: "the sender is mid-stream",
          timeoutMs: 60_000,
        });
        await caller.waitReady(() => caller.log.includes("called 100"), {
          what: "the caller is mid-stream",
          timeoutMs: 60_000,
        });
        await network.linkDown(2);
        await new Promise((resolve) => setTimeout(resolve, 10_000));
        await network.linkUp(2);

        const [sent, received, called] = await Promise.all([
          sender.status,
          receiver.status,
          caller.status,
        ]);
        assert.equal(
          received.code,
          0,
          `receiver:\n${receiver.log.slice(-3000)}`,
        );
        assert.equal(sent.code, 0, `sender:\n${sender.log.slice(-3000)}`);
        assert.equal(called.code, 0, `caller:\n${caller.log.slice(-3000)}`);
        assert.ok(receiver.log.includes("\nok"), receiver.log.slice(-2000));
        assert.ok(sender.log.includes("\nok"), sender.log.slice(-2000));
        assert.ok(caller.log.includes("\nok"), caller.log.slice(-2000));

        // The faults really happened: the sender had to retransmit, and
        // the receiver saw duplicates that it dropped.
        const senderMetrics = metricsOf(sender.log);
        const receiverMetrics = metricsOf(receiver.log);
        assert.ok(senderMetrics.retransmittedFragments > 0, sender.log);
        assert.ok(
          receiverMetrics.droppedReplayed +
              receiverMetrics.duplicateFragments > 0,
          receiver.log,
        );
        assert.equal(receiverMetrics.connectionsAccepted, 1);
        assert.equal(senderMetrics.connectionsFailed, 0);
        assert.equal(metricsOf(caller.log).connectionsFailed, 0);
      } finally {
        for (const process of [sender, receiver, caller, server, ...relays]) {
          await process.stop();
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
