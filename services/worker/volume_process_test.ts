/**
 * The worker role as a process under its scoped permissions, configured
 * with a block daemon: a grain whose spec names a storage Volume gets it
 * as /var, keeps its data through stop and restore, and a second worker
 * with an empty state folder restores it from the storage node.
 */
import assert from "node:assert/strict";
import * as rpc from "../rpc/mod.ts";
import { vatIdHex } from "../rpc/vat_id.ts";
import { roleCommand } from "../runtime/permissions.ts";
import { type GrainSpec, Worker } from "../../proto/gen/worker.ts";
import { buildTestApps } from "../../tests/apps/build.ts";
import { openWebSession, relayRequest } from "../web_session/mod.ts";
import {
  makeDaemonVat,
  newVolumeRefs,
  startStorageNode,
} from "../blockd/_storage_testing.ts";
import { unmountUnder } from "../blockd/_testing.ts";
import {
  makeCluster,
  StorageClient,
  toleratingKilledNodes,
} from "../storage/_node_testing.ts";
import { LIBC_PATH } from "./kernel_files.ts";
import { workerEntry, workerPermissions } from "./role.ts";

const apps = await buildTestApps();

async function startWorker(stateDir: string, config: Record<string, unknown>) {
  await Deno.mkdir(stateDir, { recursive: true });
  const configFile = `${stateDir}.json`;
  await Deno.writeTextFile(configFile, JSON.stringify(config));
  const permissions = workerPermissions({
    stateDir,
    readFiles: [
      configFile,
      String((config.blockd as { vatKeyFile: string }).vatKeyFile),
    ],
    blockVolumes: { deno: Deno.execPath(), slots: 4 },
  });
  permissions.ffi = [LIBC_PATH];
  const [command, ...args] = roleCommand({
    deno: Deno.execPath(),
    entry: workerEntry,
    configFile,
    permissions,
  });
  const child = new Deno.Command(command, {
    args,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream())
    .getReader();
  let buffer = "";
  let port: number | undefined;
  const seen: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const parts = buffer.split("\n");
    buffer = parts.pop()!;
    for (const line of parts) {
      seen.push(line);
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        continue;
      }
      if (event.event === "listening" && event.role === "worker") {
        port = event.port;
      }
      if (event.event === "started" && event.role === "worker") {
        (async () => {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) return;
            seen.push(value);
          }
        })();
        return { child, port: port!, log: seen };
      }
    }
  }
  throw new Error(`worker did not start:\n${seen.join("\n")}${buffer}`);
}

Deno.test({
  name:
    "the worker process attaches the storage volume a grain spec names, and another worker restores it",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    toleratingKilledNodes(async () => {
      const cluster = await makeCluster(1);
      const dir = await Deno.makeTempDir({ prefix: "worker-volproc-test-" });
      await Deno.chmod(dir, 0o711);
      const keyFile = `${dir}/blockd.key`;
      const daemonVat = await makeDaemonVat(keyFile);
      const node = await startStorageNode(cluster, [daemonVat]);
      const client = await StorageClient.create(cluster.client);
      const config = (name: string, uidFirst: number) => ({
        stateDir: `${dir}/${name}`,
        listen: { hostname: "127.0.0.1", port: 0 },
        cgroupName: `blackrock-volproc-${name}-${Deno.pid}`,
        uidFirst,
        uidCount: 4,
        workerId: name,
        blockd: {
          vatKeyFile: keyFile,
          storageNodes: [{
            vatId: vatIdHex(node.vatId),
            address: node.address,
          }],
          slots: 4,
          defaultVolumeBytes: 64 << 20,
        },
      });
      const spk = Deno.readFileSync(apps.notesSpk);
      const session = async (
        worker: InstanceType<typeof Worker.Client>,
        ref: Uint8Array,
        grainId: string,
        restore: boolean,
      ) => {
        const fill = (p: { grainId: string; _initSpec(): GrainSpec }) => {
          p.grainId = grainId;
          const spec = p._initSpec();
          spec.packageId = installedId;
          spec.isNew = !restore;
          spec._initVolumeRef(ref.length).copyBuffer(ref);
        };
        const answer = restore
          ? await worker.restoreGrain(fill).promise()
          : await worker.newGrain(fill).promise();
        const view = rpc.retain(answer.view);
        return {
          view,
          session: await openWebSession(view, { displayName: "Ann" }),
        };
      };
      let installedId = "";
      const base = 60000 + (Deno.pid % 50) * 10;
      try {
        const [ref] = await newVolumeRefs(client, node, 1);
        for (
          const [name, uidFirst] of [["worker-a", base], [
            "worker-b",
            base + 4,
          ]] as const
        ) {
          const { child, port, log } = await startWorker(
            `${dir}/${name}`,
            config(name, uidFirst),
          );
          const connection = new rpc.RpcConnection(
            await rpc.connectTcp({ hostname: "127.0.0.1", port }),
          );
          const worker = rpc.bootstrap(connection, Worker);
          try {
            installedId = (await worker.installPackage((p) => {
              p._initSpk(spk.length).copyBuffer(spk);
            }).promise()).packageId;
            if (name === "worker-a") {
              const a = await session(worker, ref, "g1", false);
              const put = await relayRequest(
                a.session,
                new Request("http://grain.test/notes/kept", {
                  method: "PUT",
                  body: "in storage",
                }),
              );
              assert.equal(put.status, 201);
              rpc.release(a.session);
              rpc.release(a.view);
            } else {
              const b = await session(worker, ref, "g1", true);
              const got = await relayRequest(
                b.session,
                new Request("http://grain.test/notes/kept"),
              );
              assert.equal(await got.text(), "in storage");
              rpc.release(b.session);
              rpc.release(b.view);
            }
            await worker.stopGrain((p) => p.grainId = "g1").promise();
            // The volume came through the worker's block daemon.
            assert.ok(
              log.some((line) => line.includes('"volume-detached"')),
              log.join(""),
            );
          } finally {
            rpc.release(worker);
            connection.close();
            child.kill("SIGTERM");
            const status = await child.status;
            assert.equal(
              status.code,
              0,
              `worker stop failed:\n${log.join("")}`,
            );
          }
        }
      } finally {
        await unmountUnder(dir);
        await client.close();
        await node.kill("SIGTERM");
        await Deno.remove(dir, { recursive: true });
        await Deno.remove(cluster.dir, { recursive: true });
      }
    }),
});
