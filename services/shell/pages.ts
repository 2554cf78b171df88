/**
 * The shell's pages, rendered on the server. Every value placed in HTML
 * goes through `html` tagged templates, which escape it; only `raw` output
 * of another template is inserted as it is.
 *
 * @module
 */
import type { RunnerUsage } from "./grain_runner.ts";
import { formatBytes } from "./packages.ts";
import type {
  AppRole,
  Grain,
  GrainSession,
  PackageInfo,
  Replica,
  Share,
  User,
} from "./repo/types.ts";

/** HTML that is already safe to insert. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

function escape(value: unknown): string {
  return String(value)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

/** A template whose interpolated values are escaped unless they are Html
 * (or arrays of Html). */
export function html(
  strings: TemplateStringsArray,
  ...values: unknown[]
): Html {
  let out = strings[0];
  values.forEach((value, i) => {
    if (value instanceof Html) out += value.text;
    else if (Array.isArray(value)) {
      out += value.map((v) => v instanceof Html ? v.text : escape(v)).join("");
    } else if (value !== undefined && value !== null && value !== false) {
      out += escape(value);
    }
    out += strings[i + 1];
  });
  return new Html(out);
}

const STYLE = `
:root { --ink:#1f2430; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9;
  --brand:#6a3ab2; --brand-dark:#4f2a88; --danger:#b42318; --ok:#067647; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
  sans-serif; color:var(--ink); background:var(--bg); }
a { color: var(--brand); text-decoration: none; }
a:hover { text-decoration: underline; }
header.top { display:flex; align-items:center; gap:16px; padding:0 20px;
  height:52px; background:#241a33; color:#fff; }
header.top .logo { font-weight:700; letter-spacing:.02em; color:#fff;
  display:flex; align-items:center; gap:8px; }
header.top .logo span.mark { display:inline-block; width:22px; height:22px;
  border-radius:6px; background:linear-gradient(135deg,#9b6bf0,#5b2ea6); }
header.top nav { display:flex; gap:14px; margin-left:12px; }
header.top nav a { color:#d9cff0; }
header.top .spacer { flex:1; }
header.top .who { color:#d9cff0; font-size:14px; }
header.top form { margin:0; }
main { max-width: 1040px; margin: 28px auto; padding: 0 20px; }
h1 { font-size: 24px; margin: 0 0 18px; }
h2 { font-size: 17px; margin: 0 0 12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px;
  padding:18px 20px; margin-bottom:20px; }
.grid { display:grid; grid-template-columns: repeat(auto-fill,
  minmax(210px,1fr)); gap:14px; }
.app { border:1px solid var(--line); border-radius:10px; padding:14px;
  display:flex; flex-direction:column; gap:8px; background:#fff; }
.app .icon { width:40px; height:40px; border-radius:10px; color:#fff;
  display:flex; align-items:center; justify-content:center; font-weight:700;
  background:linear-gradient(135deg,#8d5cf0,#5b2ea6); }
.app .title { font-weight:600; }
.muted { color: var(--muted); font-size: 13px; }
table { width:100%; border-collapse: collapse; }
th, td { text-align:left; padding:8px 6px; border-bottom:1px solid var(--line);
  font-size:14px; vertical-align: middle; }
th { color: var(--muted); font-weight:600; font-size:12px;
  text-transform:uppercase; letter-spacing:.04em; }
button, .button { font: inherit; border:1px solid transparent; cursor:pointer;
  background:var(--brand); color:#fff; padding:7px 14px; border-radius:7px; }
button:hover, .button:hover { background:var(--brand-dark);
  text-decoration:none; }
button.secondary { background:#fff; color:var(--ink); border-color:#d0d5dd; }
button.secondary:hover { background:#f2f4f7; }
button.danger { background:#fff; color:var(--danger); border-color:#f3c0bb; }
input[type=text], input[type=password], input[type=number], select {
  font: inherit; padding:7px 10px; border:1px solid #d0d5dd; border-radius:7px;
  background:#fff; }
label { display:block; font-size:13px; color:var(--muted); margin:10px 0 4px; }
.notice { padding:10px 14px; border-radius:8px; margin-bottom:16px; }
.notice.error { background:#fef3f2; color:var(--danger);
  border:1px solid #fecdca; }
.notice.ok { background:#ecfdf3; color:var(--ok); border:1px solid #abefc6; }
.bar { height:8px; background:#eef0f3; border-radius:4px; overflow:hidden; }
.bar > div { height:100%; background:var(--brand); }
.login { max-width:360px; margin:80px auto; }
.login input { width:100%; }
.login button { width:100%; margin-top:16px; }
.inline { display:inline; margin:0; }
.row { display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
.grainbar { display:flex; align-items:center; gap:10px; padding:0 16px;
  height:52px;
  background:#fff; border-bottom:1px solid var(--line); }
.grainbar .title { font-weight:600; margin-right:auto; }
.grainframe { position:absolute; top:104px; left:0; right:0; bottom:0;
  width:100%; height:calc(100% - 104px); border:0; background:#fff; }
code.link { background:#f2f4f7; padding:4px 8px; border-radius:6px;
  word-break: break-all; display:block; margin-top:8px; }
dialog { border:1px solid var(--line); border-radius:10px; padding:18px;
  max-width:560px; }
dialog::backdrop { background: rgba(20,16,30,.45); }
input[type=file] { font: inherit; padding:6px; border:1px dashed #c4b5fd;
  border-radius:8px; background:#faf8ff; flex:1; max-width:420px; }
`;

/** What every page's frame needs. */
export interface Frame {
  title: string;
  user?: User;
  csrf?: string;
  notice?: { kind: "error" | "ok"; text: string };
}

/** The page frame: header with navigation, notice, then the body. */
export function page(frame: Frame, body: Html): string {
  const nav = frame.user
    ? html`
      <nav><a href="/">Home</a>${frame.user.isAdmin
        ? html`<a href="/admin">Admin</a>`
        : ""}</nav>
      <div class="spacer"></div>
      <div class="who">${frame.user.displayName}</div>
      <form method="post" action="/logout"><input type="hidden" name="csrf"
            value="${frame
              .csrf}"><button class="secondary" id="logout">Sign out</button></form>
    `
    : html`<div class="spacer"></div>`;
  const notice = frame.notice
    ? html`<div class="notice ${frame.notice.kind}" role="alert">${frame.notice.text}</div>`
    : "";
  return html`
    <!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>${frame.title} · Blackrock</title>
        <style>${new Html(STYLE)}</style>
      </head>
      <body><header class="top"><a class="logo" href="/"><span class="mark"></span>Blackrock</a>
    ${nav}</header>
    ${notice ? html`<main style="margin-bottom:0">${notice}</main>` : ""}
    ${body}
      </body>
    </html>
  `.text;
}

/** The sign-in form. */
export function loginPage(error?: string): string {
  return page(
    {
      title: "Sign in",
      notice: error ? { kind: "error", text: error } : undefined,
    },
    html`
      <main>
        <div class="card login">
          <h1>Sign in to Blackrock</h1>
          <form method="post" action="/login">
            <label for="name">User name</label>
            <input type="text" id="name" name="name" autocomplete="username" required
              autofocus>
            <label for="password">Password</label>
            <input type="password" id="password" name="password"
              autocomplete="current-password" required>
            <button type="submit" id="signin">Sign in</button>
          </form>
        </div>
      </main>
    `,
  );
}

function initials(title: string): string {
  return title.split(/\s+/).map((w) => w[0] ?? "").join("").slice(0, 2)
    .toUpperCase();
}

function date(ms: number): string {
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

/** The home page: apps, grains, storage and the upload form. */
export function homePage(options: {
  frame: Frame;
  apps: PackageInfo[];
  owned: Grain[];
  shared: { grain: Grain; role: string }[];
  packages: Map<string, PackageInfo>;
  usedBytes: number;
  quotaBytes: number;
  maxUploadBytes: number;
}): string {
  const { frame, apps, owned, shared, packages } = options;
  const percent = options.quotaBytes > 0
    ? Math.min(100, (options.usedBytes / options.quotaBytes) * 100)
    : 100;
  const appCards = apps.map((app) =>
    html`
      <div class="app" data-package="${app.id}">
        <div class="row">
          <div class="icon">${initials(app.title)}</div>
          <div>
            <div class="title">${app.title}</div>
            <div class="muted">version ${app.version}</div>
          </div>
        </div>
        <form method="post" action="/apps/${app.id}/new"><input type="hidden"
          name="csrf" value="${frame.csrf}"><button class="new-grain">New ${app
            .newGrainTitle.replace(/^Untitled /, "")}</button></form>
      </div>
    `
  );
  const grainRows = owned.map((g) =>
    html`
      <tr>
        <td><a class="grain-link" href="/grain/${g.id}">${g.title}</a></td>
        <td>${packages.get(g.packageId)?.title ?? "(removed app)"}</td>
        <td>${formatBytes(g.sizeBytes)}</td>
        <td class="muted">${date(g.lastUsedAt)}</td>
      </tr>
    `
  );
  const sharedRows = shared.map(({ grain, role }) =>
    html`
      <tr>
        <td><a class="grain-link" href="/grain/${grain.id}">${grain
          .title}</a></td>
        <td>${packages.get(grain.packageId)?.title ?? ""}</td>
        <td>${role}</td>
      </tr>
    `
  );
  return page(
    frame,
    html`<main>
<h1>Your Blackrock</h1>
<div class="card"><h2>Apps</h2>
${
      apps.length === 0
        ? html`<p class="muted">No apps yet. Upload a Sandstorm package (.spk) below.</p>`
        : html`<div class="grid">${appCards}</div>`
    }
<form id="upload-form" class="row" style="margin-top:16px">
  <input type="file" id="spk" name="spk" accept=".spk" required>
  <button type="submit" id="upload">Upload app</button>
  <span class="muted">Up to ${formatBytes(options.maxUploadBytes)}</span>
</form>
<div id="upload-status" class="muted" role="status"></div>
</div>
<div class="card"><h2>Grains</h2>
${
      owned.length === 0
        ? html`<p class="muted">You have no grains. Create one from an app above.</p>`
        : html`
          <table
            id="grains"><tr><th>Title</th><th>App</th><th>Size</th><th>Last used</th></tr>${grainRows}</table>
        `
    }
</div>
${
      shared.length > 0
        ? html`
          <div class="card">
            <h2>Shared with you</h2>
            <table
              id="shared"><tr><th>Title</th><th>App</th><th>Your role</th></tr>${sharedRows}</table>
          </div>
        `
        : ""
    }
<div class="card"><h2>Storage</h2>
<div class="row" style="justify-content:space-between"><span id="storage-used">${
      formatBytes(options.usedBytes)
    } of ${formatBytes(options.quotaBytes)} used</span>
<span class="muted">${percent.toFixed(1)}%</span></div>
<div class="bar"><div style="width:${percent.toFixed(2)}%"></div></div></div>
</main>
<script>
document.getElementById("upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = document.getElementById("spk").files[0];
  const status = document.getElementById("upload-status");
  if (!file) return;
  status.className = "muted";
  status.textContent = "Uploading " + file.name + "…";
  try {
    const response = await fetch("/upload", { method: "POST", body: file,
      headers: { "x-csrf-token": ${new Html(
      JSON.stringify(frame.csrf ?? ""),
    )} } });
    const body = await response.json();
    if (body.ok) { location.href = "/?installed=" + encodeURIComponent(body.packageId); return; }
    status.className = "notice error";
    status.textContent = body.error;
  } catch (error) {
    status.className = "notice error";
    status.textContent = "Upload failed: " + error.message;
  }
});
</script>`,
  );
}

/** A grain's page: its bar with actions and the app in an iframe. */
export function grainPage(options: {
  frame: Frame;
  grain: Grain;
  app?: PackageInfo;
  isOwner: boolean;
  roleTitle: string;
  roles: AppRole[];
  shares: Share[];
  frameUrl?: string;
  error?: string;
}): string {
  const { frame, grain, isOwner } = options;
  const csrf = html`<input type="hidden" name="csrf" value="${frame.csrf}">`;
  const ownerTools = isOwner
    ? html`
      <form method="post" action="/grain/${grain.id}/rename"
        class="row inline">${csrf}
        <input type="text" name="title" value="${grain
          .title}" aria-label="Grain title" id="rename-title">
        <button class="secondary" id="rename">Rename</button></form>
      <button class="secondary" id="share"
        onclick="document.getElementById('share-dialog').showModal()">Share</button>
      <form method="post" action="/grain/${grain.id}/delete" class="inline"
        onsubmit="return confirm('Delete this grain and all its data?')">${csrf}
        <button class="danger" id="delete">Delete</button></form>
    `
    : html`<span class="muted">Shared with you as ${options.roleTitle}</span>`;
  const roleOptions = options.roles.map((role, i) =>
    role.obsolete
      ? ""
      : html`<option value="${i}">${role.title}${
        role.canWrite ? "" : " (read only)"
      }</option>`
  );
  const shareRows = options.shares.filter((s) => !s.revoked).map((s) =>
    html`
      <tr>
        <td>${s.label || "(no label)"}</td>
        <td>${options.roles[s.roleIndex]?.title ?? "?"}</td>
        <td>
          <form method="post" action="/grain/${grain.id}/shares/${s.id}/revoke"
            class="inline">${csrf}<button class="secondary">Revoke</button></form>
        </td>
      </tr>
    `
  );
  const dialog = isOwner
    ? html`<dialog id="share-dialog">
  <h2>Share “${grain.title}” by link</h2>
  <div id="share-result" hidden><p>Anyone with this link can open the grain
  with the role you chose. It is shown only now:</p>
  <code class="link" id="share-url"></code></div>
  <form method="post" action="/grain/${grain.id}/share">${csrf}
  <label for="role">Role</label><select name="role" id="role">${roleOptions}</select>
  <label for="label">Label (for you)</label><input type="text" name="label" id="label">
  <div class="row" style="margin-top:14px"><button id="make-link">Create link</button>
  <button type="button" class="secondary" onclick="this.closest('dialog').close()">Close</button></div></form>
  ${
      shareRows.length > 0
        ? html`
          <h2 style="margin-top:18px">Links</h2>
          <table>${shareRows}</table>
        `
        : ""
    }
</dialog>
<script>
// A new link's secret comes in the fragment, which never reaches a server.
const fresh = /^#link=([A-Za-z0-9_-]+)$/.exec(location.hash);
if (fresh) {
  document.getElementById("share-url").textContent =
    location.origin + "/shared/" + fresh[1];
  document.getElementById("share-result").hidden = false;
  history.replaceState(null, "", location.pathname);
  document.getElementById("share-dialog").showModal();
}
</script>`
    : "";
  const content = options.frameUrl
    ? html`<iframe class="grainframe" id="grain-frame" src="${options.frameUrl}"
  sandbox="allow-scripts allow-forms allow-same-origin allow-popups allow-modals allow-downloads"></iframe>`
    : html`
      <main>
        <div class="notice error" role="alert">${options.error ??
          "This grain cannot be opened."}</div>
      </main>
    `;
  return page(
    { ...frame, notice: undefined },
    html`<div class="grainbar"><span class="title" id="grain-title">${grain.title}</span>
<span class="muted">${options.app?.title ?? ""}</span>${ownerTools}</div>
${dialog}${content}`,
  );
}

/** A simple page with a message, for refusals and errors. */
export function messagePage(frame: Frame, heading: string, text: string) {
  return page(
    frame,
    html`
      <main>
        <div class="card">
          <h1>${heading}</h1>
          <p id="message">${text}</p>
          <p><a href="/">Back to your Blackrock</a></p>
        </div>
      </main>
    `,
  );
}

/** The administrator's page. */
export function adminPage(options: {
  frame: Frame;
  replicas: Replica[];
  users: { user: User; usedBytes: number }[];
  grains: Grain[];
  sessions: GrainSession[];
  owners: Map<string, User>;
  packages: Map<string, PackageInfo>;
  runnerKind: string;
  runnerUsage?: RunnerUsage;
  newPassword?: { name: string; password: string };
}): string {
  const { frame } = options;
  const csrf = html`<input type="hidden" name="csrf" value="${frame.csrf}">`;
  const now = Date.now();
  const replicaRows = options.replicas.map((r) =>
    html`
      <tr>
        <td>${r.role}</td>
        <td>${r.hostname}</td>
        <td>${r.address}</td>
        <td>${r.pid}</td>
        <td>${formatBytes(r.rssBytes)}</td>
        <td>${Math.round((now - r.startedAt) / 1000)} s</td>
        <td>${Math.round((now - r.lastSeenAt) / 1000)} s ago</td>
      </tr>
    `
  );
  const userRows = options.users.map(({ user, usedBytes }) =>
    html`
      <tr>
        <td>${user.name}</td>
        <td>${user.displayName}</td>
        <td>${user.isAdmin ? "admin" : "user"}</td>
        <td>${formatBytes(usedBytes)} / ${formatBytes(user.quotaBytes)}</td>
        <td>
          <form method="post" action="/admin/users/${user.id}/quota"
            class="row inline">${csrf}
      <input type="number" name="quotaMiB" min="0" value="${Math.round(
        user.quotaBytes / 1048576,
      )}" style="width:110px" aria-label="Quota in MiB"> MiB <button class="secondary">Set</button></form>
        </td>
      </tr>
    `
  );
  const usage = options.runnerUsage;
  const grainRows = options.grains.map((g) => {
    const live = usage?.grains.get(g.id);
    return html`
      <tr>
        <td>${g.title}</td>
        <td>${options.owners.get(g.ownerId)?.name ?? g.ownerId}</td>
        <td>${options.packages.get(g.packageId)?.title ?? ""}</td>
        <td>${formatBytes(g.sizeBytes)}</td>
        <td>${live?.state ?? "not running"}</td>
        <td>${live && live.state === "running"
          ? formatBytes(live.memoryBytes)
          : "-"}</td>
        <td>${options.sessions.filter((s) =>
          s.grainId === g.id && s.expiresAt > now
        )
          .length}</td>
      </tr>
    `;
  });
  const machineRows = (usage?.machines ?? []).map((m) =>
    html`
      <tr>
        <td>${m.name}</td>
        <td>${m.runningGrains}</td>
        <td>${formatBytes(m.grainMemoryBytes)}</td>
        <td>${formatBytes(m.memoryAvailableBytes)} of ${formatBytes(
          m.memoryTotalBytes,
        )}</td>
        <td>${m.load1.toFixed(2)}</td>
      </tr>
    `
  );
  const roles = [...new Set(options.replicas.map((r) => r.role))].sort();
  const machines = [...new Set(options.replicas.map((r) => r.hostname))];
  return page(
    frame,
    html`<main><h1>Administration</h1>
${
      options.newPassword
        ? html`
          <div class="notice ok"
            role="alert">Account <b>${options.newPassword
              .name}</b> created. Its password, shown once: <code id="new-password">${options
              .newPassword.password}</code></div>
        `
        : ""
    }
<div class="card"><h2>Machines and roles</h2>
<p class="muted">${machines.length} machine(s); roles running: ${
      roles.join(", ") || "none"
    }; grains run by: ${options.runnerKind}.</p>
<table id="replicas"><tr><th>Role</th><th>Machine</th><th>Address</th><th>PID</th><th>Memory</th><th>Up</th><th>Seen</th></tr>${replicaRows}</table>
${
      machineRows.length > 0
        ? html`
          <h2 style="margin-top:18px">Workers</h2>
          <table
            id="workers"><tr><th>Worker</th><th>Grains running</th><th>Grain memory</th><th>Memory available</th><th>Load</th></tr>${machineRows}</table>
        `
        : ""
    }</div>
<div class="card"><h2>Users</h2>
<table id="users"><tr><th>Name</th><th>Display name</th><th>Kind</th><th>Storage</th><th>Quota</th></tr>${userRows}</table>
<form method="post" action="/admin/users" class="row" style="margin-top:14px">${csrf}
<input type="text" name="name" placeholder="user name" required aria-label="New user name" id="new-user-name">
<input type="text" name="displayName" placeholder="display name" aria-label="Display name">
<button id="create-user">Create user</button></form></div>
<div class="card"><h2>Grains</h2>
<table id="all-grains"><tr><th>Title</th><th>Owner</th><th>App</th><th>Size</th><th>State</th><th>Memory</th><th>Open sessions</th></tr>${grainRows}</table></div>
</main>`,
  );
}
