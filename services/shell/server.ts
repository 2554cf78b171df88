/**
 * The shell's HTTP handler: sign-in, apps, grains, sharing, the admin page;
 * and {@link lookupRoute}, which gateways reach over RPC (gateway_link.ts)
 * for grain hostnames. It keeps no
 * state of its own beyond caches: everything lives in the repository, so
 * any number of replicas can serve the same users.
 *
 * Security:
 * - the session cookie is HttpOnly, SameSite=Lax, Secure behind TLS, and
 *   carries a secret whose SHA-256 is the stored session id;
 * - every POST must carry the session's CSRF token (form field `csrf` or
 *   header `x-csrf-token`), and its Origin, when sent, must be the shell's;
 * - a grain is served from a random hostname per session, so the app runs
 *   in an origin that sees neither the shell's cookie nor other grains.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { Logger } from "../runtime/log.ts";
import { type GrainRunner, GrainUnavailableError } from "./grain_runner.ts";
import {
  packageRecord,
  type PackageStore,
  type PackageVerifier,
  UploadError,
} from "./packages.ts";
import {
  adminPage,
  type Frame,
  grainPage,
  homePage,
  loginPage,
  messagePage,
} from "./pages.ts";
import { hashPassword, randomHostLabel, randomToken } from "./password.ts";
import { verifyPassword } from "./password.ts";
import { SignInThrottle } from "./sign_in_throttle.ts";
import {
  type AppRole,
  ConflictError,
  type Grain,
  type LoginSession,
  type PackageInfo,
  type Replica,
  type ShellRepository,
  type User,
} from "./repo/types.ts";

/** What the handler is built from. */
export interface ShellOptions {
  repo: ShellRepository;
  packages: PackageStore;
  verifier: PackageVerifier;
  runner: GrainRunner;
  log: Logger;
  /** The shell's public URL, for example "https://localhost:8443". */
  baseUrl: string;
  /** Grain hosts are `<label>.<grainHostSuffix>`, for example
   * "localhost:8443". */
  grainHostSuffix: string;
  defaultQuotaBytes: number;
  loginSessionMs?: number;
  grainSessionMs?: number;
  /** Other roles' processes for the admin page (the gateway's, for
   * example), fetched when the page is shown. */
  otherReplicas?: () => Promise<Replica[]>;
  /** Limits on failed sign-ins (sign_in_throttle.ts). */
  signInThrottle?: SignInThrottle;
}

/** The client's address: the last X-Forwarded-For entry, which nginx sets
 * to the peer it saw (the shell is reached only through the gateway), else
 * the peer of this connection. */
function clientAddress(request: Request, info?: Deno.ServeHandlerInfo) {
  const forwarded = request.headers.get("x-forwarded-for");
  if (forwarded !== null && forwarded.trim() !== "") {
    return forwarded.split(",").at(-1)!.trim().slice(0, 64);
  }
  const peer = info?.remoteAddr;
  return peer !== undefined && "hostname" in peer ? peer.hostname : "unknown";
}

const FORM_LIMIT_BYTES = 64 * 1024;
const OWNER_ROLE: AppRole = { title: "owner", canWrite: true };

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

function htmlResponse(body: string, status = 200, headers: HeadersInit = {}) {
  return new Response(body, {
    status,
    headers: {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-store",
      "x-frame-options": "DENY",
      "content-security-policy": "frame-ancestors 'none'",
      "referrer-policy": "same-origin",
      ...headers,
    },
  });
}

function json(body: unknown, status = 200) {
  return new Response(JSON.stringify(body), {
    status,
    headers: {
      "content-type": "application/json",
      "cache-control": "no-store",
    },
  });
}

function redirect(location: string, headers: HeadersInit = {}) {
  return new Response(null, {
    status: 303,
    headers: { location, ...headers },
  });
}

/**
 * Reads a request body of at most `limitBytes`, counting bytes as they
 * arrive: a chunked body has no content-length to check first, so reading
 * it whole would let anyone, signed in or not, fill the shell's memory.
 * Throws a 413 Refusal as soon as the limit is passed and cancels the rest.
 */
async function readBodyText(
  request: Request,
  limitBytes: number,
): Promise<string> {
  const tooLarge = () =>
    new Refusal(new Response("form too large", { status: 413 }));
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > limitBytes) {
    await request.body?.cancel().catch(() => {});
    throw tooLarge();
  }
  if (request.body === null) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let sizeBytes = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    sizeBytes += value.length;
    if (sizeBytes > limitBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(sizeBytes);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return new TextDecoder().decode(bytes);
}

function parseCookies(header: string | null): Map<string, string> {
  const cookies = new Map<string, string>();
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0) {
      cookies.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
    }
  }
  return cookies;
}

/** Thrown inside handlers for a response other than the normal one. */
class Refusal extends Error {
  constructor(readonly response: Response) {
    super("refused");
  }
}

interface Visitor {
  user: User;
  session: LoginSession;
}

/** Where a user stands with a grain. */
interface Access {
  role: AppRole;
  roleIndex: number;
  isOwner: boolean;
}

/** Builds the shell's request handler. */
export function createShellHandler(options: ShellOptions) {
  const {
    repo,
    packages,
    verifier,
    runner,
    log,
  } = options;
  const secure = options.baseUrl.startsWith("https:");
  const origin = new URL(options.baseUrl).origin;
  const cookieName = secure ? "__Host-blackrock" : "blackrock";
  const loginSessionMs = options.loginSessionMs ?? 14 * 24 * 3600_000;
  const grainSessionMs = options.grainSessionMs ?? 3600_000;
  const scheme = secure ? "https" : "http";
  const throttle = options.signInThrottle ?? new SignInThrottle();

  function sessionCookie(value: string, maxAgeSeconds: number): string {
    return `${cookieName}=${value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${maxAgeSeconds}${
      secure ? "; Secure" : ""
    }`;
  }

  async function visitor(request: Request): Promise<Visitor | undefined> {
    const secret = parseCookies(request.headers.get("cookie")).get(cookieName);
    if (secret === undefined || secret.length > 100) return undefined;
    const session = await repo.getLoginSession(sha256(secret));
    if (session === undefined || session.expiresAt < Date.now()) {
      return undefined;
    }
    const user = await repo.getUser(session.userId);
    return user && { user, session };
  }

  function frame(v: Visitor, title: string): Frame {
    return { title, user: v.user, csrf: v.session.csrfToken };
  }

  /** Reads a urlencoded form after checking its size, origin and CSRF. */
  async function readForm(
    request: Request,
    v: Visitor | undefined,
  ): Promise<URLSearchParams> {
    checkOrigin(request);
    const text = await readBodyText(request, FORM_LIMIT_BYTES);
    const form = new URLSearchParams(text);
    if (v !== undefined && form.get("csrf") !== v.session.csrfToken) {
      throw new Refusal(
        new Response("missing or wrong CSRF token", { status: 403 }),
      );
    }
    return form;
  }

  function checkOrigin(request: Request) {
    const sent = request.headers.get("origin");
    if (sent !== null && sent !== origin) {
      throw new Refusal(
        new Response(`cross-origin request from ${sent} refused`, {
          status: 403,
        }),
      );
    }
  }

  async function requireVisitor(request: Request): Promise<Visitor> {
    const v = await visitor(request);
    if (v === undefined) {
      const url = new URL(request.url);
      if (request.method === "GET") {
        throw new Refusal(
          redirect(`/login?next=${encodeURIComponent(url.pathname)}`),
        );
      }
      throw new Refusal(new Response("sign in first", { status: 401 }));
    }
    return v;
  }

  async function accessOf(
    user: User,
    grain: Grain,
    pkg: PackageInfo | undefined,
  ): Promise<Access | undefined> {
    if (grain.ownerId === user.id) {
      return { role: OWNER_ROLE, roleIndex: -1, isOwner: true };
    }
    const claim = await repo.getClaim(user.id, grain.id);
    if (claim === undefined) return undefined;
    const share = await repo.getShare(claim.shareId);
    if (share === undefined || share.revoked) return undefined;
    const role = pkg?.roles[share.roleIndex];
    if (role === undefined) return undefined;
    return { role, roleIndex: share.roleIndex, isOwner: false };
  }

  /** Packages whose app was asked for its roles by this replica. */
  const rolesAsked = new Set<string>();

  /** Records the roles the app declares, once per package and replica, so
   * that share links offer them instead of the defaults. */
  async function learnRoles(grain: Grain): Promise<void> {
    if (runner.declaredRoles === undefined) return;
    if (rolesAsked.has(grain.packageId)) return;
    rolesAsked.add(grain.packageId);
    try {
      const roles = await runner.declaredRoles(grain.id);
      if (roles.length > 0) await repo.setPackageRoles(grain.packageId, roles);
    } catch (error) {
      rolesAsked.delete(grain.packageId);
      log.warn("view-info-failed", { grain: grain.id, error });
    }
  }

  /** Starts a web session on a fresh hostname and returns its URL. */
  async function openSession(
    grain: Grain,
    userId: string,
    access: Access,
  ): Promise<string> {
    const backend = await runner.open(grain, packages.pathOf(grain.packageId));
    await learnRoles(grain);
    const now = Date.now();
    const hostLabel = randomHostLabel();
    // The key reaches the browser once, in the frame's first URL; only its
    // hash is stored, and the gateway checks the cookie against it.
    const sessionKey = randomToken(24);
    await repo.createGrainSession({
      id: sha256(sessionKey),
      grainId: grain.id,
      userId,
      hostLabel,
      roleIndex: access.roleIndex,
      canWrite: access.role.canWrite,
      backend,
      createdAt: now,
      expiresAt: now + grainSessionMs,
    });
    await repo.touchGrain(grain.id, now);
    if (grain.firstStartedAt === 0) {
      await repo.markGrainStarted(grain.id, now);
      grain.firstStartedAt = now;
    }
    log.info("grain-session-opened", {
      grain: grain.id,
      user: userId,
      canWrite: access.role.canWrite,
    });
    return `${scheme}://${hostLabel}.${options.grainHostSuffix}` +
      `/_blackrock/session?token=${sessionKey}`;
  }

  async function refreshSizes(grains: Grain[]) {
    if (runner.kind === "none") return;
    await Promise.all(grains.map(async (grain) => {
      const size = await runner.sizeOf(grain.id);
      if (size !== undefined && size !== grain.sizeBytes) {
        grain.sizeBytes = size;
        await repo.setGrainSize(grain.id, size);
      }
    }));
  }

  async function packageMap(): Promise<Map<string, PackageInfo>> {
    return new Map((await repo.listPackages()).map((p) => [p.id, p]));
  }

  // --- routes -----------------------------------------------------------

  async function home(request: Request): Promise<Response> {
    const v = await requireVisitor(request);
    const url = new URL(request.url);
    const pkgs = await packageMap();
    const installs = await repo.listInstalls(v.user.id);
    const owned = await repo.listGrainsOwnedBy(v.user.id);
    await refreshSizes(owned);
    const shared: { grain: Grain; role: string }[] = [];
    for (const claim of await repo.listClaims(v.user.id)) {
      const grain = await repo.getGrain(claim.grainId);
      const share = await repo.getShare(claim.shareId);
      if (grain === undefined || share === undefined || share.revoked) continue;
      const role = pkgs.get(grain.packageId)?.roles[share.roleIndex];
      shared.push({ grain, role: role?.title ?? "?" });
    }
    const installed = url.searchParams.get("installed");
    const f = frame(v, "Home");
    if (installed !== null && pkgs.has(installed)) {
      f.notice = {
        kind: "ok",
        text: `${pkgs.get(installed)!.title} is installed.`,
      };
    }
    return htmlResponse(homePage({
      frame: f,
      apps: installs.map((i) => pkgs.get(i.packageId)).filter((p) =>
        p !== undefined
      ),
      owned,
      shared,
      packages: pkgs,
      usedBytes: await repo.storageUsedBy(v.user.id),
      quotaBytes: v.user.quotaBytes,
      maxUploadBytes: packages.maxUploadBytes,
    }));
  }

  async function login(
    request: Request,
    info?: Deno.ServeHandlerInfo,
  ): Promise<Response> {
    if (request.method === "GET") return htmlResponse(loginPage());
    const form = await readForm(request, undefined);
    const name = (form.get("name") ?? "").trim().toLowerCase().slice(0, 100);
    const password = form.get("password") ?? "";
    const address = clientAddress(request, info);
    const waitMs = throttle.waitMs(name, address);
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      log.info("sign-in-throttled", { name, address, seconds });
      return htmlResponse(
        loginPage(
          `Too many failed sign-ins for this account or from your address. Try again in ${seconds} second${
            seconds === 1 ? "" : "s"
          }.`,
        ),
        429,
        { "retry-after": String(seconds) },
      );
    }
    const user = await repo.getUserByName(name);
    if (
      user === undefined || !(await verifyPassword(password, user.passwordHash))
    ) {
      throttle.failed(name, address);
      log.info("sign-in-refused", { name, address });
      return htmlResponse(loginPage("Wrong user name or password."), 401);
    }
    throttle.succeeded(name);
    const secret = randomToken(32);
    const now = Date.now();
    await repo.createLoginSession({
      id: sha256(secret),
      userId: user.id,
      csrfToken: randomToken(24),
      createdAt: now,
      expiresAt: now + loginSessionMs,
    });
    log.info("signed-in", { user: user.id });
    const next = new URL(request.url).searchParams.get("next") ?? "/";
    return redirect(
      sameOriginPath(next),
      {
        "set-cookie": sessionCookie(secret, Math.floor(loginSessionMs / 1000)),
      },
    );
  }

  /** The path of `next` when it resolves on the shell's own origin, else
   * "/". Browsers read "/\\host" and "/<tab>/host" as "//host", so a
   * prefix check is not enough: the URL parser decides, as a browser would,
   * and only the normalised path is sent back. */
  function sameOriginPath(next: string): string {
    let target: URL;
    try {
      target = new URL(next, origin);
    } catch {
      return "/";
    }
    if (target.origin !== origin) return "/";
    return `${target.pathname}${target.search}${target.hash}`;
  }

  async function logout(request: Request): Promise<Response> {
    const v = await requireVisitor(request);
    await readForm(request, v);
    await repo.deleteLoginSession(v.session.id);
    return redirect("/login", { "set-cookie": sessionCookie("", 0) });
  }

  async function upload(request: Request): Promise<Response> {
    const v = await requireVisitor(request);
    checkOrigin(request);
    if (request.headers.get("x-csrf-token") !== v.session.csrfToken) {
      return json({ ok: false, error: "Missing or wrong CSRF token." }, 403);
    }
    const declared = Number(request.headers.get("content-length") ?? "0");
    try {
      if (declared > packages.maxUploadBytes) {
        await request.body?.cancel();
        throw new UploadError(
          `This file is larger than the upload limit.`,
          413,
        );
      }
      if (request.body === null) throw new UploadError("No file was sent.");
      const summary = await packages.accept(request.body, verifier);
      const record = packageRecord(summary, v.user.id, Date.now());
      await repo.putPackage(record);
      await repo.install({
        userId: v.user.id,
        packageId: record.id,
        appId: record.appId,
        createdAt: Date.now(),
      });
      log.info("package-installed", {
        package: record.id,
        app: record.appId,
        user: v.user.id,
      });
      return json({ ok: true, packageId: record.id, title: record.title });
    } catch (error) {
      if (error instanceof UploadError) {
        log.info("upload-refused", { user: v.user.id, reason: error.message });
        return json({ ok: false, error: error.message }, error.status);
      }
      throw error;
    }
  }

  async function newGrain(request: Request, packageId: string) {
    const v = await requireVisitor(request);
    await readForm(request, v);
    const pkg = await repo.getPackage(packageId);
    const installed = (await repo.listInstalls(v.user.id)).some((i) =>
      i.packageId === packageId
    );
    if (pkg === undefined || !installed) {
      return htmlResponse(
        messagePage(
          frame(v, "No such app"),
          "No such app",
          "Install it first.",
        ),
        404,
      );
    }
    const used = await repo.storageUsedBy(v.user.id);
    if (used >= v.user.quotaBytes) {
      return htmlResponse(
        messagePage(
          frame(v, "Quota reached"),
          "Storage quota reached",
          "Your grains use all of your storage quota. Delete a grain or ask an administrator for more space.",
        ),
        403,
      );
    }
    const now = Date.now();
    const grain: Grain = {
      id: randomToken(16),
      ownerId: v.user.id,
      packageId,
      appId: pkg.appId,
      title: pkg.newGrainTitle,
      sizeBytes: 0,
      createdAt: now,
      lastUsedAt: now,
      firstStartedAt: 0,
    };
    await repo.createGrain(grain);
    log.info("grain-created", { grain: grain.id, user: v.user.id });
    return redirect(`/grain/${grain.id}`);
  }

  async function loadGrain(v: Visitor, grainId: string) {
    const grain = await repo.getGrain(grainId);
    const pkg = grain && await repo.getPackage(grain.packageId);
    const access = grain && await accessOf(v.user, grain, pkg);
    if (grain === undefined || access === undefined) {
      throw new Refusal(htmlResponse(
        messagePage(
          frame(v, "No access"),
          "You cannot open this grain",
          "This grain does not exist, or it has not been shared with you. Ask its owner for a share link.",
        ),
        403,
      ));
    }
    return { grain, pkg, access };
  }

  async function showGrain(request: Request, grainId: string) {
    const v = await requireVisitor(request);
    const { grain, pkg, access } = await loadGrain(v, grainId);
    let frameUrl: string | undefined;
    let error: string | undefined;
    try {
      frameUrl = await openSession(grain, v.user.id, access);
    } catch (e) {
      if (!(e instanceof GrainUnavailableError)) throw e;
      error = e.message;
    }
    return htmlResponse(grainPage({
      frame: frame(v, grain.title),
      grain,
      app: pkg,
      isOwner: access.isOwner,
      roleTitle: access.role.title,
      roles: pkg?.roles ?? [],
      shares: access.isOwner ? await repo.listShares(grain.id) : [],
      frameUrl,
      error,
    }));
  }

  async function grainAction(
    request: Request,
    grainId: string,
    action: string,
  ) {
    const v = await requireVisitor(request);
    const form = await readForm(request, v);
    const { grain, pkg, access } = await loadGrain(v, grainId);
    if (!access.isOwner) {
      return new Response("only the owner can do that", { status: 403 });
    }
    if (action === "rename") {
      const title = (form.get("title") ?? "").trim().slice(0, 200);
      if (title !== "") await repo.renameGrain(grain.id, title);
      return redirect(`/grain/${grain.id}`);
    }
    if (action === "delete") {
      await runner.destroy(grain.id).catch((error) => {
        log.warn("grain-destroy-failed", { grain: grain.id, error });
      });
      await repo.deleteGrain(grain.id);
      log.info("grain-deleted", { grain: grain.id, user: v.user.id });
      return redirect("/");
    }
    if (action === "share") {
      const roleIndex = Number(form.get("role"));
      if (
        !Number.isInteger(roleIndex) || pkg?.roles[roleIndex] === undefined
      ) {
        return new Response("unknown role", { status: 400 });
      }
      const secret = randomToken(24);
      await repo.createShare({
        id: sha256(secret),
        grainId: grain.id,
        createdBy: v.user.id,
        roleIndex,
        label: (form.get("label") ?? "").slice(0, 200),
        createdAt: Date.now(),
        revoked: false,
      });
      log.info("grain-shared", { grain: grain.id, roleIndex });
      return redirect(`/grain/${grain.id}#link=${secret}`);
    }
    const revoke = /^shares\/([0-9a-f]{64})\/revoke$/.exec(action);
    if (revoke !== null) {
      const share = await repo.getShare(revoke[1]);
      if (share?.grainId === grain.id) await repo.revokeShare(share.id);
      return redirect(`/grain/${grain.id}`);
    }
    return new Response("unknown action", { status: 404 });
  }

  async function openShared(request: Request, secret: string) {
    const share = await repo.getShare(sha256(secret));
    const grain = share && !share.revoked
      ? await repo.getGrain(share.grainId)
      : undefined;
    const v = await visitor(request);
    const anonymousFrame: Frame = { title: "Shared grain" };
    if (share === undefined || grain === undefined) {
      return htmlResponse(
        messagePage(
          v ? frame(v, "Link not valid") : anonymousFrame,
          "This link is not valid",
          "The share link was revoked, or its grain was deleted.",
        ),
        404,
      );
    }
    if (v !== undefined) {
      if (grain.ownerId !== v.user.id) {
        await repo.addClaim({
          userId: v.user.id,
          grainId: grain.id,
          shareId: share.id,
          createdAt: Date.now(),
        });
      }
      return redirect(`/grain/${grain.id}`);
    }
    // A visitor who is not signed in uses the grain through the link alone.
    const pkg = await repo.getPackage(grain.packageId);
    const role = pkg?.roles[share.roleIndex];
    if (role === undefined) {
      return htmlResponse(
        messagePage(anonymousFrame, "This link is not valid", "Unknown role."),
        404,
      );
    }
    const access = { role, roleIndex: share.roleIndex, isOwner: false };
    let frameUrl: string | undefined;
    let error: string | undefined;
    try {
      frameUrl = await openSession(grain, "", access);
    } catch (e) {
      if (!(e instanceof GrainUnavailableError)) throw e;
      error = e.message;
    }
    return htmlResponse(grainPage({
      frame: anonymousFrame,
      grain,
      app: pkg,
      isOwner: false,
      roleTitle: role.title,
      roles: pkg?.roles ?? [],
      shares: [],
      frameUrl,
      error,
    }));
  }

  async function admin(request: Request): Promise<Response> {
    const v = await requireVisitor(request);
    if (!v.user.isAdmin) {
      return htmlResponse(
        messagePage(
          frame(v, "Admins only"),
          "Admins only",
          "You are not an administrator.",
        ),
        403,
      );
    }
    let newPassword: { name: string; password: string } | undefined;
    if (request.method === "POST") {
      const form = await readForm(request, v);
      const path = new URL(request.url).pathname;
      const quota = /^\/admin\/users\/([^/]+)\/quota$/.exec(path);
      if (path === "/admin/users") {
        const name = (form.get("name") ?? "").trim().toLowerCase();
        if (!/^[a-z0-9][a-z0-9._-]{0,39}$/.test(name)) {
          return htmlResponse(
            messagePage(
              frame(v, "Bad name"),
              "Bad user name",
              "Use 1-40 letters, digits, dots, dashes or underscores.",
            ),
            400,
          );
        }
        const password = randomToken(12);
        try {
          await createUser(repo, {
            name,
            displayName: (form.get("displayName") ?? "").trim() || name,
            password,
            isAdmin: false,
            quotaBytes: options.defaultQuotaBytes,
          });
        } catch (error) {
          if (!(error instanceof ConflictError)) throw error;
          return htmlResponse(
            messagePage(frame(v, "Name taken"), "Name taken", error.message),
            409,
          );
        }
        newPassword = { name, password };
      } else if (quota !== null) {
        const mib = Number(form.get("quotaMiB"));
        if (!Number.isFinite(mib) || mib < 0) {
          return new Response("bad quota", { status: 400 });
        }
        await repo.setUserQuota(quota[1], Math.round(mib * 1048576));
      } else {
        return new Response("not found", { status: 404 });
      }
    }
    const users = await repo.listUsers();
    const grains = await repo.listAllGrains();
    await refreshSizes(grains);
    return htmlResponse(adminPage({
      frame: frame(v, "Admin"),
      replicas: [
        ...await repo.listReplicas(Date.now() - 30_000),
        ...await (options.otherReplicas?.() ?? Promise.resolve([])),
      ],
      users: await Promise.all(users.map(async (user) => ({
        user,
        usedBytes: await repo.storageUsedBy(user.id),
      }))),
      grains,
      sessions: await repo.listGrainSessions(),
      owners: new Map(users.map((u) => [u.id, u])),
      packages: await packageMap(),
      runnerKind: runner.kind,
      runnerUsage: await runner.usage?.(),
      newPassword,
    }));
  }

  return async function handle(
    request: Request,
    info?: Deno.ServeHandlerInfo,
  ): Promise<Response> {
    const url = new URL(request.url);
    const path = url.pathname;
    const method = request.method;
    try {
      if (path === "/healthz") return new Response("ok");
      if (path === "/" && method === "GET") return await home(request);
      if (path === "/login") return await login(request, info);
      if (path === "/logout" && method === "POST") return await logout(request);
      if (path === "/upload" && method === "POST") return await upload(request);
      if (path === "/admin" || path.startsWith("/admin/")) {
        return await admin(request);
      }
      let m = /^\/apps\/([0-9a-f]{32})\/new$/.exec(path);
      if (m !== null && method === "POST") return await newGrain(request, m[1]);
      m = /^\/grain\/([A-Za-z0-9_-]{1,64})$/.exec(path);
      if (m !== null && method === "GET") return await showGrain(request, m[1]);
      m = /^\/grain\/([A-Za-z0-9_-]{1,64})\/(.+)$/.exec(path);
      if (m !== null && method === "POST") {
        return await grainAction(request, m[1], m[2]);
      }
      m = /^\/shared\/([A-Za-z0-9_-]{1,100})$/.exec(path);
      if (m !== null && method === "GET") {
        return await openShared(request, m[1]);
      }
      return htmlResponse(
        messagePage(
          { title: "Not found" },
          "Not found",
          "There is no such page.",
        ),
        404,
      );
    } catch (error) {
      if (error instanceof Refusal) return error.response;
      log.error("request-failed", { path, method, error });
      return new Response("internal error", { status: 500 });
    }
  };
}

/**
 * The permission flags a session passes to the app: the role's own for a
 * role the app declares; every flag for the owner (roleIndex -1); and for
 * the default roles, [write, view] with write only for the editor.
 */
/** Where a grain session's requests go, as gateways ask for it (over
 * proto/gateway.capnp's `Shell.route`). */
export interface SessionRoute {
  backend: string;
  grainId: string;
  canWrite: boolean;
  expiresAt: number;
  userId: string;
  userName: string;
  /** The app's permission flags for this session. */
  permissions: boolean[];
  /** Hex SHA-256 of the session key the browser's cookie must carry. */
  sessionKeyHash: string;
}

/** The route of the live grain session whose hostname starts with
 * `label`, or undefined when there is none (unknown or expired). */
export async function lookupRoute(
  repo: ShellRepository,
  label: string,
): Promise<SessionRoute | undefined> {
  const session = await repo.getGrainSessionByHost(label);
  if (session === undefined || session.expiresAt < Date.now()) {
    return undefined;
  }
  const user = session.userId ? await repo.getUser(session.userId) : undefined;
  const grain = await repo.getGrain(session.grainId);
  const pkg = grain && await repo.getPackage(grain.packageId);
  return {
    permissions: sessionPermissions(pkg?.roles ?? [], session.roleIndex),
    backend: session.backend,
    grainId: session.grainId,
    canWrite: session.canWrite,
    expiresAt: session.expiresAt,
    userId: session.userId ?? "",
    userName: user?.displayName ?? "Anonymous",
    sessionKeyHash: session.id,
  };
}

export function sessionPermissions(
  roles: AppRole[],
  roleIndex: number,
): boolean[] {
  const declared = roles.some((role) => role.permissions !== undefined);
  if (roleIndex < 0) {
    const count = Math.max(2, ...roles.map((r) => r.permissions?.length ?? 0));
    return new Array(count).fill(true);
  }
  const role = roles[roleIndex];
  if (role === undefined) return [];
  if (declared) return role.permissions ?? [];
  return [role.canWrite, true];
}

/** Creates a local account; throws ConflictError if the name is taken. */
export async function createUser(
  repo: ShellRepository,
  account: {
    name: string;
    displayName: string;
    password: string;
    isAdmin: boolean;
    quotaBytes: number;
  },
): Promise<User> {
  const user: User = {
    id: randomToken(12),
    name: account.name,
    displayName: account.displayName,
    passwordHash: await hashPassword(account.password),
    isAdmin: account.isAdmin,
    quotaBytes: account.quotaBytes,
    createdAt: Date.now(),
  };
  await repo.createUser(user);
  return user;
}
