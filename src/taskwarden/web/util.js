// Shared by the dashboard's modules: building elements (text only, never HTML), times,
// progress bars, the API's fetch, the role (api/whoami), the question dialog and the theme.

export const TERMINAL = new Set(["done", "failed", "cancelled"]);
export const $ = (id) => document.getElementById(id);

// Every value goes in as a text node or a property: data never becomes markup.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 60) return `${value.toFixed(value < 10 ? 1 : 0)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.floor(value % 60)} s`;
  return `${Math.floor(value / 3600)} h ${Math.floor((value % 3600) / 60)} min`;
}

export function ago(iso) {
  if (!iso) return "";
  return `${seconds(Math.max(0, (Date.now() - Date.parse(iso)) / 1000))} ago`;
}

export function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

export function progressBar(percent, active) {
  const bar = el("progress", { max: 100 });
  if (percent !== null && percent !== undefined) bar.value = percent;
  else if (!active) bar.value = 0;  // indeterminate only while it runs
  return bar;
}

export function badge(value, kind = "state") {
  return el("span", { class: `${kind} ${kind}-${value}`, "data-state": value }, value);
}

// ------------------------------------------------------------------ the API
// {ok, status, body}: the body parsed when it is JSON, else {}.
export async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    return { ok: false, status: 0, body: { message: String(error) } };
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 403 && options && options.method === "POST") setRole("viewer");
  return { ok: response.ok, status: response.status, body };
}

export function refusal(verb, answer) {
  const body = answer.body || {};
  return `${verb} refused: ${body.reason || answer.status} – ${body.message || ""}`;
}

// ------------------------------------------------------------------ the role
// The page learns its role from GET api/whoami: {role, via}; a 401 means a sign-in is
// needed. "Sign out" shows only for a session (via "session"): a header, an open API or
// the host's own check leave nothing to sign out of.
export const session = { role: null, via: null };

export function setRole(role, via = session.via) {
  session.role = role;
  session.via = via;
  document.body.classList.toggle("read-only", role !== "operator");
  const signOut = $("sign-out");
  if (signOut) signOut.hidden = via !== "session";
}

// "operator", "viewer", "sign-in" (401), or null when the server did not answer.
export async function probeRole() {
  const answer = await api("api/whoami");
  if (answer.status === 401) {
    setRole(null, null);
    return "sign-in";
  }
  if (!answer.ok) return null;
  setRole(answer.body.role, answer.body.via);
  return answer.body.role;
}

// ------------------------------------------------------------------ asking first
// A modal question with an optional reason: resolves {ok, reason}.
export function ask(text, { reason = false, okLabel = "OK" } = {}) {
  const dialog = $("ask");
  $("ask-text").textContent = text;
  $("ask-reason-row").hidden = !reason;
  $("ask-reason").value = "";
  $("ask-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve({ ok: dialog.returnValue === "ok", reason: $("ask-reason").value.trim() });
    }, { once: true });
    dialog.showModal();
    (reason ? $("ask-reason") : $("ask-ok")).focus();
  });
}

export const asking = () => $("ask").open;

// ------------------------------------------------------------------ the theme
const THEMES = ["auto", "light", "dark"];

function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $("theme").textContent = `theme: ${theme}`;
}

export function initTheme() {
  let theme = "auto";
  try { theme = localStorage.getItem("taskwarden.theme") || "auto"; } catch { /* private mode */ }
  applyTheme(THEMES.includes(theme) ? theme : "auto");
  $("theme").addEventListener("click", () => {
    const current = document.documentElement.dataset.theme || "auto";
    const next = THEMES[(THEMES.indexOf(current) + 1) % THEMES.length];
    try { localStorage.setItem("taskwarden.theme", next); } catch { /* private mode */ }
    applyTheme(next);
  });
}

// A poll that never overlaps itself and rests while the tab is hidden, while a dialog is
// open and, given a panel to watch, while that panel is scrolled out of view; now() runs
// it at once (or right after the run in flight).
export function every(ms, run, { watch = null } = {}) {
  let timer = null;
  let running = false;
  let again = false;
  let stopped = false;
  let started = false;
  let inView = true;
  const tick = async () => {
    clearTimeout(timer);
    timer = null;
    if (stopped) return;
    started = true;
    if (running) { again = true; return; }
    running = true;
    try {
      if (document.visibilityState !== "hidden" && !asking() && inView) await run();
    } catch (error) {
      console.error(error);
    }
    running = false;
    if (stopped) return;
    if (again) { again = false; tick(); return; }
    timer = setTimeout(tick, ms);
  };
  document.addEventListener("visibilitychange", () => {
    if (started && document.visibilityState === "visible") tick();
  });
  if (watch && "IntersectionObserver" in window) {
    inView = false;  // until the observer's first report, which comes at once
    new IntersectionObserver((entries) => {
      const was = inView;
      inView = entries.some((entry) => entry.isIntersecting);
      if (inView && !was && started) tick();
    }).observe(watch);
  }
  return { now: tick, stop: () => { stopped = true; clearTimeout(timer); } };
}
