// Finished runs from the store (GET api/history): the history panel, and the overview's
// throughput and recent failures. Refreshed when the stream shows a process ending, and
// every 30 s so the throughput's window slides; never more than once per 3 s.
import { $, el, api, badge, clock, ago, seconds, every, TERMINAL } from "./util.js";

const PAGE = 20;
const WINDOW_MINUTES = 5;
const THROUGHPUT_CAP = 500; // runs fetched to count the window: "500+" past it

// starts: the cursor of each page's start (null: the newest), so pages go back and forth
// by cursor and runs recorded meanwhile do not shift an older page.
const history = { page: 0, starts: [null], next: null, items: [], selected: null, asked: 0 };

// ------------------------------------------------------------------ the panel
async function loadHistory() {
  const params = new URLSearchParams();
  const processId = $("history-process").value.trim();
  const status = $("history-status").value;
  if (processId) params.set("processId", processId);
  if (status) params.set("status", status);
  params.set("limit", String(PAGE));
  const start = history.starts[history.page];
  if (start !== null) params.set("cursor", start);
  const asked = ++history.asked;
  const answer = await api(`api/history?${params}`);
  if (asked !== history.asked) return;  // a newer filter or page was asked meanwhile
  if (!answer.ok) {
    $("history-note").textContent = `history unavailable: ${answer.body.message || answer.status}`;
    return;
  }
  $("history-note").textContent = "";
  history.next = answer.body.nextCursor;
  history.items = answer.body.items;
  renderHistory();
}

function firstHistoryPage() {
  history.page = 0;
  history.starts = [null];
}

function runLabel(run) {
  return run.processId ? `${run.processId} #${run.runNumber ?? "?"}` : run.kind;
}

function outcome(run) {
  if (run.error) return run.error;
  if (run.cancelReason) return `${run.cancelReason}${run.cancelMessage ? `: ${run.cancelMessage}` : ""}`;
  return "";
}

function renderHistory() {
  $("history-rows").replaceChildren(...history.items.map((run) => {
    const row = el("tr", {
      "data-index": String(run.index),
      class: history.selected && history.selected.index === run.index ? "selected" : "",
    },
      el("td", { title: run.endedAt || "" }, clock(run.endedAt)),
      el("td", {}, run.name, el("br"), el("small", {}, runLabel(run))),
      el("td", {}, badge(run.status, "status")),
      el("td", {}, seconds(run.duration)),
      el("td", { class: "run-outcome" }, outcome(run)));
    row.addEventListener("click", () => showRun(run));
    return row;
  }));
  if (!history.items.length) {
    $("history-rows").append(el("tr", { class: "empty" }, el("td", { colSpan: 5 }, "no finished runs")));
  }
  $("history-page").textContent = `page ${history.page + 1}`;
  $("history-prev").disabled = history.page === 0;
  $("history-next").disabled = history.next === null;
}

export function showRun(run) {
  history.selected = run;
  $("run-title").textContent = `${run.name} · ${runLabel(run)}`;
  const facts = [
    ["status", run.status],
    ["started", run.startedAt ? new Date(run.startedAt).toLocaleString() : ""],
    ["ended", run.endedAt ? new Date(run.endedAt).toLocaleString() : ""],
    ["duration", seconds(run.duration)],
    ["cancelled by", run.cancelReason ? `${run.cancelReason}${run.cancelMessage ? ` – ${run.cancelMessage}` : ""}` : null],
    ["operation", run.operationId],
  ].filter(([, value]) => value);
  $("run-facts").replaceChildren(...facts.flatMap(([key, value]) => [el("dt", {}, key), el("dd", {}, value)]));
  $("run-error").textContent = run.error || "";
  $("run-error").hidden = !run.error;
  $("run-traceback").textContent = run.traceback || "";
  $("run-traceback").hidden = !run.traceback;
  const result = run.result === null || run.result === undefined ? "" : JSON.stringify(run.result, null, 2);
  $("run-result").textContent = result;
  $("run-result").hidden = !result;
  $("run-detail").hidden = false;
  for (const row of document.querySelectorAll("#history-rows tr")) {
    row.classList.toggle("selected", row.dataset.index === String(run.index));
  }
}

function closeRun() {
  history.selected = null;
  $("run-detail").hidden = true;
  renderHistory();
}

// Show a process's runs: from the detail of a process.
export function historyOf(processId) {
  $("history-process").value = processId;
  $("history-status").value = "";
  firstHistoryPage();
  panelPoll.now();
  $("history").scrollIntoView({ behavior: "smooth", block: "start" });
}

// ------------------------------------------------------------------ the overview
// The history is newest-finished first, so the runs that ended in the window are a prefix
// of it: a first small page, and a larger one only when all of the first ended within it.
async function finishedWithin(since) {
  const inWindow = (runs) => runs.filter((run) => run.endedAt && Date.parse(run.endedAt) >= since);
  let answer = await api("api/history?limit=50");
  if (answer.ok && answer.body.items.length === 50 && inWindow(answer.body.items).length === 50) {
    answer = await api(`api/history?limit=${THROUGHPUT_CAP}`);
  }
  return answer.ok ? inWindow(answer.body.items) : null;
}

async function loadOverview() {
  const since = Date.now() - WINDOW_MINUTES * 60 * 1000;
  const [runs, failed] = await Promise.all([finishedWithin(since), api("api/history?status=failed&limit=5")]);
  if (runs !== null) {
    const byStatus = {};
    for (const run of runs) byStatus[run.status] = (byStatus[run.status] || 0) + 1;
    $("throughput").textContent = runs.length >= THROUGHPUT_CAP ? `${THROUGHPUT_CAP}+` : String(runs.length);
    $("throughput-detail").textContent = Object.keys(byStatus).length
      ? `(${Object.entries(byStatus).map(([status, n]) => `${n} ${status}`).join(", ")})` : "";
  }
  if (failed.ok) {
    $("recent-failures").replaceChildren(...failed.body.items.map((run) => {
      const item = el("li", { "data-index": String(run.index) },
        el("button", { type: "button", class: "link" }, run.name),
        " ", el("small", {}, ago(run.endedAt)), " ", el("span", { class: "error" }, run.error || ""));
      item.querySelector("button").addEventListener("click", () => {
        showRun(run);
        $("run-detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
      });
      return item;
    }));
    $("recent-failures-none").hidden = failed.body.items.length > 0;
  }
}

// ------------------------------------------------------------------ refreshing
const panelPoll = every(30000, loadHistory);
const overviewPoll = every(30000, loadOverview);
let lastRefresh = 0;
let pending = null;

function refresh() {
  pending = null;
  lastRefresh = Date.now();
  overviewPoll.now();
  if (history.page === 0) panelPoll.now();  // an older page does not move under the reader
}

// Called with the rows of every change: a process that ended means a new run to show.
export function onProcesses(processes) {
  if (!processes.some((p) => TERMINAL.has(p.status.state))) return;
  if (pending !== null) return;
  pending = setTimeout(refresh, Math.max(0, 3000 - (Date.now() - lastRefresh)));
}

export function startHistory() {
  $("history-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    firstHistoryPage();
    panelPoll.now();
  });
  $("history-status").addEventListener("change", () => { firstHistoryPage(); panelPoll.now(); });
  $("history-prev").addEventListener("click", () => {
    history.page -= 1;
    history.starts.length = history.page + 1;
    panelPoll.now();
  });
  $("history-next").addEventListener("click", () => {
    if (history.next === null) return;
    history.starts.push(history.next);
    history.page += 1;
    panelPoll.now();
  });
  $("close-run").addEventListener("click", closeRun);
  lastRefresh = Date.now();
  panelPoll.now();
  overviewPoll.now();
}
