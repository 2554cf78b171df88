/**
 * A simulated Blackrock cluster on one host: each machine is a network
 * namespace (tests/fixtures/netns.ts) running the real machine agent under
 * its scoped permissions; the master runs on machine 1 and assigns roles.
 *
 * ```sh
 * deno task cluster start --machines 5      # runs until Ctrl-C
 * deno task cluster:status                  # machines, roles, grains
 * deno task cluster add                     # boots a spare machine
 * deno task cluster remove m3               # drains and removes m3
 * ```
 *
 * Agents enter their machine's network namespace with `nsenter --net`
 * rather than `ip netns exec`, which would mount a fresh /sys and hide the
 * cgroup controllers the worker role needs.
 *
 * State (machine folders, the cluster description, logs) lives under
 * `.data/cluster/` (or `--dir`). Machines differ on purpose: m1 claims a
 * large disk (it becomes storage), m2 is small (control roles), the rest
 * claim much memory (workers).
 *
 * @module
 */
import { roleCommand } from "../services/runtime/permissions.ts";
import {
  type ServerProcess,
  spawnServer,
  waitUntil,
} from "../tests/fixtures/process.ts";
import {
  type SimulatedNetwork,
  startNetwork,
} from "../tests/fixtures/netns.ts";

const root = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const GiB = 2 ** 30;
const AGENT_PORT = 7000;
const MASTER_PORT = 7001;

/** The name users reach the cluster by, with the gateways' port. A
 * client inside the cluster's network sends it as the Host header to any
 * gateway's address. */
export const PUBLIC_HOST = "cluster.test:7104";

/** The web roles' settings for the cluster description: grains are
 * `<label>.<publicHost>`, over plain HTTP on the gateways' port. */
export function webSettings(publicHost: string) {
  const origin = `http://${publicHost}`;
  return {
    gateway: {
      mainHost: publicHost,
      grainHostSuffix: publicHost,
      shellOrigin: origin,
    },
    shell: { baseUrl: origin, grainHostSuffix: publicHost },
  };
}

/** What `cluster start` writes for the other commands. */
export interface ClusterState {
  dir: string;
  /** Random, made when the cluster starts: names its workers' cgroups and
   * picks their uid ranges, so clusters on one host share neither. */
  clusterId: string;
  namespaces: string[];
  addresses: string[];
  /** Machine numbers (1-based) running an agent. */
  active: number[];
  masterAddress: string;
}

/** Specs machine `index` claims. */
export function claimedSpecs(index: number) {
  if (index === 1) {
    return { cores: 4, memoryBytes: 8 * GiB, diskBytes: 4000 * GiB };
  }
  if (index === 2) {
    return { cores: 2, memoryBytes: 4 * GiB, diskBytes: 100 * GiB };
  }
  return { cores: 8, memoryBytes: 64 * GiB, diskBytes: 200 * GiB };
}

/** Grains per simulated worker (one host uid each). */
const CLUSTER_WORKER_UIDS = 4096;

/** Machines a simulated cluster may have, spares included. */
export const MACHINES_MAX = 64;

/** A fresh cluster ID: 16 random hex digits. */
export function newClusterId(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(8)),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
}

/**
 * The cgroup and host uid range of machine `index`'s worker in cluster
 * `clusterId`. Simulated machines share one host, and so may several
 * clusters (two test runs, a person's cluster beside CI): a worker clears
 * its cgroup when it starts, so a shared name would kill another cluster's
 * grains. The cgroup name holds the cluster ID, hence is never shared. The
 * uid ranges start at 4,000,000 (above the single-machine launcher's, see
 * tasks/single_machine_roles.ts): FNV-1a of the cluster ID picks one of
 * 1024 blocks of 64 ranges, and machine N takes the block's Nth range. The
 * workers of one cluster never share uids; two clusters do with a chance
 * of one in 1024.
 */
export function clusterWorkerSlot(
  clusterId: string,
  index: number,
): { cgroupName: string; uidFirst: number; uidCount: number } {
  if (!Number.isInteger(index) || index < 1 || index > MACHINES_MAX) {
    throw new RangeError(
      `machine number ${index} must be an integer from 1 to ${MACHINES_MAX}`,
    );
  }
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(clusterId)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  const range = (hash % 1024) * MACHINES_MAX + index - 1;
  return {
    cgroupName: `blackrock-c${clusterId}-m${index}`,
    uidFirst: 4_000_000 + range * CLUSTER_WORKER_UIDS,
    uidCount: CLUSTER_WORKER_UIDS,
  };
}

/** The command that runs machine `index`'s agent. */
export function agentCommand(
  state: { dir: string; addresses: string[]; clusterId: string },
  index: number,
): string[] {
  const address = state.addresses[index - 1];
  const stateDir = `${state.dir}/m${index}`;
  const shared = `${state.dir}/shared`;
  const specs = claimedSpecs(index);
  const slot = clusterWorkerSlot(state.clusterId, index);
  return roleCommand({
    deno: Deno.execPath(),
    entry: `${root}/services/agent/main.ts`,
    permissions: {
      net: [`${address}:${AGENT_PORT}`],
      read: [root, state.dir],
      write: [stateDir, shared],
      run: [Deno.execPath()],
      sys: ["systemMemoryInfo", "statfs"],
    },
    overrides: [
      `machine=m${index}`,
      `stateDir=${stateDir}`,
      `address=${address}`,
      `controlPort=${AGENT_PORT}`,
      `masterHosts=${JSON.stringify([state.addresses[0]])}`,
      `codeRoot=${root}`,
      `clusterHosts=${JSON.stringify(state.addresses)}`,
      `coordinatorStateFile=${shared}/grains.sqlite`,
      `shellDataDir=${shared}/shell`,
      `workerCgroupName=${slot.cgroupName}`,
      `workerUidFirst=${slot.uidFirst}`,
      `workerUidCount=${slot.uidCount}`,
      `claimedSpecs.cores=${specs.cores}`,
      `claimedSpecs.memoryBytes=${specs.memoryBytes}`,
      `claimedSpecs.diskBytes=${specs.diskBytes}`,
    ],
  });
}

/** A running simulated cluster. */
export interface SimulatedCluster {
  state: ClusterState;
  network: SimulatedNetwork;
  agents: Map<number, ServerProcess>;
  master: ServerProcess;
  /** Starts machine `index`'s agent (a spare, or one that was killed). */
  bootMachine(index: number): Promise<void>;
  /** Stops the master if it runs, and starts it again. */
  restartMaster(): Promise<void>;
  /** SIGKILL to every process in machine `index`. */
  killMachine(index: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Removes memory cgroups that workers killed with SIGKILL left behind
 * (children first; a cgroup that still has processes stays).
 */
export async function removeCgroups(names: string[]): Promise<void> {
  const remove = async (path: string): Promise<void> => {
    try {
      for await (const entry of Deno.readDir(path)) {
        if (entry.isDirectory) await remove(`${path}/${entry.name}`);
      }
      await Deno.remove(path);
    } catch {
      // Gone already, or still in use.
    }
  };
  const exists = (path: string) =>
    Deno.stat(path).then(() => true, () => false);
  for (const name of names) {
    for (const base of ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]) {
      // The last processes of a killed sandbox may take a moment to leave.
      for (let attempt = 0; attempt < 20; attempt++) {
        await remove(`${base}/${name}`);
        if (!(await exists(`${base}/${name}`))) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }
}

/**
 * Unmounts everything mounted under `path` (deepest first), as a worker
 * killed with SIGKILL leaves its grains' volume mounts behind.
 */
export async function unmountUnder(path: string): Promise<void> {
  const prefix = path.replace(/\/$/, "") + "/";
  for (let round = 0; round < 10; round++) {
    const mounts = (await Deno.readTextFile("/proc/self/mounts")).split("\n")
      .map((line) => line.split(" ")[1]?.replace(/\\040/g, " "))
      .filter((point): point is string => point?.startsWith(prefix) ?? false)
      .sort((a, b) => b.length - a.length);
    if (mounts.length === 0) return;
    for (const point of new Set(mounts)) {
      await new Deno.Command("umount", {
        args: ["-l", point],
        stdout: "null",
        stderr: "null",
      }).output();
    }
  }
}

async function pidsIn(namespace: string): Promise<number[]> {
  const command = new Deno.Command("ip", {
    args: ["netns", "pids", namespace],
    stdout: "piped",
    stderr: "null",
  });
  const output = await command.output();
  return new TextDecoder().decode(output.stdout).split("\n")
    .filter((line) => line.trim() !== "").map(Number);
}

/** Starts a cluster of `machines` machines plus `spares` without agents. */
export async function startSimulatedCluster(options: {
  machines: number;
  spares?: number;
  dir: string;
  /** Names the cluster's workers' cgroups and uid ranges; random unless
   * given. */
  clusterId?: string;
  /** Log level of every process; readiness is seen in "info" lines, so
   * "info" or "debug". */
  logLevel?: "info" | "debug";
}): Promise<SimulatedCluster> {
  const total = options.machines + (options.spares ?? 2);
  const network = await startNetwork({ machines: total });
  const state: ClusterState = {
    dir: options.dir,
    clusterId: options.clusterId ?? newClusterId(),
    namespaces: network.machines.map((m) => m.namespace),
    addresses: network.machines.map((m) => m.address),
    active: [],
    masterAddress: `${network.machines[0].address}:${MASTER_PORT}`,
  };
  // The shells' database and packages, shared as the coordinators' state
  // is: a stand-in for the cluster's MongoDB.
  await Deno.mkdir(`${options.dir}/shared/shell`, { recursive: true });
  const env = { BLACKROCK_LOG_LEVEL: options.logLevel ?? "info" };
  const agents = new Map<number, ServerProcess>();
  const bootMachine = async (index: number) => {
    // The agent's and its roles' logs go to a file per machine.
    const log = `${options.dir}/agent-m${index}.log`;
    const agent = spawnServer({
      name: `agent-m${index}`,
      command: "nsenter",
      args: [
        `--net=/run/netns/${state.namespaces[index - 1]}`,
        "sh",
        "-c",
        `exec "$@" >>${log} 2>&1`,
        "sh",
        ...agentCommand(state, index),
      ],
      env,
    });
    agents.set(index, agent);
    await agent.waitReady(async () => {
      try {
        return (await Deno.readTextFile(log)).includes('"event":"listening"');
      } catch {
        return false;
      }
    }, { what: `the agent of m${index} listens`, timeoutMs: 60_000 });
    if (!state.active.includes(index)) state.active.push(index);
  };
  const startMaster = async () => {
    const description = `${options.dir}/cluster.json`;
    const [command, ...args] = roleCommand({
      deno: Deno.execPath(),
      entry: `${root}/services/master/main.ts`,
      permissions: {
        net: [`${state.addresses[0]}:${MASTER_PORT}`, ...state.addresses],
        read: [options.dir],
        write: [options.dir],
      },
      overrides: [
        `description=${description}`,
        `listen.hostname=${state.addresses[0]}`,
        `listen.port=${MASTER_PORT}`,
      ],
    });
    cluster.master = network.spawn(1, {
      name: "master",
      command,
      args,
      env,
    });
    await cluster.master.waitReady(
      () => cluster.master.log.includes('"event":"listening"'),
      { what: "the master listens", timeoutMs: 60_000 },
    );
  };
  const cluster: SimulatedCluster = {
    state,
    network,
    agents,
    master: undefined as unknown as ServerProcess,
    bootMachine,
    async restartMaster() {
      await cluster.master?.stop();
      await startMaster();
    },
    async killMachine(index) {
      for (const pid of await pidsIn(state.namespaces[index - 1])) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch {
          // Already gone.
        }
      }
    },
    async stop() {
      // Every step runs even if an earlier one fails; the namespaces go
      // last, after nothing runs in them and nothing is mounted from them.
      try {
        await cluster.master?.stop();
        for (const agent of agents.values()) await agent.stop();
      } finally {
        for (const namespace of state.namespaces) {
          for (const pid of await pidsIn(namespace).catch(() => [])) {
            try {
              Deno.kill(pid, "SIGKILL");
            } catch {
              // Already gone.
            }
          }
        }
        await unmountUnder(options.dir).catch(() => {});
        await removeCgroups(
          state.addresses.map((_, i) =>
            clusterWorkerSlot(state.clusterId, i + 1).cgroupName
          ),
        );
        await network.stop();
      }
    },
  };
  try {
    for (let index = 1; index <= options.machines; index++) {
      await bootMachine(index);
    }
    const description = `${options.dir}/cluster.json`;
    await Deno.writeTextFile(
      description,
      JSON.stringify(
        {
          machines: state.active.map((index) => ({
            name: `m${index}`,
            agentAddress: `${state.addresses[index - 1]}:${AGENT_PORT}`,
          })),
          // The master adds the shared secrets when it first reads this.
          roleSettings: webSettings(PUBLIC_HOST),
        },
        null,
        2,
      ),
    );
    await cluster.restartMaster();
    await Deno.writeTextFile(
      `${options.dir}/state.json`,
      JSON.stringify(state, null, 2),
    );
    return cluster;
  } catch (error) {
    await cluster.stop().catch(() => {});
    throw error;
  }
}

/** Runs a tool inside machine 1's namespace, where the cluster is
 * reachable, and returns its output. */
export async function runInside(
  state: ClusterState,
  script: string,
  args: string[],
): Promise<void> {
  const command = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      state.namespaces[0],
      Deno.execPath(),
      "run",
      "--no-prompt",
      `--allow-net=${state.addresses.join(",")}`,
      `--allow-read=${state.dir}`,
      script,
      "--inside",
      ...args,
    ],
    stdout: "inherit",
    stderr: "inherit",
  });
  const status = await command.output();
  if (!status.success) Deno.exit(status.code);
}

export async function readState(dir: string): Promise<ClusterState> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
  } catch {
    console.error(
      `no running cluster in ${dir}: start one with deno task cluster start`,
    );
    Deno.exit(1);
  }
}

function flag(args: string[], name: string, fallback: string): string {
  const at = args.indexOf(name);
  return at >= 0 && args[at + 1] !== undefined ? args[at + 1] : fallback;
}

if (import.meta.main) {
  const [command, ...rest] = Deno.args;
  const dir = flag(rest, "--dir", `${root}/.data/cluster`);
  if (command === "start") {
    const machines = Number(flag(rest, "--machines", "5"));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(dir, { recursive: true });
    const cluster = await startSimulatedCluster({ machines, dir });
    console.log(
      `cluster of ${machines} machines up (master ${cluster.state.masterAddress}); ` +
        `state in ${dir}\n` +
        `  deno task cluster:status    show machines, roles and grains\n` +
        `  deno task cluster:status --admin-password\n` +
        `                              the first admin's password\n` +
        `  deno task cluster add       boot a spare machine\n` +
        `  deno task cluster remove mN drain and remove a machine\n` +
        `Ctrl-C stops the cluster.`,
    );
    const stopped = Promise.withResolvers<void>();
    Deno.addSignalListener("SIGINT", () => stopped.resolve());
    Deno.addSignalListener("SIGTERM", () => stopped.resolve());
    await stopped.promise;
    await cluster.stop();
    await Deno.remove(`${dir}/state.json`).catch(() => {});
    console.log("cluster stopped");
    Deno.exit(0);
  } else if (command === "add" || command === "remove") {
    const state = await readState(dir);
    if (command === "add") {
      const index = state.addresses.findIndex((_, i) =>
        !state.active.includes(i + 1)
      ) + 1;
      if (index === 0) {
        console.error("no spare machine left; start with more spares");
        Deno.exit(1);
      }
      // Detached, so that it outlives this command; `cluster start` kills
      // every process of the namespaces when it stops.
      const [program, ...args] = agentCommand(state, index);
      const log = `${dir}/agent-m${index}.log`;
      const agent = new Deno.Command("setsid", {
        args: [
          "sh",
          "-c",
          `exec nsenter --net=/run/netns/${
            state.namespaces[index - 1]
          } "$@" >>${log} 2>&1`,
          "sh",
          program,
          ...args,
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      agent.unref();
      await waitUntil(async () => {
        try {
          return (await Deno.readTextFile(log)).includes('"event":"listening"');
        } catch {
          return false;
        }
      }, { what: `the agent of m${index} listens`, timeoutMs: 60_000 });
      state.active.push(index);
      await Deno.writeTextFile(
        `${dir}/state.json`,
        JSON.stringify(state, null, 2),
      );
      await runInside(state, `${root}/tasks/cluster_status.ts`, [
        "--dir",
        dir,
        "--add",
        `m${index}`,
        `${state.addresses[index - 1]}:${AGENT_PORT}`,
      ]);
      Deno.exit(0);
    } else {
      const name = rest.find((arg, i) =>
        !arg.startsWith("--") && rest[i - 1] !== "--dir"
      );
      const known = state.active.map((index) => `m${index}`);
      if (name === undefined || !known.includes(name)) {
        console.error(
          (name === undefined
            ? "cluster remove: which machine?"
            : `cluster remove: machine ${JSON.stringify(name)} is not in ` +
              `the cluster`) +
            ` (its machines: ${known.join(", ") || "none"})\n` +
            "usage: deno task cluster remove NAME [--dir DIR]",
        );
        Deno.exit(2);
      }
      await runInside(state, `${root}/tasks/cluster_status.ts`, [
        "--dir",
        dir,
        "--remove",
        name,
      ]);
    }
  } else {
    console.error(
      "usage: deno task cluster start [--machines N] [--dir DIR]\n" +
        "       deno task cluster add | remove NAME [--dir DIR]",
    );
    Deno.exit(2);
  }
}
