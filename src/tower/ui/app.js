// The tower's web UI: hash routes over the tower API (/api), a token from
// the login form kept for the browser session.
"use strict";

const KEY = "pgvirt-tower-token";
const $ = sel => document.querySelector(sel);

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.why ? `${body.what}: ${body.why}` : `HTTP ${status}`);
    this.status = status; this.body = body;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` } };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(`/api${path}`, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { why: text }; }
  if (r.status === 401) { sessionStorage.removeItem(KEY); route(); }
  if (r.status >= 400) throw new ApiError(r.status, data);
  return { status: r.status, body: data };
}

const when = s => (s ? new Date(s * 1000).toLocaleString() : "—");
const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text);
const enc = encodeURIComponent;

function problem(e) {
  const b = e.body || {};
  return h("div", { class: "card error", id: "page-error" },
    h("strong", {}, b.what || "Error"), h("div", {}, b.why || e.message), b.action ? h("div", { class: "muted" }, b.action) : null);
}

// ---- job progress

let following = null;
async function followJob(engine, job, done) {
  const box = $("#job");
  const id = job.id;
  following = `${engine}/${id}`;
  box.hidden = false;
  $("#job-title").textContent = `${job.kind} ${job.target} · job ${id} on ${engine}`;
  $("#job-error").hidden = true;
  let misses = 0;
  for (;;) {
    box.dataset.state = job.state;
    box.dataset.job = id;
    $("#job-bar").style.width = `${job.progress}%`;
    $("#job-state").textContent = `${job.state} · ${job.step} · ${job.progress}%`;
    if (job.state !== "running") break;
    await new Promise(r => setTimeout(r, misses ? 1000 : 400));
    if (following !== `${engine}/${id}`) return;
    try { job = (await api("GET", `/jobs/${enc(engine)}/${id}`)).body; misses = 0; }
    catch (e) {
      // A moment without an answer (the engine busy, or restarting): ask again.
      $("#job-state").textContent = `${job.state} · ${job.step} · not answered: ${e.message}`;
      if (++misses > 60) return;
    }
  }
  if (job.error) { $("#job-error").hidden = false; $("#job-error").textContent = `${job.error.why}`; }
  else setTimeout(() => { if (following === `${engine}/${id}`) { box.hidden = true; following = null; } }, 8000);
  if (done) done(job);
}

// ---- pages

async function enginesPage(page) {
  const inv = (await api("GET", "/inventory")).body;
  const count = (kind, name) => inv[kind].filter(o => o.engine === name).length;
  const conn = name => inv.connectors.filter(c => c.engine === name).map(c => `${c.name} ${c.version}+${c.build_number}`).join(", ") || "none";
  page.append(h("h1", {}, "Engines"), h("div", { class: "card" }, h("table", { id: "engines" },
    h("tr", {}, ["Engine", "Health", "Version", "Last seen", "dSources", "VDBs", "Connector"].map(t => h("th", {}, t))),
    inv.engines.map(e => h("tr", { id: `engine-${e.name}`, "data-health": e.health },
      h("td", {}, h("strong", {}, e.name), h("div", { class: "muted" }, e.url)),
      h("td", {}, badge(e.health), e.error ? h("div", { class: "error" }, e.error) : null),
      h("td", {}, e.version || "—"), h("td", {}, when(e.last_seen)),
      h("td", {}, count("dsources", e.name)), h("td", {}, count("vdbs", e.name)), h("td", {}, conn(e.name)))))));
  if (!inv.engines.length) page.append(h("p", { class: "muted" }, "No engines yet: pgvirt tower engine add NAME --url … --token-file …"));
}

async function dsourcesPage(page) {
  const inv = (await api("GET", "/inventory")).body;
  page.append(h("h1", {}, "dSources"));
  if (!inv.dsources.length) page.append(h("p", { class: "muted" }, "No dSources on any engine."));
  for (const d of inv.dsources) {
    const snaps = inv.snapshots.filter(s => s.engine === d.engine && s.of === "dsource" && s.name === d.name);
    // Each VDB branches off the newest snapshot of this dSource it was
    // cloned from (provisioned or refreshed; a rewind keeps it there).
    const own = new Set(snaps.map(s => s.id));
    const vdbs = inv.vdbs.filter(v => v.engine === d.engine && v.parent === d.name && v.parent_kind === "dsource")
      .map(v => {
        const flows = (((inv.timeflows[d.engine] || {})[v.name] || {}).timeflows || [])
          .map(f => f.parent_snapshot).filter(p => own.has(p));
        return { ...v, origin_snapshot: flows.length ? Math.max(...flows) : v.origin_snapshot };
      });
    const flows = (inv.timeflows[d.engine] || {})[d.name];
    const form = h("div", { class: "provision-slot" });
    const svg = drawTimeline({
      name: d.name, snapshots: snaps, flows, vdbs,
      onSnapshot: s => provisionForm(form, d, s),
      onVdb: name => { location.hash = `#/vdb/${enc(d.engine)}/${enc(name)}`; },
    });
    page.append(h("div", { class: "card dsource", id: `dsource-${d.engine}-${d.name}` },
      h("div", { class: "row" }, h("h2", {}, d.name), badge(d.engine, "engine"), badge(d.state || "", d.state),
        d.stale ? badge(`engine down · last seen ${when(d.seen_at)}`, "stale") : null),
      svg,
      h("div", { class: "legend" }, h("span", {}, h("i", { style: "background:#fff;border:2px solid #2f6fde" }), "snapshot (click to provision)"),
        h("span", {}, h("i", { style: "background:#cfe0fb" }), "point-in-time range"),
        h("span", {}, h("i", { style: "background:#8a4fd8" }), "VDB")),
      form));
  }
}

function provisionForm(slot, d, snap) {
  document.querySelectorAll("circle.snapshot.chosen").forEach(c => c.classList.remove("chosen"));
  const dot = slot.parentElement.querySelector(`circle.snapshot[data-snapshot="${snap.id}"]`);
  if (dot) dot.classList.add("chosen");
  const error = h("p", { class: "error", id: "provision-error", hidden: true });
  const form = h("form", { id: "provision", class: "inline", onsubmit: async ev => {
    ev.preventDefault();
    error.hidden = true;
    const name = $("#vdb-name").value.trim();
    const body = { engine: d.engine, name, from: `${d.name}@${snap.id}` };
    const port = $("#vdb-port").value.trim();
    if (port) body.parameters = { port: Number(port) };
    try {
      const r = await api("POST", "/vdbs", body);
      followJob(d.engine, r.body, job => {
        if (job.state === "succeeded") location.hash = `#/vdb/${enc(d.engine)}/${enc(name)}`;
      });
    } catch (e) { error.hidden = false; error.textContent = e.message; }
  } },
  h("strong", {}, `Provision from snapshot ${snap.id} of ${d.name} (${d.engine})`),
  h("input", { id: "vdb-name", placeholder: "VDB name", required: true }),
  h("input", { id: "vdb-port", placeholder: "port (optional)", size: 12 }),
  h("input", { id: "vdb-from", value: `${d.name}@${snap.id}`, readonly: true, size: 16 }),
  h("button", { id: "provision-submit", type: "submit" }, "Provision"));
  slot.replaceChildren(form, error);
}

async function vdbsPage(page) {
  const inv = (await api("GET", "/inventory")).body;
  page.append(h("h1", {}, "VDBs"), h("div", { class: "card" }, h("table", { id: "vdbs" },
    h("tr", {}, ["VDB", "Engine", "State", "From", "Port", "Created"].map(t => h("th", {}, t))),
    inv.vdbs.map(v => h("tr", { id: `vdb-${v.engine}-${v.name}`, class: v.stale ? "stale" : "" },
      h("td", {}, h("a", { href: `#/vdb/${enc(v.engine)}/${enc(v.name)}` }, v.name)),
      h("td", {}, v.engine, v.stale ? h("div", {}, badge(`down · last seen ${when(v.seen_at)}`, "stale")) : null),
      h("td", {}, badge(v.state || "", v.state)), h("td", {}, v.parent ? `${v.parent}@${v.origin_snapshot}` : "—"),
      h("td", {}, v.port), h("td", {}, when(v.created_at)))))));
  if (!inv.vdbs.length) page.append(h("p", { class: "muted" }, "No VDBs: provision one from a dSource's timeline."));
}

async function vdbPage(page, engine, name) {
  page.append(h("h1", {}, `VDB ${name}`, " ", badge(engine, "engine")));
  let v, stale = null;
  try {
    v = (await api("GET", `/vdbs/${enc(name)}?engine=${enc(engine)}`)).body;
  } catch (e) {
    if (e.status !== 503) throw e;
    stale = e;
    v = (await api("GET", "/vdbs")).body.find(o => o.engine === engine && o.name === name);
    if (!v) throw e;
  }
  if (stale) page.append(problem(stale));
  // Its snapshots live from its engine (as last seen when it is down).
  const snaps = stale
    ? (await api("GET", "/snapshots")).body.filter(s => s.engine === engine && s.of === "vdb" && s.name === name)
    : (await api("GET", `/engines/${enc(engine)}/proxy/snapshots?vdb=${enc(name)}`)).body;
  const connection = v.connection || `postgresql://postgres@/postgres?host=${(v.source_config || {}).socket_directory}&port=${v.port}`;
  const copied = h("span", { id: "copied", class: "muted" });
  const copy = async () => {
    try { await navigator.clipboard.writeText(connection); }
    catch (_) {
      const t = h("textarea", {}, connection); document.body.append(t); t.select();
      document.execCommand("copy"); t.remove();
    }
    copied.textContent = "copied";
  };
  const error = h("p", { class: "error", id: "action-error", hidden: true });
  const act = (label, id, method, path, body, cls) => h("button", { id, class: cls, disabled: !!stale, onclick: async () => {
    error.hidden = true;
    try {
      const r = await api(method, `/vdbs/${enc(name)}${path}?engine=${enc(engine)}`, body ? body() : undefined);
      if (r.status === 202) followJob(engine, r.body, job => {
        if (job.state === "succeeded") location.hash = id === "action-delete-confirm" ? "#/vdbs" : location.hash.replace(/\?.*$/, "") + "?t=" + Date.now();
      });
    } catch (e) { error.hidden = false; error.textContent = e.message; }
  } }, label);
  const rewindTo = h("select", { id: "rewind-to", disabled: !snaps.length }, snaps.length
    ? snaps.map(s => h("option", { value: s.id }, `snapshot ${s.id} · ${when(s.created_at)}`))
    : h("option", {}, "no snapshots of this VDB yet"));
  const confirm = act("Really delete", "action-delete-confirm", "DELETE", "", null, "danger");
  confirm.hidden = true;
  const del = h("button", { id: "action-delete", class: "danger", disabled: !!stale, onclick: () => { del.hidden = true; confirm.hidden = false; } }, "Delete");
  page.append(h("div", { class: "card" },
    h("h2", {}, "Connect"),
    h("div", { class: "conn" }, h("code", { id: "connection" }, connection), h("button", { id: "copy", onclick: copy }, "Copy"), copied),
    h("div", { class: "actions" },
      act("Start", "action-start", "POST", "/start"), act("Stop", "action-stop", "POST", "/stop"),
      act("Refresh", "action-refresh", "POST", "/refresh"), act("Snapshot", "action-snapshot", "POST", "/snapshot"),
      rewindTo, Object.assign(act("Rewind", "action-rewind", "POST", "/rewind", () => ({ snapshot: Number(rewindTo.value) })), { disabled: !!stale || !snaps.length }),
      del, confirm),
    error),
    h("div", { class: "card" }, h("h2", {}, "Details"), h("dl", { id: "vdb-details" },
      [["State", badge(v.state || "", v.state)], ["From", v.parent ? `${v.parent_kind} ${v.parent}, snapshot ${v.origin_snapshot}` : "—"],
       ["Environment", v.environment], ["Port", v.port], ["Mount", v.mount_path], ["Dataset", v.dataset],
       ["Created", when(v.created_at)], ["Quota", v.quota_bytes ? `${v.quota_bytes} bytes` : "none"],
       ["Snapshots", snaps.length]].flatMap(([k, val]) => [h("dt", {}, k), h("dd", {}, val)]))));
}

async function environmentsPage(page) {
  const inv = (await api("GET", "/inventory")).body;
  const error = h("p", { class: "error", id: "config-error", hidden: true });
  page.append(h("h1", {}, "Environments"), h("div", { class: "card" }, h("table", { id: "environments" },
    h("tr", {}, ["Environment", "Engine", "Kind", "OS user", "Refreshed"].map(t => h("th", {}, t))),
    inv.environments.map(e => h("tr", { class: e.stale ? "stale" : "" }, h("td", {}, h("strong", {}, e.name)),
      h("td", {}, e.engine, e.stale ? h("div", {}, badge(`down · last seen ${when(e.seen_at)}`, "stale")) : null),
      h("td", {}, e.kind), h("td", {}, e.os_user), h("td", {}, when(e.refreshed_at)))))),
  h("h2", {}, "Source configs"), error, h("div", { class: "card" }, h("table", { id: "source-configs" },
    h("tr", {}, ["Source config", "Engine", "Environment", "State", ""].map(t => h("th", {}, t))),
    inv.source_configs.map(c => h("tr", { id: `config-${c.engine}-${c.id}`, class: c.stale ? "stale" : "" },
      h("td", {}, h("strong", {}, c.name), h("div", { class: "muted" }, `id ${c.id}`)), h("td", {}, c.engine),
      h("td", {}, c.environment), h("td", {}, badge(c.state || "", c.state)),
      h("td", {}, h("button", { class: "quiet delete-config", disabled: !!c.stale, onclick: async () => {
        error.hidden = true;
        try { await api("DELETE", `/engines/${enc(c.engine)}/proxy/source-configs/${c.id}`); route(); }
        catch (e) { error.hidden = false; error.textContent = e.message; }
      } }, "Delete")))))));
}

async function jobsPage(page) {
  const jobs = (await api("GET", "/jobs")).body.sort((a, b) => b.started_at - a.started_at);
  page.append(h("h1", {}, "Jobs"), h("div", { class: "card" }, h("table", { id: "jobs" },
    h("tr", {}, ["Job", "Engine", "Kind", "Target", "State", "Step", "Started"].map(t => h("th", {}, t))),
    jobs.map(j => h("tr", {}, h("td", {}, j.id), h("td", {}, j.engine), h("td", {}, j.kind), h("td", {}, j.target),
      h("td", {}, badge(j.state)), h("td", {}, `${j.step} · ${j.progress}%`), h("td", {}, when(j.started_at)))))));
}

async function connectorsPage(page) {
  const c = (await api("GET", "/connectors")).body;
  const engines = (await api("GET", "/engines")).body;
  const report = h("div", { id: "install-report" });
  page.append(h("h1", {}, "Connectors"), h("div", { class: "grid2" },
    h("div", { class: "card" }, h("h2", {}, "Versions kept by the tower"), h("table", { id: "kept" },
      h("tr", {}, ["Connector", "Version", "Uploaded", ""].map(t => h("th", {}, t))),
      c.kept.map(k => h("tr", {}, h("td", {}, k.name), h("td", {}, k.version), h("td", {}, when(k.uploaded_at)),
        h("td", {}, h("button", { class: "quiet", onclick: async () => {
          const r = await api("POST", `/connectors/${enc(k.id)}/${enc(k.version)}/install`, {});
          report.replaceChildren(h("table", {}, r.body.map(x => h("tr", {}, h("td", {}, x.engine), h("td", {}, badge(String(x.status), x.status < 300 ? "up" : "down")),
            h("td", {}, x.error ? (x.error.why || JSON.stringify(x.error)) : "installed")))));
          route();
        } }, "Install on all"))))),
      c.kept.length ? null : h("p", { class: "muted" }, "None uploaded yet (POST /api/connectors)."), report),
    h("div", { class: "card" }, h("h2", {}, "Installed per engine"), h("table", { id: "installed" },
      h("tr", {}, ["Engine", "Connector", "Version"].map(t => h("th", {}, t))),
      engines.map(e => {
        const mine = c.installed.filter(i => i.engine === e.name);
        return h("tr", { class: e.health === "down" ? "stale" : "" }, h("td", {}, e.name, " ", badge(e.health)),
          h("td", {}, mine.map(i => i.name).join(", ") || "—"), h("td", {}, mine.map(i => `${i.version}+${i.build_number}`).join(", ") || "—"));
      })))));
}

// ---- routing

const PAGES = { engines: enginesPage, environments: environmentsPage, dsources: dsourcesPage, vdbs: vdbsPage, vdb: vdbPage, jobs: jobsPage, connectors: connectorsPage };

async function route() {
  const loggedIn = !!sessionStorage.getItem(KEY);
  $("#login-page").hidden = loggedIn;
  $("#nav").hidden = !loggedIn;
  const page = $("#page");
  if (!loggedIn) { page.replaceChildren(); return; }
  const [name, ...args] = location.hash.replace(/^#\/?/, "").replace(/\?.*$/, "").split("/").map(decodeURIComponent);
  const which = PAGES[name] ? name : "engines";
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.page === which || (which === "vdb" && a.dataset.page === "vdbs")));
  const fresh = h("section", { id: "page", "data-page": which });
  try { await PAGES[which](fresh, ...args); } catch (e) { fresh.append(problem(e)); }
  page.replaceWith(fresh);
  fresh.dataset.ready = "1";
}

$("#login-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("#token").value.trim());
  try {
    await api("GET", "/engines");
    $("#login-error").hidden = true;
    location.hash = "#/engines";
    route();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $("#login-error").hidden = false;
    $("#login-error").textContent = e.status === 401 ? "That token is not known to this tower." : e.message;
  }
});
$("#logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.hash = ""; route(); });
$("#job-close").addEventListener("click", () => { $("#job").hidden = true; following = null; });
window.addEventListener("hashchange", route);
// Health and inventory change on their own: the list pages follow.
setInterval(() => {
  const p = $("#page");
  if (p && ["engines", "vdbs", "jobs"].includes(p.dataset.page) && !document.hidden) route();
}, 3000);
route();
