/**
 * The web roles of the single-machine setup: the shell and the gateway
 * (with nginx terminating TLS). They are listed in
 * tasks/single_machine_roles.ts.
 *
 * The public address is `https://localhost:<first gateway port>/`, with a
 * self-signed certificate made at first start (in `.data/gateway/nginx/`).
 * Grain hostnames are `<random>.localhost:<same port>`, which browsers
 * resolve to this machine. Shells register with the gateway over Cap'n
 * Proto RPC (proto/gateway.capnp) on its control port, with a token kept in
 * `.data/web-token`, made once, so restarts keep working together.
 *
 * @module
 */
import type { RoleContext, SingleMachineRole } from "./single_machine_roles.ts";
import { gatewayPermissions } from "../services/gateway/role.ts";
import { shellPermissions } from "../services/shell/role.ts";

function parentOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/"));
}

/** The shells' and gateway's shared secret, made once per data folder. */
function webToken(context: RoleContext): string {
  const file = `${parentOf(context.dataDir)}/web-token`;
  try {
    return Deno.readTextFileSync(file).trim();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  const token = Array.from(bytes, (b) => b.toString(16).padStart(2, "0"))
    .join("");
  Deno.writeTextFileSync(file, token + "\n", { mode: 0o600 });
  return token;
}

/** Ports: gateway[0] is nginx's TLS port, [1] the gateway service behind
 * it, [2] the control port shells register on; shell[0] is the shell and
 * shell[1] is where a shell finds the HTTP grain runner (the runner
 * protocol of services/shell/grain_runner.ts) when the table has no worker
 * role; with one (the default table), grains run on the worker. */
function ports(context: RoleContext) {
  const gateway = context.ports.gateway ?? [];
  const shell = context.ports.shell ?? [];
  if (gateway.length < 3 || shell.length < 2) {
    throw new Error("the shell and gateway roles need their ports allocated");
  }
  return {
    https: gateway[0],
    proxy: gateway[1],
    control: gateway[2],
    shell: shell[0],
    runner: shell[1],
  };
}

/** The worker role's RPC port (its first port), when the table has a
 * worker: the shell then starts grains on it over proto/worker.capnp, and
 * the gateway opens their sessions there. */
function workerPort(context: RoleContext): number | undefined {
  return context.ports.worker?.[0];
}

/** The shell: sign-in, apps, grains, sharing, admin. */
export const shellRole: SingleMachineRole = {
  name: "shell",
  entry: "services/shell/main.ts",
  ports: 2,
  permissions: (context) => {
    const p = ports(context);
    return shellPermissions({
      dataDir: context.dataDir,
      readFiles: [context.configFile],
      netHosts: [
        `127.0.0.1:${p.shell}`,
        `127.0.0.1:${p.control}`,
        `127.0.0.1:${workerPort(context) ?? p.runner}`,
      ],
    });
  },
  config: (context) => {
    const p = ports(context);
    const host = `localhost:${p.https}`;
    return {
      listen: { hostname: "127.0.0.1", port: p.shell },
      baseUrl: `https://${host}`,
      grainHostSuffix: host,
      database: { kind: "sqlite", path: `${context.dataDir}/shell.sqlite` },
      packageDir: `${context.dataDir}/packages`,
      runner: workerPort(context) !== undefined
        ? { kind: "worker", hostname: "127.0.0.1", port: workerPort(context) }
        : { kind: "http", url: `http://127.0.0.1:${p.runner}` },
      gateway: {
        control: { hostname: "127.0.0.1", port: p.control },
        token: webToken(context),
      },
    };
  },
  describe: (context) => {
    const p = ports(context);
    const worker = workerPort(context);
    const grains = worker !== undefined
      ? `grains on the worker at 127.0.0.1:${worker}`
      : `grains through the runner at http://127.0.0.1:${p.runner}/`;
    return `http://127.0.0.1:${p.shell}/ (reached through the gateway); ${grains}`;
  },
};

/** The gateway: nginx with TLS, routing to shells and grain sessions. */
export const gatewayRole: SingleMachineRole = {
  name: "gateway",
  entry: "services/gateway/main.ts",
  ports: 3,
  permissions: (context) =>
    gatewayPermissions({
      dataDir: context.dataDir,
      readFiles: [context.configFile],
    }),
  config: (context) => {
    const p = ports(context);
    const host = `localhost:${p.https}`;
    return {
      listen: { hostname: "127.0.0.1", port: p.proxy },
      control: { hostname: "127.0.0.1", port: p.control },
      mainHost: host,
      grainHostSuffix: host,
      shellOrigin: `https://${host}`,
      token: webToken(context),
      nginx: {
        enabled: true,
        dir: `${context.dataDir}/nginx`,
        listenHostname: "127.0.0.1",
        listenPort: p.https,
      },
    };
  },
  describe: (context) =>
    `open https://localhost:${ports(context).https}/ (self-signed certificate)`,
};
