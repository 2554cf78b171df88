/**
 * The nginx in front of the gateway: its configuration, written from the
 * current set of shell replicas, its certificate, and its process.
 *
 * nginx terminates TLS for the main hostname and every grain hostname and
 * sends each request to the gateway service. For the main hostname the
 * configuration also lists the live shell replicas as a fallback upstream,
 * used only when the gateway service itself does not answer, so that
 * people can still sign in while a gateway process restarts. That list is
 * why the configuration is rewritten, and nginx reloaded, whenever shells
 * come and go.
 *
 * @module
 */

/** What the configuration is made from. */
export interface NginxSettings {
  /** Folder holding nginx.conf, the pid file, logs and temp folders. */
  dir: string;
  listenHostname: string;
  listenPort: number;
  /** Main hostname without port, for example "localhost". */
  mainHostname: string;
  /** Grain hostnames end with "." + this, without port. */
  grainHostname: string;
  certFile: string;
  keyFile: string;
  /** Where the gateway service listens, "host:port". */
  gateway: string;
  /** Live shell replicas, "host:port" each. */
  shells: string[];
  /** The largest body a grain host or a package upload (/upload) may send:
   * the shell's package limit plus room for the request's framing. */
  maxBodyBytes: number;
  /** The largest body any other request to the main hostname may send
   * (sign-in and other forms). Default 1 MiB. */
  maxFormBytes?: number;
}

/** Thrown when nginx refuses its configuration or cannot start. */
export class NginxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NginxError";
  }
}

const ADDRESS = /^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$/;
const HOSTNAME = /^[A-Za-z0-9.\-]+$/;

/** Renders nginx.conf; refuses values that could inject directives. */
export function renderNginxConf(
  s: NginxSettings,
  pidFile = `${s.dir}/nginx.pid`,
): string {
  for (const address of [s.gateway, ...s.shells]) {
    if (!ADDRESS.test(address)) {
      throw new NginxError(`bad upstream address ${JSON.stringify(address)}`);
    }
  }
  for (const name of [s.mainHostname, s.grainHostname, s.listenHostname]) {
    if (!HOSTNAME.test(name)) {
      throw new NginxError(`bad hostname ${JSON.stringify(name)}`);
    }
  }
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((kind) => `  ${kind}_temp_path ${s.dir}/tmp/${kind};`).join("\n");
  // As root, nginx would run its workers as nobody, who cannot read a
  // private folder; on a gateway machine the unit starts it unprivileged.
  const user = Deno.uid() === 0 ? "user root root;\n" : "";
  const shellServers = s.shells.length > 0
    ? s.shells.map((a) => `    server ${a};`).join("\n")
    : `    server ${s.gateway};`;
  const proxy = `
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;`;
  const formBytes = s.maxFormBytes ?? 1024 * 1024;
  // The access log keeps neither query strings nor the Host header (grain
  // hostnames are session secrets), and share-link tokens in paths are
  // replaced by "-": a log readable by an operator must not grant access.
  return `# Written by the Blackrock gateway; rewritten when shells change.
daemon off;
${user}worker_processes 1;
pid ${pidFile};
error_log ${s.dir}/error.log warn;
events { worker_connections 1024; }
http {
  map $uri $blackrock_logged_path {
    ~^/shared/ /shared/-;
    ~^/_blackrock/ /_blackrock/-;
    default $uri;
  }
  log_format blackrock '$remote_addr [$time_local] "$request_method '
    '$blackrock_logged_path $server_protocol" $status $body_bytes_sent';
  access_log ${s.dir}/access.log blackrock;
${temp}
  client_max_body_size ${formBytes};
  upstream blackrock_gateway { server ${s.gateway}; }
  upstream blackrock_shells {
${shellServers}
  }
  map $http_upgrade $connection_upgrade { default upgrade; "" close; }
  ssl_certificate ${s.certFile};
  ssl_certificate_key ${s.keyFile};
  server {
    listen ${s.listenHostname}:${s.listenPort} ssl http2;
    server_name ${s.mainHostname};
    location / {
      proxy_pass http://blackrock_gateway;${proxy}
      proxy_intercept_errors off;
      error_page 502 504 = @shells;
    }
    location = /upload {
      client_max_body_size ${s.maxBodyBytes};
      proxy_pass http://blackrock_gateway;${proxy}
      proxy_intercept_errors off;
      error_page 502 504 = @shells;
    }
    location @shells {
      proxy_pass http://blackrock_shells;${proxy}
    }
  }
  server {
    listen ${s.listenHostname}:${s.listenPort} ssl http2;
    server_name *.${s.grainHostname};
    client_max_body_size ${s.maxBodyBytes};
    location / {
      proxy_pass http://blackrock_gateway;${proxy}
    }
  }
}
`;
}

async function run(command: string, args: string[]): Promise<string> {
  const output = await new Deno.Command(command, {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stderr);
  if (!output.success) {
    throw new NginxError(`${command} ${args.join(" ")} failed: ${text}`);
  }
  return text;
}

/** Makes a self-signed certificate for the main and grain hostnames if
 * there is none yet. Browsers will warn about it; a real deployment puts
 * its own certificate at the same paths. */
export async function ensureCertificate(
  certFile: string,
  keyFile: string,
  mainHostname: string,
  grainHostname: string,
): Promise<void> {
  try {
    await Deno.stat(certFile);
    await Deno.stat(keyFile);
    return;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const names = [
    `DNS:${mainHostname}`,
    `DNS:*.${grainHostname}`,
    "IP:127.0.0.1",
  ];
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "825",
    "-subj",
    `/CN=${mainHostname}`,
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    "-addext",
    `subjectAltName=${[...new Set(names)].join(",")}`,
    "-keyout",
    keyFile,
    "-out",
    certFile,
  ]);
  await Deno.chmod(keyFile, 0o600);
}

/** An nginx process run by the gateway, reloaded on configuration change. */
export class NginxProcess {
  readonly settings: NginxSettings;
  #child: Deno.ChildProcess | undefined;
  #written = "";

  constructor(settings: NginxSettings) {
    this.settings = settings;
  }

  get confPath(): string {
    return `${this.settings.dir}/nginx.conf`;
  }

  #args(...extra: string[]): string[] {
    return [
      "-p",
      this.settings.dir,
      "-c",
      this.confPath,
      "-e",
      `${this.settings.dir}/error.log`,
      ...extra,
    ];
  }

  async #write(shells: string[]): Promise<boolean> {
    const text = renderNginxConf({ ...this.settings, shells });
    if (text === this.#written) return false;
    // nginx -t checks the new configuration before it replaces the running
    // one. It writes the pid file it names, so it is given its own.
    await Deno.writeTextFile(
      `${this.confPath}.new`,
      renderNginxConf(
        { ...this.settings, shells },
        `${this.settings.dir}/nginx-test.pid`,
      ),
    );
    await run("nginx", [
      "-t",
      "-q",
      "-p",
      this.settings.dir,
      "-c",
      `${this.confPath}.new`,
      "-e",
      `${this.settings.dir}/error.log`,
    ]);
    await Deno.writeTextFile(`${this.confPath}.new`, text);
    await Deno.rename(`${this.confPath}.new`, this.confPath);
    this.#written = text;
    return true;
  }

  /** Writes the configuration and starts nginx. */
  async start(shells: string[]): Promise<void> {
    // The folder holds the TLS key, logs and request bodies in flight: it
    // is private, and the logs are made private before nginx appends to
    // them (nginx keeps the mode of a file that exists).
    const dir = this.settings.dir;
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    await Deno.chmod(dir, 0o700);
    for (const kind of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]) {
      await Deno.mkdir(`${dir}/tmp/${kind}`, { recursive: true, mode: 0o700 });
    }
    for (const log of ["access.log", "error.log"]) {
      const file = await Deno.open(`${dir}/${log}`, {
        append: true,
        create: true,
        mode: 0o600,
      });
      file.close();
      await Deno.chmod(`${dir}/${log}`, 0o600);
    }
    await this.#write(shells);
    await this.#stopOrphan();
    // A pid file left by an nginx that was killed would make a reload
    // look possible before this one can take signals.
    await Deno.remove(this.#pidFile).catch(() => {});
    this.#child = new Deno.Command("nginx", {
      args: this.#args(),
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
  }

  /** Rewrites the configuration for these shells; reloads nginx if it
   * changed. Returns whether it reloaded. */
  async update(shells: string[]): Promise<boolean> {
    if (!(await this.#write(shells))) return false;
    if (this.#child !== undefined) {
      await this.#untilSignalsHandled();
      this.#child?.kill("SIGHUP");
    }
    return true;
  }

  /** An nginx left running by a gateway that was killed (SIGKILL gives it
   * no chance to stop its child) still holds the port: ask it to quit,
   * through its own pid file, and wait until it has. */
  async #stopOrphan(): Promise<void> {
    const text = await Deno.readTextFile(this.#pidFile).catch(() => "");
    if (!/^\d+\s*$/.test(text)) return;
    await run("nginx", this.#args("-s", "quit")).catch(() => {});
    for (let i = 0; i < 100; i++) {
      try {
        await Deno.stat(this.#pidFile);
      } catch {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  get #pidFile(): string {
    return `${this.settings.dir}/nginx.pid`;
  }

  /** nginx writes its pid file after installing its signal handlers; a
   * SIGHUP before that would end it instead of reloading it. */
  async #untilSignalsHandled(): Promise<void> {
    const pid = String(this.#child?.pid);
    for (let i = 0; i < 100; i++) {
      const text = await Deno.readTextFile(this.#pidFile).catch(() => "");
      if (text.trim() === pid) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new NginxError("nginx did not write its pid file within 5 s");
  }

  /** The exit status promise of the nginx process, if started. */
  get status(): Promise<Deno.CommandStatus> | undefined {
    return this.#child?.status;
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    try {
      child.kill("SIGQUIT");
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, 3000);
    await child.status;
    clearTimeout(timer);
  }
}
