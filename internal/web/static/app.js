// Crystal Forge page: cards per repository, kept live by /api/v1/events;
// a selected build shows its per-package results and streams its log.
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

async function getJSON(url, opts) {
  const r = await fetch(url, opts);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

let selected = null; // {repo, id}
let logSource = null;

function card(repo) {
  const b = repo.latest_build;
  const st = state(repo);
  const c = el("article", { class: "card", id: `repo-${repo.name}`, "data-repo": repo.name },
    el("h2", {}, repo.name, " ", el("span", { class: `status ${st}` }, st)),
    el("div", { class: "src" }, `${repo.url} · ${repo.branch}`),
    el("dl", { class: "facts" },
      el("dt", {}, "Commit"), el("dd", { class: "commit" }, (b && b.short_commit) || "—"),
      el("dt", {}, "Started"), el("dd", { class: "started" }, fmtTime(b && b.started_at)),
      el("dt", {}, "Finished"), el("dd", { class: "finished" }, fmtTime(b && b.finished_at)),
      el("dt", {}, "Duration"), el("dd", { class: "duration" }, duration(b))),
    el("button", { class: "trigger", type: "button", onclick: () => trigger(repo.name) }, "Trigger build"),
    " ",
    b ? el("button", { class: "secondary show-log", type: "button", onclick: () => selectBuild(repo.name, b.id) }, "Show log") : "",
    el("ul", { class: "history" }));
  if (b && (b.status === "running" || b.status === "queued")) $(".trigger", c).disabled = true;
  loadHistory(repo.name, $(".history", c));
  return c;
}

async function loadHistory(name, ul) {
  try {
    const builds = await getJSON(`/api/v1/repositories/${encodeURIComponent(name)}/builds?limit=10`);
    ul.replaceChildren(...builds.map((b) => {
      const li = el("li", { "data-build": b.id, onclick: () => selectBuild(name, b.id) },
        el("span", { class: `s ${b.status}` }, b.status), el("span", {}, `#${b.id}`),
        el("span", {}, b.short_commit || ""), el("span", {}, fmtTime(b.created_at)));
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
  $("#cancel-build").hidden = !(b.status === "running" || b.status === "queued");
  $("#results").replaceChildren(...b.results.map((r) => el("tr", { "data-attr": r.attr },
    el("td", {}, r.attr), el("td", {}, r.kind), el("td", { class: r.status }, r.status),
    el("td", {}, ...r.out_paths.map((p) => el("div", {}, el("code", {}, p)))))));
}

function selectBuild(repo, id) {
  selected = { repo, id };
  $("#build-detail").hidden = false;
  document.querySelectorAll(".history li").forEach((li) => li.classList.toggle("selected", Number(li.dataset.build) === id));
  showBuild(id).catch(console.warn);
  const log = $("#log");
  log.textContent = "";
  if (logSource) logSource.close();
  // The log streams line by line while the build runs; "end" closes it.
  logSource = new EventSource(`/api/v1/builds/${id}/log?follow=1`);
  // Every connection streams the log from its start, so when the browser
  // reconnects (the server restarted) start over instead of appending it twice.
  logSource.onopen = () => { log.textContent = ""; };
  logSource.addEventListener("line", (e) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(e.data + "\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  logSource.addEventListener("end", () => { logSource.close(); logSource = null; showBuild(id).catch(console.warn); });
}

$("#cancel-build").addEventListener("click", async () => {
  if (!selected) return;
  await fetch(`/api/v1/builds/${selected.id}/cancel`, { method: "POST" });
});

$("#copy-key").addEventListener("click", async () => {
  const input = $("#public-key");
  input.select();
  try { await navigator.clipboard.writeText(input.value); } catch { document.execCommand("copy"); }
  $("#copy-key").textContent = "Copied";
  setTimeout(() => ($("#copy-key").textContent = "Copy"), 1500);
});

function connect() {
  const es = new EventSource("/api/v1/events");
  es.onopen = () => { document.body.classList.add("connected"); $("#live-text").textContent = "live"; refreshAll().catch(console.warn); };
  es.onerror = () => { document.body.classList.remove("connected"); $("#live-text").textContent = "reconnecting…"; };
  es.addEventListener("build", (e) => {
    const ev = JSON.parse(e.data);
    refreshRepo(ev.repository).catch(console.warn);
    if (selected && selected.id === ev.build_id) showBuild(ev.build_id).catch(console.warn);
  });
}

refreshAll().catch(console.warn);
connect();
