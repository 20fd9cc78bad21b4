// The taskwarden dashboard: no build step, no dependencies. One event stream per page
// (browsers allow about six connections per origin): api/stream carries the process list
// and the tree of the process being looked at, each frame naming its topic. The other
// panels (history.js, fleet.js) read their routes: on a change the stream shows, or on a
// slow poll of one cheap route each.
import { $, el, api, ask, badge, progressBar, refusal, session, setRole, probeRole, initTheme, TERMINAL } from "./util.js";
import { onProcesses, startHistory, historyOf } from "./history.js";
import { onWorkers, servedBy, startFleet, tickFleet } from "./fleet.js";

const PAGE_SIZE = 50;
const STATES = ["idle", "scheduled", "running", "cancel_requested", "cancelling", "done", "failed", "cancelled"];
const CANCELLABLE = ["scheduled", "running"];

const view = {
  processes: [],      // the last snapshot shown
  waiting: null,      // a snapshot received while paused
  paused: false,
  page: 0,
  selected: null,
  tree: new Map(),    // processId -> row of the open tree
  stream: null,       // the page's one EventSource
  listData: null,     // the last list frame as received
  started: false,     // the panels' polls run
};

function elapsed(proc) {
  const status = proc.status;
  if (status.duration !== null && status.duration !== undefined) return `${status.duration.toFixed(1)} s`;
  if (status.runningSince && !TERMINAL.has(status.state)) {
    const seconds = (Date.now() - Date.parse(status.runningSince)) / 1000;
    return `${Math.max(0, seconds).toFixed(0)} s`;
  }
  return "";
}

const bar = (proc) => progressBar(proc.progress && proc.progress.percent, proc.status.state === "running");
const stateBadge = (state) => badge(state, "state");

// ------------------------------------------------------------------ the list
function setConnection(ok) {
  const indicator = $("connection");
  indicator.textContent = ok ? "connected" : "reconnecting…";
  indicator.className = `connection ${ok ? "connected" : "reconnecting"}`;
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
  for (const p of view.processes) counts[p.status.state] = (counts[p.status.state] || 0) + 1;
  $("counts").replaceChildren(...STATES.map((s) =>
    el("span", { class: "count", "data-state": s }, `${s} `, el("b", {}, String(counts[s])))));
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
      el("td", {}, bar(p), " ", (p.progress && p.progress.message) || ""),
      el("td", { class: "elapsed" }, elapsed(p)));
    row.addEventListener("click", () => openTree(p.processId));
    return row;
  }));
  $("page-info").textContent = `page ${view.page + 1} of ${pages} · ${rows.length} processes`;
  $("prev").disabled = view.page === 0;
  $("next").disabled = view.page >= pages - 1;
  updateBulk();
}

function render() {
  renderOverview();
  renderRows();
}

function onListFrame(frame) {
  if (frame.type !== "update") return;
  onProcesses(frame.processes);  // the history hears of ended runs even while paused
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
  stream.onopen = () => {
    setConnection(true);
    if (session.role === null) probeRole();  // the server was away when the page asked
  };
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

// ------------------------------------------------------------------ bulk cancel, resync
// The route filters by state (and rootId, metadataFilter), not by the search box: with a
// search typed, the button is off rather than cancelling more than the list shows.
function bulkFilter() {
  if ($("search").value.trim()) return { error: "clear the search first: bulk cancel goes by the state filter" };
  const state = $("state-filter").value;
  if (state && !CANCELLABLE.includes(state)) return { error: `a ${state} process cannot be cancelled` };
  const params = new URLSearchParams();
  for (const s of state ? [state] : CANCELLABLE) params.append("state", s);
  return { params, label: state || "scheduled or running" };
}

function updateBulk() {
  const filter = bulkFilter();
  $("bulk-cancel").disabled = Boolean(filter.error);
  $("bulk-cancel").title = filter.error || "cancel every process the state filter matches, after a confirmation";
}

async function bulkCancel() {
  const filter = bulkFilter();
  if (filter.error) return;
  const result = $("list-result");
  // Without confirm=true the route changes nothing and answers the count.
  const counted = await api(`api/processes/cancel?${filter.params}`, { method: "POST" });
  if (counted.status !== 400 || counted.body.reason !== "confirmation-needed") {
    result.textContent = refusal("bulk cancel", counted);
    return;
  }
  const matched = counted.body.matched;
  if (!matched) {
    result.textContent = `bulk cancel: no ${filter.label} process to cancel`;
    return;
  }
  const plural = matched === 1 ? "process" : "processes";
  const answer = await ask(`Cancel ${matched} ${filter.label} ${plural}? Child processes count and stop with their parents.`,
    { reason: true, okLabel: `Cancel ${matched} ${plural}` });
  if (!answer.ok) {
    result.textContent = "bulk cancel not sent: not confirmed";
    return;
  }
  filter.params.set("confirm", "true");
  filter.params.set("limit", String(matched));  // never more than the count confirmed
  if (answer.reason) filter.params.set("reason", answer.reason);
  const done = await api(`api/processes/cancel?${filter.params}`, { method: "POST" });
  if (!done.ok) {
    result.textContent = refusal("bulk cancel", done);
    return;
  }
  const refused = done.body.refused.map((r) => `${r.processId} (${r.reason})`).join(", ");
  result.textContent = `cancelled ${done.body.cancelled.length} of ${done.body.matched}` + (refused ? `; refused: ${refused}` : "");
}

async function resync() {
  const answer = await api("api/processes/resync", { method: "POST" });
  $("list-result").textContent = answer.ok ? answer.body.message : refusal("resync", answer);
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
        el("div", { class: "node" }, el("b", {}, row.name), stateBadge(row.status.state), bar(row),
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
    updateControls();
  }
}

function updateControls() {
  const root = view.tree.get(view.selected);
  if (!root) return;
  const state = root.status.state;
  const served = servedBy(root.rootId || root.processId);
  $("launch").hidden = served === false;  // no live worker would take the launch
  $("no-worker").hidden = served !== false;
  $("launch").disabled = !["idle", "done", "failed", "cancelled"].includes(state);
  $("cancel").disabled = !root.cancellable || !CANCELLABLE.includes(state);
  $("cancel-group").hidden = view.tree.size < 2;
  $("cancel-group").disabled = ![...view.tree.values()].some((p) => CANCELLABLE.includes(p.status.state));
  $("dismiss").disabled = !TERMINAL.has(state);
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

const VERBS = ["launch", "cancel", "cancel-group", "dismiss"];

function openTree(processId) {
  if (processId === view.selected) return;
  view.selected = processId;
  view.tree = new Map();
  $("log").replaceChildren();
  $("command-result").textContent = "";
  $("detail-title").textContent = "";
  $("warning").hidden = true;
  $("no-worker").hidden = true;
  for (const verb of VERBS) $(verb).disabled = true;  // until its rows arrive
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

// A launch of a process with a warning, and every cancel, ask first. The single cancel
// route takes no reason (only the bulk and the operation cancels do), so none is asked.
function confirmed(verb) {
  const proc = view.tree.get(view.selected) || view.processes.find((p) => p.processId === view.selected);
  if (!proc) return false;
  if (verb === "launch") return !proc.warning || window.confirm(`${proc.warning}\n\nLaunch ${proc.name}?`);
  if (verb === "cancel") return window.confirm(`Cancel ${proc.name}?`);
  if (verb === "cancel-group") return window.confirm(`Cancel ${proc.name} and every process below it?`);
  return true;
}

const PATHS = { launch: "launch", cancel: "cancel", "cancel-group": "cancel?group=true", dismiss: "dismiss" };

async function command(verb) {
  const id = view.selected;
  if (!id) return;
  if (!confirmed(verb)) {
    $("command-result").textContent = `${verb} not sent: not confirmed`;
    return;
  }
  $("command-result").textContent = "";
  const answer = await api(`api/processes/${encodeURIComponent(id)}/${PATHS[verb]}`, { method: "POST" });
  $("command-result").textContent = answer.ok ? "" : refusal(verb, answer);
}

// ------------------------------------------------------------------ auth
async function checkAuth() {
  const response = await fetch("api/processes?limit=1");
  if (response.status === 401 || response.status === 403) $("login").hidden = false;
}

function signIn(event) {
  event.preventDefault();
  document.cookie = `taskwarden_token=${encodeURIComponent($("token").value)}; path=/; SameSite=Strict`;
  $("token").value = "";
  $("login").hidden = true;
  boot();
}

// Controls are hidden (body.read-only) until the role is known, and for a viewer.
async function boot() {
  if (await probeRole() === "sign-in") {
    $("login").hidden = false;
    return;
  }
  connect();
  if (!view.started) {
    view.started = true;
    startHistory();
    startFleet();
  }
}

// ------------------------------------------------------------------ start
initTheme();
setRole(null);
$("state-filter").addEventListener("change", () => { view.page = 0; renderRows(); });
$("search").addEventListener("input", () => { view.page = 0; renderRows(); });
$("show-children").addEventListener("change", renderRows);
$("pause").addEventListener("click", togglePause);
$("prev").addEventListener("click", () => { view.page -= 1; renderRows(); });
$("next").addEventListener("click", () => { view.page += 1; renderRows(); });
$("bulk-cancel").addEventListener("click", bulkCancel);
$("resync").addEventListener("click", resync);
for (const verb of VERBS) $(verb).addEventListener("click", () => command(verb));
$("runs-of").addEventListener("click", () => historyOf(view.selected));
$("close-detail").addEventListener("click", closeTree);
$("login-form").addEventListener("submit", signIn);
onWorkers(updateControls);
setInterval(() => {  // live elapsed times between frames
  for (const cell of document.querySelectorAll("#rows tr")) {
    const proc = view.processes.find((p) => p.processId === cell.dataset.id);
    if (proc) cell.querySelector(".elapsed").textContent = elapsed(proc);
  }
  for (const row of view.tree.values()) {
    const node = document.querySelector(`#tree li[data-id="${CSS.escape(row.processId)}"] .elapsed`);
    if (node) node.textContent = elapsed(row);
  }
  tickFleet();
}, 1000);
boot();
