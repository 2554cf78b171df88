/**
 * Benchmarks of the block daemon (services/blockd/) against nbdkit's file
 * plugin on this machine, with the same client (fio's nbd engine, over a
 * unix socket) for both:
 *
 * - seq_read_vs_nbdkit: 1 MiB sequential reads, warm cache, bandwidth.
 * - rand4k_read_vs_nbdkit: 4 KiB random reads, depth 16, warm cache, IOPS.
 * - rand4k_write_vs_nbdkit: 4 KiB random writes, depth 16, IOPS (the
 *   daemon writes back to its store in the background meanwhile).
 * - cold_read_vs_nbdkit: one sequential pass over the volume with an empty
 *   cache, every block fetched from the store (a local directory store),
 *   against nbdkit reading its file.
 * - cold_start_1g_vs_64m: time from attach (nbdfuse + loop + mount) to the
 *   first file read on an empty cache, for a volume with 1 GiB used over
 *   one with 64 MiB used.
 *
 * Each ratio is the daemon's figure over nbdkit's (higher is better),
 * except cold_start, a time ratio (lower is better). Both sides are
 * measured in this run. Ends with `result NAME VALUE` lines.
 *
 * @module
 */
import { BLOCK_BYTES } from "../services/blockd/block_store.ts";
import {
  makeWorkspace,
  quietLogger,
  runOk,
  spawnDaemon,
  type Workspace,
} from "../services/blockd/_testing.ts";
import { attach } from "../services/blockd/attach.ts";
import { DirectoryBlockStore } from "../services/blockd/directory_store.ts";

const VOLUME_BYTES = 256 * 1024 * 1024;
const RUNTIME_SECONDS = 3;

interface FioResult {
  iops: number;
  bandwidthBytes: number;
}

async function fio(
  uri: string,
  rw: string,
  blockSize: string,
  depth: number,
  timeBased: boolean,
): Promise<FioResult> {
  const args = [
    "--name=bench",
    "--ioengine=nbd",
    `--uri=${uri}`,
    `--rw=${rw}`,
    `--bs=${blockSize}`,
    `--iodepth=${depth}`,
    `--size=${VOLUME_BYTES}`,
    "--randrepeat=1",
    "--output-format=json",
  ];
  if (timeBased) args.push("--time_based=1", `--runtime=${RUNTIME_SECONDS}`);
  const output = await runOk("fio", args);
  const report = JSON.parse(output.slice(output.indexOf("{")));
  const job = report.jobs[0];
  const side = rw.includes("write") ? job.write : job.read;
  return { iops: side.iops, bandwidthBytes: side.bw_bytes };
}

/** nbdkit's file plugin serving `image` on a unix socket. */
async function startNbdkit(workspace: Workspace, image: string) {
  const socket = `${workspace.root}/nbdkit.sock`;
  const child = new Deno.Command("nbdkit", {
    args: ["--unix", socket, "-f", "file", image],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  while (!(await Deno.stat(socket).then(() => true, () => false))) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    uri: `nbd+unix:///?socket=${socket}`,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

function daemonConfig(workspace: Workspace, cacheName: string) {
  return {
    socketDirectory: workspace.sockets,
    cacheDirectory: `${workspace.root}/${cacheName}`,
    holder: cacheName,
    store: { kind: "directory", root: workspace.store, leaseTtlMs: 1_000 },
    grains: [{ name: "g1", sizeBytes: VOLUME_BYTES }],
    leaseWaitMs: 10_000,
  };
}

const daemonUri = (workspace: Workspace) =>
  `nbd+unix:///g1?socket=${workspace.sockets}/g1.sock`;

async function fillRandom(path: string, bytes: number): Promise<void> {
  await runOk("dd", [
    "if=/dev/urandom",
    `of=${path}`,
    "bs=1M",
    `count=${bytes / (1024 * 1024)}`,
    "conv=notrunc",
    "status=none",
  ]);
}

function log(line: string) {
  console.log(`# ${line}`);
}

async function throughputBenchmarks(results: Map<string, number>) {
  const workspace = await makeWorkspace();
  try {
    const image = `${workspace.root}/nbdkit.img`;
    await fillRandom(image, VOLUME_BYTES);
    const storeRoot = `${workspace.store}/g1`;
    await DirectoryBlockStore.create(storeRoot, VOLUME_BYTES / BLOCK_BYTES);
    await Deno.copyFile(image, `${storeRoot}/blocks`);
    await runOk("sync", []);

    // The machine is shared, so the two servers take turns (three times
    // for the warm runs, twice for the cold ones) and each keeps its best
    // figure.
    const nbdkit = await startNbdkit(workspace, image);
    const best = (a: FioResult | undefined, b: FioResult) =>
      a === undefined || b.iops > a.iops ? b : a;
    const kit: Record<string, FioResult> = {};
    const ours: Record<string, FioResult> = {};
    try {
      for (let round = 0; round < 2; round++) {
        const cold = await spawnDaemon(
          workspace,
          daemonConfig(workspace, `cold${round}`),
          ["g1"],
          `cold${round}`,
        );
        ours.cold = best(
          ours.cold,
          await fio(daemonUri(workspace), "read", "1M", 4, false),
        );
        await cold.stop();
        kit.cold = best(
          kit.cold,
          await fio(nbdkit.uri, "read", "1M", 4, false),
        );
      }

      const daemon = await spawnDaemon(
        workspace,
        daemonConfig(workspace, "warm"),
        ["g1"],
        "warm",
      );
      try {
        await fio(daemonUri(workspace), "read", "1M", 4, false);
        const jobs: [string, string, string, number][] = [
          ["seq", "read", "1M", 4],
          ["randRead", "randread", "4k", 16],
          ["randWrite", "randwrite", "4k", 16],
        ];
        for (let round = 0; round < 3; round++) {
          for (const [name, rw, size, depth] of jobs) {
            kit[name] = best(
              kit[name],
              await fio(nbdkit.uri, rw, size, depth, true),
            );
            ours[name] = best(
              ours[name],
              await fio(daemonUri(workspace), rw, size, depth, true),
            );
          }
        }
      } finally {
        await daemon.stop();
      }
    } finally {
      await nbdkit.stop();
    }
    log(`nbdkit: ${JSON.stringify(kit)}`);
    log(`blockd: ${JSON.stringify(ours)}`);

    results.set(
      "seq_read_vs_nbdkit",
      ours.seq.bandwidthBytes / kit.seq.bandwidthBytes,
    );
    results.set(
      "rand4k_read_vs_nbdkit",
      ours.randRead.iops / kit.randRead.iops,
    );
    results.set(
      "rand4k_write_vs_nbdkit",
      ours.randWrite.iops / kit.randWrite.iops,
    );
    results.set(
      "cold_read_vs_nbdkit",
      ours.cold.bandwidthBytes / kit.cold.bandwidthBytes,
    );
  } finally {
    await workspace.remove();
  }
}

/** Makes a volume whose ext4 filesystem holds `usedBytes` of files, by
 * building the image straight in the directory store. */
async function makeFilledVolume(
  workspace: Workspace,
  volumeBytes: number,
  usedBytes: number,
) {
  const storeRoot = `${workspace.store}/g1`;
  await DirectoryBlockStore.create(storeRoot, volumeBytes / BLOCK_BYTES);
  const image = `${storeRoot}/blocks`;
  await runOk("mkfs.ext4", ["-q", "-F", image]);
  const mnt = `${workspace.root}/fill`;
  await Deno.mkdir(mnt);
  await runOk("mount", ["-o", "loop", image, mnt]);
  try {
    await Deno.writeTextFile(`${mnt}/hello.txt`, "hello");
    const fileBytes = 64 * 1024 * 1024;
    for (let i = 0; i < usedBytes / fileBytes; i++) {
      await fillRandom(`${mnt}/data${i}.bin`, fileBytes);
    }
  } finally {
    await runOk("umount", [mnt]);
  }
  // Writing the data back must not overlap the measurement.
  await runOk("sync", []);
}

async function coldStartMs(usedBytes: number): Promise<number> {
  const workspace = await makeWorkspace();
  try {
    const volumeBytes = 2 * 1024 * 1024 * 1024;
    await makeFilledVolume(workspace, volumeBytes, usedBytes);
    const config = {
      ...daemonConfig(workspace, "cache"),
      grains: [{ name: "g1", sizeBytes: volumeBytes }],
    };
    const daemon = await spawnDaemon(workspace, config, ["g1"], "cache");
    try {
      const started = performance.now();
      const attachment = await attach({
        socketPath: `${workspace.sockets}/g1.sock`,
        exportName: "g1",
        mountPoint: `${workspace.root}/mnt`,
        workDirectory: `${workspace.root}/attach`,
        formatIfNew: true,
        log: quietLogger(),
      });
      let elapsed: number;
      try {
        const text = await Deno.readTextFile(
          `${workspace.root}/mnt/hello.txt`,
        ).catch(() => null);
        elapsed = performance.now() - started;
        if (text !== "hello" || attachment.formatted) {
          throw new Error(
            `the filled volume did not come back on ${attachment.device} ` +
              `(formatted: ${attachment.formatted}, text: ${text})`,
          );
        }
      } finally {
        await attachment.detach();
      }
      return elapsed;
    } finally {
      await daemon.stop();
    }
  } finally {
    await workspace.remove();
  }
}

async function coldStartBenchmark(results: Map<string, number>) {
  const small: number[] = [];
  const large: number[] = [];
  for (let i = 0; i < 5; i++) {
    small.push(await coldStartMs(64 * 1024 * 1024));
    large.push(await coldStartMs(1024 * 1024 * 1024));
  }
  const median = (values: number[]) =>
    values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  log(`cold start ms: 64M ${small.join(", ")}; 1G ${large.join(", ")}`);
  results.set("cold_start_1g_vs_64m", median(large) / median(small));
}

const results = new Map<string, number>();
await throughputBenchmarks(results);
await coldStartBenchmark(results);
for (const [name, value] of results) {
  console.log(`result ${name} ${value.toFixed(3)}`);
}
