// The fleet: its workers (GET api/workers, every 5 s), the supervised tasks (GET
// api/supervisor, every 10 s; the panel stays hidden when the server has no supervisor)
// and the live operations of every node (GET api/operations, every 3 s while the panel is
// in view), with a cancel per operation. Polls rest while the tab is hidden and while a
// dialog is open.
import { $, el, api, ask, badge, progressBar, refusal, seconds, every } from "./util.js";

const MAX_OPERATIONS = 300;  // drawn per refresh; the rest is counted, not drawn
const ACTIVE = new Set(["pending", "running"]);

const fleet = { workers: null, workersAt: 0, operations: [], operationsAt: 0 };
const listeners = [];

// ------------------------------------------------------------------ workers
function workerStatus(worker) {
  return ["ok", "stale"].includes(worker.status) ? worker.status : "unknown";
}

function lastSeen(worker) {
  if (worker.secondsSince === null || worker.secondsSince === undefined) return "never";
  return `${seconds(worker.secondsSince + (Date.now() - fleet.workersAt) / 1000)} ago`;
}

async function loadWorkers() {
  const answer = await api("api/workers");
  if (!answer.ok) {
    $("workers-summary").textContent = `workers unavailable: ${answer.body.message || answer.status}`;
    return;
  }
  fleet.workers = answer.body.items;
  fleet.workersAt = Date.now();
  renderWorkers();
  for (const listener of listeners) listener();
}

function renderWorkers() {
  const workers = fleet.workers || [];
  const counts = { ok: 0, stale: 0, unknown: 0 };
  for (const worker of workers) counts[workerStatus(worker)] += 1;
  $("workers-summary").textContent = workers.length
    ? Object.entries(counts).filter(([, n]) => n).map(([status, n]) => `${n} ${status}`).join(" · ")
    : "no worker records in the store";
  $("worker-rows").replaceChildren(...workers.map((worker) => el("tr", { "data-incarnation": worker.incarnation },
    el("td", {}, worker.name, el("br"), el("small", {}, worker.incarnation)),
    el("td", {}, badge(workerStatus(worker), "worker")),
    el("td", { class: "last-seen", title: worker.renewedAt || "" }, lastSeen(worker)),
    el("td", {}, `${worker.host}:${worker.pid}`),
    el("td", { title: (worker.processIds || []).join(", ") },
      `${worker.runs}${worker.concurrency ? ` / ${worker.concurrency}` : ""}`))));
}

// Whether a live worker serves the process: null when the store has no worker records
// (an engine in the server itself may still serve it), else true or false.
export function servedBy(processId) {
  if (!fleet.workers || fleet.workers.length === 0) return null;
  return fleet.workers.some((w) => workerStatus(w) === "ok" && (w.processIds || []).includes(processId));
}

export function onWorkers(listener) {
  listeners.push(listener);
}

// ------------------------------------------------------------------ supervised tasks
async function loadSupervisor() {
  const answer = await api("api/supervisor");
  if (answer.status === 404) {  // this server has no supervisor: nothing to show, ever
    $("supervisor").hidden = true;
    supervisorPoll.stop();
    return;
  }
  $("supervisor").hidden = false;
  if (!answer.ok) {
    $("supervisor-summary").textContent = `supervisor unavailable: ${answer.body.message || answer.status}`;
    return;
  }
  const stats = answer.body.statistics || {};
  $("supervisor-summary").textContent =
    `${stats.state ?? "?"} · ${stats.healthy_tasks ?? 0} of ${stats.total_tasks ?? 0} healthy · ${stats.total_restarts ?? 0} restarts`;
  $("supervisor-rows").replaceChildren(...answer.body.tasks.map((task) => {
    const health = task.health || {};
    const metrics = task.metrics || {};
    const problems = (health.problems || []).join("; ");
    return el("tr", { "data-task": task.name },
      el("td", {}, task.name, el("br"), el("small", {}, metrics.category || "")),
      el("td", {}, badge(health.is_healthy ? "healthy" : "unhealthy", "health"), " ", health.state || ""),
      el("td", {}, seconds(health.uptime)),
      el("td", {}, String(metrics.runs ?? 0)),
      el("td", {}, `${health.restarts_in_window ?? 0} / ${health.restart_count ?? 0}`),
      el("td", {}, `${((health.error_rate || 0) * 100).toFixed(0)} %`),
      el("td", { class: "error" }, [problems, metrics.last_error].filter(Boolean).join(" · ")));
  }));
}

// ------------------------------------------------------------------ live operations
async function loadOperations() {
  const answer = await api("api/operations");
  if (!answer.ok) {
    $("ops-summary").textContent = `operations unavailable: ${answer.body.message || answer.status}`;
    return;
  }
  fleet.operations = answer.body.items;
  fleet.operationsAt = Date.now();
  renderOperations();
}

function count(operations) {
  return operations.reduce((n, op) => n + 1 + count(op.children || []), 0);
}

function opElapsed(op) {
  const extra = ACTIVE.has(op.status) ? (Date.now() - fleet.operationsAt) / 1000 : 0;
  return seconds((op.elapsed || 0) + extra);
}

function opItem(op, node, budget) {
  budget.left -= 1;
  const cancel = op.cancelReason
    ? el("span", { class: "cancel-reason" }, `cancelled (${op.cancelReason})${op.cancelMessage ? `: ${op.cancelMessage}` : ""}`)
    : null;
  const head = el("div", { class: "node" },
    el("b", {}, op.name), el("small", {}, op.kind), badge(op.status, "status"),
    progressBar(op.progress && op.progress.percent, op.status === "running"),
    el("span", { class: "message" }, (op.progress && op.progress.message) || ""),
    el("span", { class: "elapsed", "data-elapsed": "" }, opElapsed(op)), cancel);
  if (ACTIVE.has(op.status) && !op.cancelReason) {
    const button = el("button", { type: "button", class: "op-cancel operator-only" }, "Cancel…");
    button.addEventListener("click", () => cancelOperation(op, node));
    head.append(button);
  }
  const item = el("li", { "data-op-id": op.id }, head);
  item.tick = () => { item.querySelector(".elapsed").textContent = opElapsed(op); };
  const children = [];
  for (const child of op.children || []) {
    if (budget.left <= 0) break;
    children.push(opItem(child, node, budget));
  }
  if (children.length) item.append(el("ul", {}, ...children));
  return item;
}

function renderOperations() {
  const budget = { left: MAX_OPERATIONS };
  let total = 0;
  const nodes = fleet.operations.map((node) => {
    const operations = node.operations || [];
    total += count(operations);
    const state = node.ok
      ? el("span", { class: "muted" }, `${node.active ?? 0} active`)
      : el("span", { class: "error" }, `unreachable: ${node.error || "no answer"}`);
    const item = el("li", { class: "ops-node", "data-node": node.node },
      el("div", { class: "ops-head" }, el("b", {}, node.name || node.node), el("small", {}, node.node), state));
    const drawn = [];
    for (const op of operations) {
      if (budget.left <= 0) break;
      drawn.push(opItem(op, node, budget));
    }
    if (drawn.length) item.append(el("ul", {}, ...drawn));
    else if (node.ok) item.append(el("p", { class: "muted" }, "nothing runs"));
    return item;
  });
  $("ops-tree").replaceChildren(...nodes);
  const shown = MAX_OPERATIONS - budget.left;
  $("ops-summary").textContent = `${total} live operation${total === 1 ? "" : "s"} on ${nodes.length} node${nodes.length === 1 ? "" : "s"}`
    + (shown < total ? ` (showing the first ${shown})` : "");
}

async function cancelOperation(op, node) {
  const where = node.node === "local" ? "this server" : `${node.name || ""} (${node.node})`;
  const answer = await ask(`Cancel the operation “${op.name}” (${op.kind}) on ${where}? Its children stop with it.`,
    { reason: true, okLabel: "Cancel operation" });
  if (!answer.ok) {
    $("ops-result").textContent = "cancel not sent: not confirmed";
    return;
  }
  const params = new URLSearchParams({ worker: node.node });
  if (answer.reason) params.set("reason", answer.reason);
  const sent = await api(`api/operations/${encodeURIComponent(op.id)}/cancel?${params}`, { method: "POST" });
  $("ops-result").textContent = sent.ok ? `cancel sent: ${op.name}` : refusal("cancel", sent);
  opsPoll.now();
}

// ------------------------------------------------------------------ start
const workersPoll = every(5000, loadWorkers);
const supervisorPoll = every(10000, loadSupervisor);
// Each poll of the operations asks every worker over the bus: only while the panel shows.
const opsPoll = every(3000, loadOperations, { watch: $("operations") });

export function startFleet() {
  workersPoll.now();
  supervisorPoll.now();
  opsPoll.now();
}

export function tickFleet() {
  for (const cell of document.querySelectorAll("#worker-rows tr")) {
    const worker = (fleet.workers || []).find((w) => w.incarnation === cell.dataset.incarnation);
    if (worker) cell.querySelector(".last-seen").textContent = lastSeen(worker);
  }
  for (const item of document.querySelectorAll("#ops-tree li[data-op-id]")) if (item.tick) item.tick();
}
