// The taskwarden dashboard: no build step, no dependencies. One event stream per page
// (browsers allow about six connections per origin): api/stream carries the "changes"
// topic (the counts by state and the rows that changed, never the whole list) and the
// tree of the process being looked at, each frame naming its topic. The list shows one
// page, read from api/processes with the filters applied by the server, so a store of
// any size loads a page at a time. The other panels (history.js, fleet.js) read their
// routes: on a change the stream shows, or on a slow poll of one cheap route each.
import { $, el, api, ask, badge, progressBar, refusal, session, setRole, probeRole, initTheme, TERMINAL } from "./util.js";
import { onProcesses, startHistory, historyOf } from "./history.js";
import { onWorkers, servedBy, startFleet, tickFleet } from "./fleet.js";

const PAGE_SIZE = 50;
const STATES = ["idle", "scheduled", "running", "cancel_requested", "cancelling", "done", "failed", "cancelled"];
const CANCELLABLE = ["scheduled", "running"];

const RELOAD_EVERY = 1000;  // ms: the page is re-read at most this often while it changes

const view = {
  rows: [],           // the page shown, as api/processes answered it
  total: 0,           // how many processes the filters match
  starts: [null],     // the cursor of each page's start (null: the first page)
  page: 0,
  nextCursor: null,
  counts: {},         // every process, by state, from the stream
  loads: 0,           // numbers the page reads, so that a late answer is dropped
  reloadAt: 0,        // when the page was last read
  reloadTimer: null,
  waiting: false,     // changes came while paused
  paused: false,
  selected: null,
  tree: new Map(),    // processId -> row of the open tree
  stream: null,       // the page's one EventSource
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

// The filters, as the server applies them: state, the search text, and "children"
// (off: only processes without a parent).
function filters() {
  const params = new URLSearchParams();
  const state = $("state-filter").value;
  const text = $("search").value.trim();
  if (state) params.set("state", state);
  if (text) params.set("search", text);
  if (!$("show-children").checked) params.set("rootsOnly", "true");
  return params;
}

function matches(p) {
  const state = $("state-filter").value;
  const text = $("search").value.trim().toLowerCase();
  return (!state || p.status.state === state) &&
    ($("show-children").checked || p.parentId === null) &&
    (!text || p.name.toLowerCase().includes(text) || p.processId.toLowerCase().includes(text));
}

function renderOverview() {
  $("counts").replaceChildren(...STATES.map((s) =>
    el("span", { class: "count", "data-state": s }, `${s} `, el("b", {}, String(view.counts[s] || 0)))));
  $("failures").textContent = String(view.counts.failed || 0);
}

function rowOf(p) {
  const row = el("tr", { "data-id": p.processId, class: p.processId === view.selected ? "selected" : "" },
    el("td", {}, p.name, el("br"), el("small", {}, p.processId)),
    el("td", {}, stateBadge(p.status.state)),
    el("td", {}, bar(p), " ", (p.progress && p.progress.message) || ""),
    el("td", { class: "elapsed" }, elapsed(p)));
  row.addEventListener("click", () => openTree(p.processId));
  return row;
}

function renderRows() {
  $("rows").replaceChildren(...view.rows.map(rowOf));
  const pages = Math.max(1, Math.ceil(view.total / PAGE_SIZE));
  $("page-info").textContent = `page ${view.page + 1} of ${pages} · ${view.total} processes`;
  $("prev").disabled = view.page === 0;
  $("next").disabled = view.nextCursor === null;
  updateBulk();
}

// Read the page shown; a newer read makes an older answer moot.
async function loadPage() {
  clearTimeout(view.reloadTimer);
  view.reloadTimer = null;
  view.reloadAt = Date.now();
  const number = ++view.loads;
  const params = filters();
  params.set("limit", String(PAGE_SIZE));
  const start = view.starts[view.page];
  if (start !== null) params.set("cursor", start);
  const answer = await api(`api/processes?${params}`);
  if (number !== view.loads) return;
  if (!answer.ok) {
    $("list-result").textContent = `the list could not be read: ${answer.body.message || answer.status}`;
    return;
  }
  view.rows = answer.body.items;
  view.total = answer.body.totalCount;
  view.nextCursor = answer.body.nextCursor;
  if (view.rows.length === 0 && view.page > 0) {  // the page emptied under the reader
    view.page -= 1;
    view.starts.length = view.page + 1;
    loadPage();
    return;
  }
  renderRows();
}

function firstPage() {
  view.page = 0;
  view.starts = [null];
  loadPage();
}

// A change that may move rows in or out of the page: read it again, at most once per
// RELOAD_EVERY, and not while paused.
function reloadSoon() {
  if (view.paused) {
    view.waiting = true;
    $("pending").textContent = "updates waiting";
    return;
  }
  if (view.reloadTimer !== null) return;
  view.reloadTimer = setTimeout(loadPage, Math.max(0, RELOAD_EVERY - (Date.now() - view.reloadAt)));
}

// The page's last row, by the list's order (depth, order, id): a change sorted after it
// belongs to a later page, unless this is the last one.
function afterPage(p) {
  const last = view.rows[view.rows.length - 1];
  if (!last || view.nextCursor === null) return false;
  if (p.depth !== last.depth) return p.depth > last.depth;
  if (p.order !== last.order) return p.order > last.order;
  return p.processId > last.processId;
}

function onChanged(frame) {
  onProcesses(frame.processes);  // the history hears of ended runs even while paused
  if (view.paused) {
    if (frame.processes.length || frame.removed.length) reloadSoon();
    return;
  }
  for (const p of frame.processes) {
    const at = view.rows.findIndex((row) => row.processId === p.processId);
    if (at >= 0 && matches(p)) {
      view.rows[at] = p;  // in place: the rows do not move under the reader
      const shown = $("rows").children[at];  // only this row is drawn again
      if (shown && shown.dataset.id === p.processId) shown.replaceWith(rowOf(p));
      else renderRows();
    } else if (at >= 0 || (matches(p) && !afterPage(p))) {
      reloadSoon();  // it leaves the page, or may join it
    }
  }
  if (frame.removed.some((id) => view.rows.some((row) => row.processId === id))) reloadSoon();
}

function onListFrame(frame) {
  if (frame.type === "reset") reloadSoon();  // a new stream: it may have missed changes
  else if (frame.type === "counts") {
    view.counts = frame.counts;
    renderOverview();
  } else if (frame.type === "changed") onChanged(frame);
}

function treeTopic() {
  return view.selected === null ? null : `tree:${view.selected}`;
}

function onFrame(frame) {
  if (frame.topic === "changes") onListFrame(frame);
  else if (frame.topic !== undefined && frame.topic === treeTopic()) onTreeFrame(frame);
  else if (frame.type === "shutdown") setConnection(false);
}

// The topics are in the URL, so a browser's own reconnect resumes the same ones; showing
// another process closes the stream and opens one for the new topics (a fresh snapshot).
function connect() {
  if (view.stream) view.stream.close();
  const topics = ["changes"];
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
  stream.onmessage = (event) => onFrame(JSON.parse(event.data));
}

function togglePause() {
  view.paused = !view.paused;
  $("pause").textContent = view.paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(view.paused));
  if (!view.paused && view.waiting) {
    view.waiting = false;
    $("pending").textContent = "";
    loadPage();
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
  const proc = view.tree.get(view.selected) || view.rows.find((p) => p.processId === view.selected);
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
// The session is an HttpOnly cookie the server sets (POST api/session) and clears
// (DELETE api/session): this script never sees a token after the form sends it. The
// EventSource sends the cookie too (same origin), so the streams need no ticket.
async function checkAuth() {
  if (await probeRole() === "sign-in") $("login").hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  const answer = await api("api/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  if (!answer.ok) {
    $("login-result").textContent = answer.body.message || `sign-in refused (${answer.status})`;
    return;
  }
  $("token").value = "";
  $("login-result").textContent = "";
  $("login").hidden = true;
  boot();
}

// A reload after the cookie is cleared stops every stream and poll, and shows the form.
async function signOut() {
  await api("api/session", { method: "DELETE" });
  location.reload();
}

$("sign-out").addEventListener("click", signOut);

// Controls are hidden (body.read-only) until the role is known, and for a viewer.
async function boot() {
  if (await probeRole() === "sign-in") {
    $("login").hidden = false;
    $("token").focus();
    return;
  }
  connect();
  loadPage();  // beside the stream's start, not after it (its reset reads it again)
  if (!view.started) {
    view.started = true;
    startHistory();
    startFleet();
  }
}

// ------------------------------------------------------------------ start
initTheme();
setRole(null);
let typing = null;
$("state-filter").addEventListener("change", firstPage);
$("search").addEventListener("input", () => {  // read once the typing pauses
  updateBulk();  // at once: bulk cancel cannot filter by the search
  clearTimeout(typing);
  typing = setTimeout(firstPage, 250);
});
$("show-children").addEventListener("change", firstPage);
$("pause").addEventListener("click", togglePause);
$("prev").addEventListener("click", () => {
  view.page -= 1;
  view.starts.length = view.page + 1;
  loadPage();
});
$("next").addEventListener("click", () => {
  if (view.nextCursor === null) return;
  view.starts.push(view.nextCursor);
  view.page += 1;
  loadPage();
});
$("bulk-cancel").addEventListener("click", bulkCancel);
$("resync").addEventListener("click", resync);
for (const verb of VERBS) $(verb).addEventListener("click", () => command(verb));
$("runs-of").addEventListener("click", () => historyOf(view.selected));
$("close-detail").addEventListener("click", closeTree);
$("login-form").addEventListener("submit", signIn);
onWorkers(updateControls);
setInterval(() => {  // live elapsed times between frames
  for (const cell of document.querySelectorAll("#rows tr")) {
    const proc = view.rows.find((p) => p.processId === cell.dataset.id);
    if (proc) cell.querySelector(".elapsed").textContent = elapsed(proc);
  }
  for (const row of view.tree.values()) {
    const node = document.querySelector(`#tree li[data-id="${CSS.escape(row.processId)}"] .elapsed`);
    if (node) node.textContent = elapsed(row);
  }
  tickFleet();
}, 1000);
boot();
