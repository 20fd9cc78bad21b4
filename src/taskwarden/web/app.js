// The taskwarden dashboard: no build step, no dependencies. One event stream per page
// (browsers allow about six connections per origin): api/stream carries the process list
// and the tree of the process being looked at, each frame naming its topic.
"use strict";

const PAGE_SIZE = 50;
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const STATES = ["idle", "scheduled", "running", "cancel_requested", "cancelling", "done", "failed", "cancelled"];
const $ = (id) => document.getElementById(id);

const view = {
  processes: [],      // the last snapshot shown
  waiting: null,      // a snapshot received while paused
  paused: false,
  page: 0,
  selected: null,
  tree: new Map(),    // processId -> row of the open tree
  stream: null,       // the page's one EventSource
  listData: null,     // the last list frame as received
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function elapsed(proc) {
  const status = proc.status;
  if (status.duration !== null && status.duration !== undefined) return `${status.duration.toFixed(1)} s`;
  if (status.runningSince && !TERMINAL.has(status.state)) {
    const seconds = (Date.now() - Date.parse(status.runningSince)) / 1000;
    return `${Math.max(0, seconds).toFixed(0)} s`;
  }
  return "";
}

function progressBar(proc) {
  const percent = proc.progress && proc.progress.percent;
  const bar = el("progress", { max: 100 });
  if (percent !== null && percent !== undefined) bar.value = percent;
  else if (proc.status.state !== "running") bar.value = 0;
  return bar;
}

function stateBadge(state) {
  return el("span", { class: `state state-${state}`, "data-state": state }, state);
}

// ------------------------------------------------------------------ the list
function setConnection(ok) {
  const badge = $("connection");
  badge.textContent = ok ? "connected" : "reconnecting…";
  badge.className = `connection ${ok ? "connected" : "reconnecting"}`;
}

function visible() {
  const state = $("state-filter").value;
  const text = $("search").value.trim().toLowerCase();
  const children = $("show-children").checked;
  return view.processes.filter((p) =>
    (children || p.parentId === null) &&
    (!state || p.status.state === state) &&
    (!text || p.name.toLowerCase().includes(text) || p.processId.toLowerCase().includes(text)));
}

function renderOverview() {
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  let recent = 0;
  const since = Date.now() - 5 * 60 * 1000;
  for (const p of view.processes) {
    counts[p.status.state] = (counts[p.status.state] || 0) + 1;
    const end = p.status.doneAt || p.status.failedAt || p.status.stoppedAt;
    if (end && Date.parse(end) >= since) recent += 1;
  }
  $("counts").replaceChildren(...STATES.map((s) =>
    el("span", { class: "count", "data-state": s }, `${s} `, el("b", {}, String(counts[s])))));
  $("throughput").textContent = String(recent);
  $("failures").textContent = String(counts.failed);
}

function renderRows() {
  const rows = visible();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  view.page = Math.min(view.page, pages - 1);
  const shown = rows.slice(view.page * PAGE_SIZE, (view.page + 1) * PAGE_SIZE);
  $("rows").replaceChildren(...shown.map((p) => {
    const row = el("tr", { "data-id": p.processId, class: p.processId === view.selected ? "selected" : "" },
      el("td", {}, p.name, el("br"), el("small", {}, p.processId)),
      el("td", {}, stateBadge(p.status.state)),
      el("td", {}, progressBar(p), " ", (p.progress && p.progress.message) || ""),
      el("td", { class: "elapsed" }, elapsed(p)));
    row.addEventListener("click", () => openTree(p.processId));
    return row;
  }));
  $("page-info").textContent = `page ${view.page + 1} of ${pages} · ${rows.length} processes`;
  $("prev").disabled = view.page === 0;
  $("next").disabled = view.page >= pages - 1;
}

function render() {
  renderOverview();
  renderRows();
}

function onListFrame(frame) {
  if (frame.type !== "update") return;
  if (view.paused) {
    view.waiting = frame.processes;
    $("pending").textContent = "updates waiting";
    return;
  }
  view.processes = frame.processes;
  render();
}

function treeTopic() {
  return view.selected === null ? null : `tree:${view.selected}`;
}

function onFrame(frame, raw) {
  if (frame.topic === "processes") {
    if (raw === view.listData) return;  // a new stream's snapshot of the list already shown
    view.listData = raw;
    onListFrame(frame);
  }
  else if (frame.topic !== undefined && frame.topic === treeTopic()) onTreeFrame(frame);
  else if (frame.type === "shutdown") setConnection(false);
}

// The topics are in the URL, so a browser's own reconnect resumes the same ones; showing
// another process closes the stream and opens one for the new topics (a fresh snapshot).
function connect() {
  if (view.stream) view.stream.close();
  const topics = ["processes"];
  if (treeTopic() !== null) topics.push(treeTopic());
  const stream = new EventSource(`api/stream?${topics.map((t) => `topic=${encodeURIComponent(t)}`).join("&")}`);
  view.stream = stream;
  stream.onopen = () => setConnection(true);
  stream.onerror = () => {
    setConnection(false);
    checkAuth();
  };
  stream.onmessage = (event) => onFrame(JSON.parse(event.data), event.data);
}

function togglePause() {
  view.paused = !view.paused;
  $("pause").textContent = view.paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(view.paused));
  if (!view.paused && view.waiting) {
    view.processes = view.waiting;
    view.waiting = null;
    $("pending").textContent = "";
    render();
  }
}

// ------------------------------------------------------------------ the tree
function renderTree() {
  const byParent = new Map();
  for (const row of view.tree.values()) {
    const key = row.processId === view.selected ? null : row.parentId;
    if (!byParent.has(key)) byParent.set(key, []);
    byParent.get(key).push(row);
  }
  const build = (parentKey) => {
    const rows = (byParent.get(parentKey) || []).sort((a, b) => a.order - b.order || a.processId.localeCompare(b.processId));
    return rows.map((row) => {
      const error = row.status.error ? el("span", { class: "error" }, row.status.error) : null;
      const node = el("li", { "data-id": row.processId },
        el("div", { class: "node" }, el("b", {}, row.name), stateBadge(row.status.state), progressBar(row),
          el("span", { class: "message" }, (row.progress && row.progress.message) || ""),
          el("span", { class: "elapsed" }, elapsed(row)), error));
      const children = build(row.processId);
      if (children.length) node.append(el("ul", {}, ...children));
      return node;
    });
  };
  $("tree").replaceChildren(...build(null));
  const root = view.tree.get(view.selected);
  if (root) {
    $("detail-title").textContent = root.name;
    $("warning").textContent = root.warning || "";
    $("warning").hidden = !root.warning;
    const state = root.status.state;
    $("launch").disabled = !["idle", "done", "failed", "cancelled"].includes(state);
    $("cancel").disabled = !root.cancellable || !["scheduled", "running"].includes(state);
    $("dismiss").disabled = !TERMINAL.has(state);
  }
}

function appendLog(entries) {
  const log = $("log");
  for (const entry of entries) {
    const time = new Date(entry.timestamp).toLocaleTimeString();
    log.append(el("li", { class: `level-${entry.level}` }, `${time} [${entry.level}] ${entry.processLabel}: ${entry.message}`));
  }
  log.scrollTop = log.scrollHeight;
}

function onTreeFrame(frame) {
  if (frame.type === "log-clear") $("log").replaceChildren();
  else if (frame.type === "log") appendLog(frame.entries);
  else if (frame.type === "update") {
    view.tree = new Map(frame.processes.map((p) => [p.processId, p]));
    renderTree();
  }
}

function openTree(processId) {
  if (processId === view.selected) return;
  view.selected = processId;
  view.tree = new Map();
  $("log").replaceChildren();
  $("command-result").textContent = "";
  $("detail-title").textContent = "";
  $("warning").hidden = true;
  for (const verb of ["launch", "cancel", "dismiss"]) $(verb).disabled = true;  // until its rows arrive
  $("detail").hidden = false;
  renderRows();
  connect();
}

function closeTree() {
  view.selected = null;
  view.tree = new Map();
  $("detail").hidden = true;
  renderRows();
  connect();
}

// A launch of a process with a warning, and every cancel, ask first.
function confirmed(verb) {
  const proc = view.tree.get(view.selected) || view.processes.find((p) => p.processId === view.selected);
  if (!proc) return false;
  if (verb === "launch") return !proc.warning || window.confirm(`${proc.warning}\n\nLaunch ${proc.name}?`);
  if (verb === "cancel") return window.confirm(`Cancel ${proc.name}?`);
  return true;
}

async function command(verb) {
  const id = view.selected;
  if (!id) return;
  if (!confirmed(verb)) {
    $("command-result").textContent = `${verb} not sent: not confirmed`;
    return;
  }
  $("command-result").textContent = "";
  const response = await fetch(`api/processes/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
  const body = await response.json().catch(() => ({}));
  $("command-result").textContent = response.ok ? "" : `${verb} refused: ${body.reason || response.status} – ${body.message || ""}`;
}

// ------------------------------------------------------------------ auth
async function checkAuth() {
  const response = await fetch("api/processes?limit=1");
  if (response.status === 401 || response.status === 403) $("login").hidden = false;
}

function signIn(event) {
  event.preventDefault();
  document.cookie = `taskwarden_token=${encodeURIComponent($("token").value)}; path=/; SameSite=Strict`;
  $("login").hidden = true;
  connect();
}

// ------------------------------------------------------------------ start
$("state-filter").addEventListener("change", () => { view.page = 0; renderRows(); });
$("search").addEventListener("input", () => { view.page = 0; renderRows(); });
$("show-children").addEventListener("change", renderRows);
$("pause").addEventListener("click", togglePause);
$("prev").addEventListener("click", () => { view.page -= 1; renderRows(); });
$("next").addEventListener("click", () => { view.page += 1; renderRows(); });
$("launch").addEventListener("click", () => command("launch"));
$("cancel").addEventListener("click", () => command("cancel"));
$("dismiss").addEventListener("click", () => command("dismiss"));
$("close-detail").addEventListener("click", closeTree);
$("login-form").addEventListener("submit", signIn);
setInterval(() => {  // live elapsed times between frames
  for (const cell of document.querySelectorAll("#rows tr")) {
    const proc = view.processes.find((p) => p.processId === cell.dataset.id);
    if (proc) cell.querySelector(".elapsed").textContent = elapsed(proc);
  }
  for (const row of view.tree.values()) {
    const node = document.querySelector(`#tree li[data-id="${CSS.escape(row.processId)}"] .elapsed`);
    if (node) node.textContent = elapsed(row);
  }
}, 1000);
connect();
