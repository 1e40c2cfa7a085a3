// Crystal Forge page: cards per repository, kept live by /api/v1/events;
// a selected build shows its per-package results and streams its log; the
// fleet table lists the hosts, the workers tables the build workers and the
// job queue.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return e;
};
const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "—");
const duration = (b) => {
  if (!b || !b.started_at) return "—";
  const end = b.finished_at ? new Date(b.finished_at) : new Date();
  const s = Math.max(0, Math.round((end - new Date(b.started_at)) / 1000));
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m ${s % 60}s`;
};
const state = (repo) => (repo.latest_build ? repo.latest_build.status : "idle");
// counts shows a build's attributes by outcome, e.g. "3 built · 1 failed · 0 skipped".
const counts = (b) => {
  const c = b.counts || { built: 0, failed: 0, skipped: 0 };
  return el("span", { class: "counts" },
    el("span", { class: "built" }, `${c.built} built`), " · ",
    el("span", { class: c.failed ? "failed" : "" }, `${c.failed} failed`), " · ",
    el("span", { class: "skipped" }, `${c.skipped} skipped`));
};

// The visitor's API token, if they gave one: kept in this browser only,
// sent as Bearer (docs/security.md).
const TOKEN_KEY = "crystal-forge-token";
const token = () => localStorage.getItem(TOKEN_KEY) || "";
// can is what the visitor's role allows (GET /api/v1/whoami); the page
// offers only those buttons.
let can = { read: true, trigger: false, admin: false };

function authHeaders(h = {}) {
  const t = token();
  return t ? { ...h, Authorization: `Bearer ${t}` } : h;
}

// api is fetch with the server's requirements: the token, and a JSON
// content type on state-changing requests (its cross-site forgery
// protection).
function api(url, opts = {}) {
  const headers = authHeaders({ ...(opts.headers || {}) });
  if (opts.method && opts.method !== "GET") headers["Content-Type"] = "application/json";
  return fetch(url, { ...opts, headers });
}

// stream reads a text/event-stream with fetch, because EventSource cannot
// send the token. Like EventSource it reconnects (after 3 s) unless closed.
function stream(url, { onopen, onerror, on }) {
  const ctl = new AbortController();
  let closed = false;
  (async () => {
    while (!closed) {
      try {
        const r = await fetch(url, { headers: authHeaders({ Accept: "text/event-stream" }), signal: ctl.signal });
        if (r.status >= 400 && r.status < 500) {
          // Refused (401, 403, 404): retrying will not help; EventSource
          // gives up too.
          if (onerror) onerror();
          return;
        }
        if (!r.ok) throw new Error(`${url}: ${r.status}`);
        if (onopen) onopen();
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "", ev = "message", data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          for (let i; (i = buf.indexOf("\n")) >= 0;) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line === "") {
              if (data.length && on[ev] && !closed) on[ev]({ data: data.join("\n") });
              ev = "message"; data = [];
            } else if (line.startsWith("event: ")) ev = line.slice(7);
            else if (line.startsWith("data: ")) data.push(line.slice(6));
            else if (line === "data:") data.push("");
          }
        }
      } catch (e) { if (closed) return; }
      if (closed) return;
      if (onerror) onerror();
      await new Promise((res) => setTimeout(res, 3000));
    }
  })();
  return { close() { closed = true; ctl.abort(); } };
}

async function whoami() {
  const r = await api("/api/v1/whoami");
  const w = await r.json();
  const err = $("#token-error");
  if (!r.ok) {
    // A bad, expired or revoked token: say so and carry on without it.
    err.textContent = `Token refused: ${w.detail || r.status}`;
    err.hidden = false;
    localStorage.removeItem(TOKEN_KEY);
    return whoami();
  }
  can = w.can;
  $("#whoami").textContent = w.identity;
  $("#whoami-role").textContent = w.kind === "anonymous" ? (can.read ? "(read only)" : "(a token is needed to read)") : `(role ${w.role})`;
  $("#token-forget").hidden = !token();
  document.body.classList.toggle("can-trigger", can.trigger);
  document.body.classList.toggle("can-admin", can.admin);
}

$("#token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const v = $("#token-input").value.trim();
  if (!v) return;
  localStorage.setItem(TOKEN_KEY, v);
  $("#token-input").value = "";
  $("#token-error").hidden = true;
  await start();
});
$("#token-forget").addEventListener("click", async () => {
  localStorage.removeItem(TOKEN_KEY);
  await start();
});

async function getJSON(url, opts) {
  const r = await api(url, opts);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

let selected = null; // {repo, id}
let logSource = null;

function card(repo) {
  const b = repo.latest_build;
  const st = state(repo);
  // A redrawn card keeps the history it showed until the new one has loaded,
  // so the page below it does not jump (and a click there lands).
  const prev = document.getElementById(`repo-${repo.name}`);
  const history = el("ul", { class: "history" }, ...(prev ? [...$(".history", prev).children] : []));
  const c = el("article", { class: "card", id: `repo-${repo.name}`, "data-repo": repo.name },
    el("h2", {}, repo.name, " ", el("span", { class: `status ${st}` }, st)),
    el("div", { class: "src" }, `${repo.url} · ${repo.branch}`),
    el("dl", { class: "facts" },
      el("dt", {}, "Commit"), el("dd", { class: "commit" }, (b && b.short_commit) || "—"),
      el("dt", {}, "Started"), el("dd", { class: "started" }, fmtTime(b && b.started_at)),
      el("dt", {}, "Finished"), el("dd", { class: "finished" }, fmtTime(b && b.finished_at)),
      el("dt", {}, "Duration"), el("dd", { class: "duration" }, duration(b)),
      el("dt", {}, "Attributes"), el("dd", { class: "attributes" }, b ? counts(b) : "—")),
    b && b.error ? el("div", { class: "error build-error" }, b.error) : "",
    can.trigger ? el("button", { class: "trigger", type: "button", onclick: () => trigger(repo.name) }, "Trigger build") : "",
    " ",
    b ? el("button", { class: "secondary show-log", type: "button", onclick: () => selectBuild(repo.name, b.id) }, "Show log") : "",
    history);
  if (can.trigger && b && (b.status === "running" || b.status === "queued")) $(".trigger", c).disabled = true;
  loadHistory(repo.name, history);
  return c;
}

async function loadHistory(name, ul) {
  try {
    const builds = await getJSON(`/api/v1/repositories/${encodeURIComponent(name)}/builds?limit=10`);
    ul.replaceChildren(...builds.map((b) => {
      const li = el("li", { "data-build": b.id, onclick: () => selectBuild(name, b.id) },
        el("span", { class: `s ${b.status}` }, b.status), el("span", {}, `#${b.id}`),
        el("span", {}, b.short_commit || ""), counts(b), el("span", {}, fmtTime(b.created_at)));
      if (selected && selected.id === b.id) li.classList.add("selected");
      return li;
    }));
  } catch (e) { console.warn(e); }
}

async function refreshAll() {
  const repos = await getJSON("/api/v1/repositories");
  const box = $("#repositories");
  if (repos.length === 0) { box.replaceChildren(el("p", { class: "empty" }, "No repositories configured.")); return; }
  box.replaceChildren(...repos.map(card));
}

async function refreshRepo(name) {
  const repo = await getJSON(`/api/v1/repositories/${encodeURIComponent(name)}`);
  const old = document.getElementById(`repo-${name}`);
  if (old) old.replaceWith(card(repo)); else await refreshAll();
}

async function trigger(name) {
  const btn = $(`#repo-${CSS.escape(name)} .trigger`);
  if (btn) btn.disabled = true;
  try {
    const r = await getJSON(`/build/trigger/${encodeURIComponent(name)}`, { method: "POST" });
    if (r.build_id) selectBuild(name, r.build_id);
  } catch (e) { alert(`Trigger failed: ${e.message}`); }
  refreshRepo(name);
}

async function showBuild(id) {
  const b = await getJSON(`/api/v1/builds/${id}`);
  $("#build-title").textContent = `${b.repository} · build #${b.id}`;
  $("#build-meta").replaceChildren(
    el("span", { class: `status ${b.status}`, id: "build-status" }, b.status), " ",
    `commit ${b.short_commit || "—"} · ${b.reason} · started ${fmtTime(b.started_at)} · ${duration(b)}`,
    b.error ? el("span", { class: "error" }, ` · ${b.error}`) : "");
  $("#cancel-build").hidden = !can.trigger || !(b.status === "running" || b.status === "queued");
  $("#build-counts").replaceChildren(counts(b));
  // Each attribute links to its own part of the log; a failed one shows
  // Nix's error, its derivation and the last lines of its log in place.
  $("#results").replaceChildren(...b.results.flatMap((r) => {
    const row = el("tr", { "data-attr": r.attr, class: `result ${r.status}` },
      el("td", {}, r.attr), el("td", {}, r.kind), el("td", { class: r.status }, r.status),
      el("td", {}, ...(r.drv_path ? [el("div", { class: "drv" }, el("code", {}, r.drv_path))] : []),
        ...r.out_paths.map((p) => el("div", {}, el("code", {}, p)))),
      el("td", {}, el("a", { class: "attr-log", href: `/api/v1/builds/${b.id}/results/${r.id}/log`, target: "_blank",
        onclick: (e) => showResultLog(e, b.id, r) }, "log")));
    if (r.status !== "failed" && !(r.status === "skipped" && r.error)) return [row];
    return [row, el("tr", { class: "failure", "data-failure": r.attr },
      el("td", { colspan: "5" },
        el("pre", { class: "error" }, r.error || ""),
        r.log_tail ? el("pre", { class: "log-tail" }, r.log_tail) : ""))];
  }));
  // Where the build's outputs were pushed: one row per destination.
  const pushes = b.pushes || [];
  $("#pushes-section").hidden = pushes.length === 0;
  $("#pushes").replaceChildren(...pushes.map((p) => el("tr", { "data-destination": p.destination, class: `push ${p.state}` },
    el("td", {}, p.destination, el("div", { class: "muted" }, el("code", {}, p.url))),
    el("td", { class: `push-state ${p.state}` }, p.state),
    el("td", {}, String(p.attempts)),
    el("td", {}, String(p.paths)),
    el("td", {}, `${p.uploaded} · ${fmtBytes(p.bytes)}`),
    el("td", {}, p.duration_ms ? `${(p.duration_ms / 1000).toFixed(1)}s` : "—"),
    el("td", {}, p.error ? el("pre", { class: "error" }, p.error) : ""))));
  // A push still running is shown until it ends.
  if (pushes.some((p) => p.state === "queued" || p.state === "running")) {
    clearTimeout(pushTimer);
    pushTimer = setTimeout(() => { if (selected && selected.id === b.id) showBuild(b.id).catch(console.warn); }, 2000);
  }
}

// showResultLog shows an attribute's part of the log in a dialog, fetched
// with the token: a new tab would carry no token, and a server with
// require_auth_for_read would refuse it. Without a token a modified click
// (new tab, new window) keeps the link's usual behaviour.
async function showResultLog(e, buildID, r) {
  if (!token() && (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0)) return;
  e.preventDefault();
  const dlg = $("#result-log");
  const pre = $("#result-log-text");
  $("#result-log-title").textContent = `${r.attr} · build #${buildID}`;
  pre.textContent = "Loading…";
  pre.classList.remove("error");
  if (!dlg.open) dlg.showModal();
  try {
    const resp = await api(`/api/v1/builds/${buildID}/results/${r.id}/log`);
    const text = await resp.text();
    if (!resp.ok) {
      let detail = text;
      try { detail = JSON.parse(text).detail || text; } catch { /* not JSON: show it as is */ }
      throw new Error(`${resp.status}: ${detail}`);
    }
    pre.textContent = text;
  } catch (err) {
    pre.classList.add("error");
    pre.textContent = `Could not load the log: ${err.message}`;
  }
}
$("#result-log-close").addEventListener("click", () => $("#result-log").close());

let pushTimer = null;
const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

// selectBuild shows a build; the address becomes /builds/<id>, the
// build's own URL, unless the change came from that URL (push false).
function selectBuild(repo, id, push = true) {
  selected = { repo, id };
  if (push && location.pathname !== `/builds/${id}`) history.pushState({ id }, "", `/builds/${id}`);
  $("#build-detail").hidden = false;
  document.querySelectorAll(".history li").forEach((li) => li.classList.toggle("selected", Number(li.dataset.build) === id));
  showBuild(id).catch(console.warn);
  const log = $("#log");
  log.textContent = "";
  if (logSource) logSource.close();
  // The log streams line by line while the build runs; "end" closes it.
  // Every connection streams the log from its start, so when it reconnects
  // (the server restarted) start over instead of appending it twice.
  const src = stream(`/api/v1/builds/${id}/log?follow=1`, {
    onopen: () => { log.textContent = ""; },
    on: {
      line: (e) => {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(e.data + "\n");
        if (atBottom) log.scrollTop = log.scrollHeight;
      },
      end: () => { src.close(); if (logSource === src) logSource = null; showBuild(id).catch(console.warn); },
    },
  });
  logSource = src;
}

$("#cancel-build").addEventListener("click", async () => {
  if (!selected) return;
  await api(`/api/v1/builds/${selected.id}/cancel`, { method: "POST" });
});

// Snippet buttons copy the text of the element their data-copy names.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const text = document.querySelector(button.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); } catch { /* the text stays selectable */ }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
}

$("#copy-key").addEventListener("click", async () => {
  const input = $("#public-key");
  input.select();
  try { await navigator.clipboard.writeText(input.value); } catch { document.execCommand("copy"); }
  $("#copy-key").textContent = "Copied";
  setTimeout(() => ($("#copy-key").textContent = "Copy"), 1500);
});

// The fleet: a row per host, refreshed every 10 s, on build events (a build
// can give an auto host a new target) and after an approval.
const ALERT_LABELS = { "fingerprint-changed": "fingerprint changed", "deployment-failed": "deployment failed", enrolled: "pending enrolment" };
// shortPath shows /nix/store/<hash>-<name> as "<name> (<first 8 of hash>)".
const shortPath = (p) => {
  const base = p.slice(p.lastIndexOf("/") + 1);
  return base.indexOf("-") === 32 && base.length > 33 ? `${base.slice(33)} (${base.slice(0, 8)})` : p;
};
const pathCell = (cls, p, ...extra) => el("td", { class: cls, title: p || "" }, p ? el("code", {}, shortPath(p)) : "—", ...extra);
const fmtMS = (ms) => (ms < 1000 ? `${ms}ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.floor(ms / 60000)}m ${Math.round((ms % 60000) / 1000)}s`);
const policyText = (h) => (h.policy === "auto" ? `auto (${h.repository}#${h.configuration || h.name})` : h.policy);

function hostRow(h) {
  const status = el("td", { class: "status" }, el("span", { class: `status ${h.status}` }, h.status));
  if (h.status === "pending" && can.admin) {
    status.append(" ", el("button", { class: "approve", type: "button", onclick: (e) => approve(h.name, e.currentTarget) }, "Approve"));
  }
  const desired = pathCell("desired", h.desired);
  if (h.desired_reason) desired.append(el("div", { class: "reason" }, h.desired_reason));
  if (h.target_error) desired.append(el("div", { class: "target-error" }, `not sent: ${h.target_error}`));
  const d = h.last_deployment;
  const alerts = (h.alerts || []).map((a) => el("span", { class: `alert ${a.kind}`, title: `${fmtTime(a.at)}: ${a.detail}` }, ALERT_LABELS[a.kind] || a.kind));
  const seen = h.last_seen ? fmtTime(h.last_seen) : "never";
  return el("tr", { id: `host-${h.name}`, "data-host": h.name, class: h.online ? "online" : "offline" },
    el("td", { class: "name" }, h.name),
    status,
    el("td", { class: "policy" }, policyText(h)),
    pathCell("current", h.current),
    desired,
    el("td", { class: "last-seen" }, h.last_seen && !h.online ? `${seen} (offline)` : seen),
    el("td", { class: h.drift ? "drift drifting" : "drift" }, h.drift ? `${h.drift} behind` : h.desired ? "in sync" : "—"),
    el("td", { class: "last-deploy", title: d ? `${d.target}${d.error ? ": " + d.error : ""}` : "" },
      d ? el("span", { class: `s ${d.status}` }, d.status) : "—", d ? ` · ${fmtMS(d.duration_ms)}` : ""),
    el("td", { class: "alerts" }, ...(alerts.length ? alerts : ["—"])));
}

let hostsSeq = 0;
let hostsDrawn = "";
async function refreshHosts() {
  const seq = ++hostsSeq;
  const r = await api("/api/v1/hosts");
  if (r.status === 404) { $("#fleet").hidden = true; return; } // a server without a fleet
  if (!r.ok) throw new Error(`/api/v1/hosts: ${r.status}`);
  const hosts = await r.json();
  if (seq !== hostsSeq) return; // a newer refresh has begun
  $("#fleet").hidden = false;
  // Unchanged rows stay as they are, so a click on Approve is not lost to a
  // redraw of the same data (the table is refreshed every 10 s).
  const drawn = JSON.stringify([can.admin, hosts]);
  if (drawn === hostsDrawn) return;
  hostsDrawn = drawn;
  const pending = hosts.filter((h) => h.status === "pending").length;
  const drifting = hosts.filter((h) => h.drift).length;
  const alerting = hosts.filter((h) => (h.alerts || []).length || h.target_error).length;
  $("#fleet-summary").textContent = `${hosts.length} host${hosts.length === 1 ? "" : "s"} · ${pending} pending · ${drifting} drifting · ${alerting} with alerts`;
  $("#hosts").replaceChildren(...(hosts.length ? hosts.map(hostRow)
    : [el("tr", { class: "empty-row" }, el("td", { colspan: "9", class: "empty" }, "No hosts yet: start an agent on one, or crystal-forge host add."))]));
}

let hostsSoon = null;
function refreshHostsSoon() {
  if (!hostsSoon) hostsSoon = setTimeout(() => { hostsSoon = null; refreshHosts().catch(console.warn); }, 500);
}

async function approve(name, btn) {
  btn.disabled = true;
  try {
    const r = await api(`/api/v1/hosts/${encodeURIComponent(name)}/approve`, { method: "POST" });
    if (!r.ok) throw new Error(`${r.status} ${(await r.json().catch(() => ({}))).detail || ""}`);
  } catch (e) { btn.disabled = false; alert(`Approve ${name} failed: ${e.message}`); }
  await refreshHosts().catch(console.warn);
}

// Workers and the job queue: refreshed every 5 s and on build events.
function workerRow(w) {
  const st = !w.alive ? "offline" : w.draining ? "draining" : "online";
  return el("tr", { id: `worker-${w.name}`, "data-worker": w.name, class: st },
    el("td", { class: "name" }, w.name),
    el("td", { class: "host" }, w.host),
    el("td", { class: "systems" }, (w.systems || []).join(", ")),
    el("td", { class: "running" }, `${w.running} of ${w.capacity}`),
    el("td", { class: "last-seen" }, fmtTime(w.last_seen)),
    el("td", { class: "state" }, el("span", { class: `status ${st}` }, st)));
}

function jobRow(j) {
  const s = Math.round(j.seconds);
  const what = j.kind === "eval" ? "evaluation" : `${j.attr} (${j.attr_kind})`;
  return el("tr", { id: `job-${j.id}`, "data-job": j.id, class: j.state },
    el("td", {}, `#${j.id}`),
    el("td", {}, el("a", { href: `/builds/${j.build_id}`, onclick: (e) => { e.preventDefault(); getJSON(`/api/v1/builds/${j.build_id}`).then((b) => selectBuild(b.repository, b.id)).catch(console.warn); } }, `#${j.build_id}`)),
    el("td", { class: "attr" }, what),
    el("td", { class: "state" }, el("span", { class: `s ${j.state}` }, j.state), j.attempts > 1 ? ` (attempt ${j.attempts})` : ""),
    el("td", { class: "worker" }, j.worker || "—"),
    el("td", { class: "for" }, s < 60 ? `${s}s` : `${Math.floor(s / 60)}m ${s % 60}s`));
}

let workersSeq = 0;
async function refreshWorkers() {
  const seq = ++workersSeq;
  const [workers, queue] = await Promise.all([getJSON("/api/v1/workers"), getJSON("/api/v1/queue")]);
  if (seq !== workersSeq) return;
  $("#workers-section").hidden = false;
  $("#queue-summary").textContent = `${workers.filter((w) => w.alive).length} online · ${queue.running} job${queue.running === 1 ? "" : "s"} running · ${queue.queued} queued`;
  $("#workers").replaceChildren(...(workers.length ? workers.map(workerRow)
    : [el("tr", { class: "empty-row" }, el("td", { colspan: "6", class: "empty" }, "No workers: start crystal-forge builder, or the server without --no-local-builder."))]));
  $("#queue").replaceChildren(...(queue.jobs.length ? queue.jobs.map(jobRow)
    : [el("tr", { class: "empty-row" }, el("td", { colspan: "6", class: "empty" }, "No jobs queued or running."))]));
}

let workersSoon = null;
function refreshWorkersSoon() {
  if (!workersSoon) workersSoon = setTimeout(() => { workersSoon = null; refreshWorkers().catch(console.warn); }, 300);
}

let events = null;
function connect() {
  if (events) events.close();
  events = stream("/api/v1/events", {
    onopen: () => { document.body.classList.add("connected"); $("#live-text").textContent = "live"; refreshAll().catch(console.warn); refreshHostsSoon(); },
    onerror: () => { document.body.classList.remove("connected"); $("#live-text").textContent = "reconnecting…"; },
    on: {
      build: (e) => {
        const ev = JSON.parse(e.data);
        refreshRepo(ev.repository).catch(console.warn);
        refreshHostsSoon();
        refreshWorkersSoon();
        if (selected && selected.id === ev.build_id) showBuild(ev.build_id).catch(console.warn);
      },
    },
  });
}

// openFromURL selects the build a /builds/<id> address names.
async function openFromURL() {
  const m = location.pathname.match(/^\/builds\/(\d+)$/);
  if (!m) return;
  const b = await getJSON(`/api/v1/builds/${m[1]}`);
  selectBuild(b.repository, b.id, false);
}
window.addEventListener("popstate", () => { if (can.read) openFromURL().catch(console.warn); });

// start (again, after the token changed): who is this, then everything
// drawn for that role.
async function start() {
  await whoami().catch(console.warn);
  if (!can.read) {
    $("#repositories").replaceChildren(el("p", { class: "empty" }, "Reading needs a token on this server: enter one above."));
    $("#fleet").hidden = true;
    $("#workers-section").hidden = true;
    if (events) { events.close(); events = null; }
    return;
  }
  if (selected) selectBuild(selected.repo, selected.id, false);
  else openFromURL().catch(console.warn);
  refreshAll().catch(console.warn);
  refreshHosts().catch(console.warn);
  refreshWorkers().catch(console.warn);
  connect();
}

start();
setInterval(() => { if (can.read) refreshHosts().catch(console.warn); }, 10000);
setInterval(() => { if (can.read) refreshWorkers().catch(console.warn); }, 5000);
