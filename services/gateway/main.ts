/**
 * The gateway role: nginx terminating TLS in front of the gateway service,
 * which sends the main hostname to a shell replica and each grain hostname
 * to its session's backend. Shells register on the control port (Cap'n
 * Proto RPC, proto/gateway.capnp, see control.ts); nginx's configuration
 * follows the set of live shells.
 *
 * @module
 */
import { hostname } from "node:os";
import { z } from "zod";
import { runService } from "../runtime/service.ts";
import { ensureCertificate, NginxProcess } from "./nginx.ts";
import { Gateway } from "./proxy.ts";
import { gatewayLogin, listenControl } from "./control.ts";

/** The gateway's configuration. */
export const gatewayConfig = z.strictObject({
  /** Where nginx sends requests; loopback only. */
  listen: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(0),
  }).default({ hostname: "127.0.0.1", port: 0 }),
  /** Where shells register (RPC over TCP). */
  control: z.strictObject({
    hostname: z.string().default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(6081),
  }).default({ hostname: "127.0.0.1", port: 6081 }),
  /** Main hostname with port, as browsers send it in Host. */
  mainHost: z.string().default("localhost:8443"),
  grainHostSuffix: z.string().default("localhost:8443"),
  shellOrigin: z.string().url().default("https://localhost:8443"),
  token: z.string().min(16),
  shellTimeoutMs: z.number().int().positive().default(6000),
  nginx: z.strictObject({
    enabled: z.boolean().default(true),
    dir: z.string().default(".data/gateway/nginx"),
    listenHostname: z.string().default("127.0.0.1"),
    listenPort: z.number().int().min(1).max(65535).default(8443),
    certFile: z.string().optional(),
    keyFile: z.string().optional(),
    maxBodyBytes: z.number().int().positive().default(1024 ** 3 + 65536),
  }).default({
    enabled: true,
    dir: ".data/gateway/nginx",
    listenHostname: "127.0.0.1",
    listenPort: 8443,
    maxBodyBytes: 1024 ** 3 + 65536,
  }),
});

function withoutPort(host: string): string {
  return host.replace(/:\d+$/, "");
}

if (import.meta.main) {
  await runService({
    role: "gateway",
    config: gatewayConfig,
    async start(config, log) {
      let nginx: NginxProcess | undefined;
      let updating = Promise.resolve();
      let stopping = false;
      const startedAt = Date.now();
      const gateway = new Gateway({
        mainHost: config.mainHost,
        grainHostSuffix: config.grainHostSuffix,
        shellOrigin: config.shellOrigin,
        log,
        shellTimeoutMs: config.shellTimeoutMs,
        status: () => ({
          hostname: hostname(),
          pid: Deno.pid,
          rssBytes: Deno.memoryUsage().rss,
          startedAtMs: startedAt,
          address: `${config.nginx.listenHostname}:${config.nginx.listenPort}`,
        }),
        onShellsChanged(shells) {
          // Updates run one after another, so nginx ends on the last list.
          updating = updating.then(async () => {
            if (nginx === undefined || stopping) return;
            try {
              if (await nginx.update(shells)) {
                log.info("nginx-reloaded", { shells });
              }
            } catch (error) {
              log.error("nginx-update-failed", { error });
            }
          });
        },
      });
      const proxy = Deno.serve({
        hostname: config.listen.hostname,
        port: config.listen.port,
        onListen: () => {},
      }, (request) => gateway.handle(request));
      const login = gatewayLogin(gateway, config.token);
      const control = listenControl(login, config.control, log);
      const proxyAddress = `${config.listen.hostname}:${proxy.addr.port}`;
      log.info("listening", {
        proxy: proxyAddress,
        control: `${config.control.hostname}:${control.port}`,
      });

      if (config.nginx.enabled) {
        const dir = config.nginx.dir;
        await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
        await Deno.chmod(dir, 0o700);
        const certFile = config.nginx.certFile ?? `${dir}/server.pem`;
        const keyFile = config.nginx.keyFile ?? `${dir}/server.key`;
        await ensureCertificate(
          certFile,
          keyFile,
          withoutPort(config.mainHost),
          withoutPort(config.grainHostSuffix),
        );
        nginx = new NginxProcess({
          dir: await Deno.realPath(dir),
          listenHostname: config.nginx.listenHostname,
          listenPort: config.nginx.listenPort,
          mainHostname: withoutPort(config.mainHost),
          grainHostname: withoutPort(config.grainHostSuffix),
          certFile: await Deno.realPath(certFile),
          keyFile: await Deno.realPath(keyFile),
          gateway: proxyAddress,
          shells: gateway.shells(),
          maxBodyBytes: config.nginx.maxBodyBytes,
        });
        await nginx.start(gateway.shells());
        log.info("nginx-started", {
          url: `https://${config.mainHost}/`,
          port: config.nginx.listenPort,
        });
      }
      const sweeper = setInterval(() => gateway.sweep(), 1000);
      const nginxExit = nginx?.status?.then((status) => {
        if (!stopping) log.error("nginx-exited", { code: status.code });
      });

      return {
        done: nginxExit,
        async stop() {
          stopping = true;
          clearInterval(sweeper);
          await nginx?.stop();
          await updating;
          control.close();
          login.close();
          await proxy.shutdown();
          gateway.close();
        },
      };
    },
  });
}
