// everruns web UI: vanilla JS, no build. Everything goes through the public /v1 API.
import { renderMarkdown } from "./markdown.js";
import { VERB_EVENTS, mountVerbs, renderVerbEvent, verbStatus } from "./verbs.js";
import { cacheHits } from "./cache.js";
import { agentsPage } from "./agents.js";
import { childrenPanel, costText, fetchPages, renderRunRows } from "./tree.js";
import { approvalsBar, boundaryTracker, countdown, failedOutput, follower, startCountdowns } from "./live.js";
import { attentionPanel } from "./health.js";
import { budgetCard } from "./budgets.js";

const TOKEN_KEY = "everruns.token";
const STATUSES = ["queued", "running", "waiting", "paused", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TERMINAL_EVENTS = new Set(["run.completed", "run.failed", "run.cancelled"]);
// A framework run's loop is the framework's (engine/framework.py): named on its run.started.
const FRAMEWORKS = { pydantic_ai: "Pydantic AI", openai_agents: "OpenAI Agents SDK" };
// SSE `event:` names; unknown future types are still filled in from the JSON journal (seq gaps).
const EVENT_TYPES = [
  "run.created", "run.started", "run.waiting", "run.completed", "run.failed", "run.cancelled",
  "run.paused", "run.resumed", "run.forked", "message.user", "llm.started", "llm.completed",
  "llm.failed", "llm.fallback", "tool.started", "tool.completed", "tool.failed", "tool.waiting",
  "approval.requested", "approval.granted", "approval.denied", "compaction.started",
  "context.compacted", "child.finished", "tool.retrying",
];
const LIST_POLL_MS = 2000;
const LONG_OUTPUT_CHARS = 400;
const LONG_OUTPUT_LINES = 8;

export const main = document.getElementById("main");

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function put(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

// ------------------------------------------------------------------ formatting

function fmtAge(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function fmtIn(ts) {
  const s = ts - Date.now() / 1000;
  if (s <= 0) return "now";
  if (s < 60) return `in ${Math.ceil(s)} s`;
  if (s < 3600) return `in ${Math.round(s / 60)} min`;
  return `in ${(s / 3600).toFixed(1)} h`;
}

function fmtTime(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString([], { hour12: false }) : "–";
}

function fmtDateTime(ts) {
  return ts ? new Date(ts * 1000).toLocaleString([], { hour12: false }) : "–";
}

function fmtInt(n) {
  return Number(n || 0).toLocaleString("en-US");
}

function fmtCost(usd) {
  const v = Number(usd || 0);
  if (v === 0) return "$0.00";
  if (v < 0.0001) return "<$0.0001";
  if (v < 1) return `$${v.toFixed(4)}`;
  return `$${v.toFixed(2)}`;
}

function timeEl(ts, text) {
  return h("time", { datetime: new Date(ts * 1000).toISOString(), title: fmtDateTime(ts) }, text);
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

function collapsible(text, label = "Result") {
  const value = String(text ?? "");
  const lines = value.split("\n").length;
  if (value.length <= LONG_OUTPUT_CHARS && lines <= LONG_OUTPUT_LINES) {
    return h("pre", {}, value);
  }
  return h(
    "details",
    {},
    h("summary", {}, `${label}: ${fmtInt(value.length)} characters, ${fmtInt(lines)} lines`),
    h("pre", {}, value),
  );
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, detail, data = null) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.data = data; // the problem details (with `errors` naming fields), when any
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (res.status === 401) {
    showLogin(token() ? "That token was not accepted. Enter a valid API token." : null);
    throw new ApiError(401, data?.detail || "unauthorized");
  }
  if (!res.ok) throw new ApiError(res.status, data?.detail || data?.title || res.statusText, data);
  return data;
}

// Run `fn` now and every `ms` until stopped; errors other than 401 are shown once.
function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  let failing = false;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
      failing = false;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401) && !failing && !stopped) {
        failing = true;
        toast(`Could not refresh: ${err.message}`, "error");
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

async function act(promise, done) {
  try {
    const result = await promise;
    if (done) done(result);
    return result;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) toast(err.message, "error");
    return null;
  }
}

// ------------------------------------------------------------------ router

let cleanup = null;
let loginShown = false;

function stopPage() {
  if (cleanup) cleanup();
  cleanup = null;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/runs";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function route() {
  stopPage();
  loginShown = false;
  const { parts, params } = parseHash();
  const section = parts[0] || "runs";
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("signout").hidden = !token();
  put(main);
  if (section === "runs" && parts[1]) cleanup = runPage(parts[1]);
  else if (section === "runs") cleanup = runsPage(params);
  else if (section === "approvals") cleanup = approvalsPage();
  else if (section === "agents") cleanup = agentsPage(parts[1] || null, params);
  else if (section === "workers") cleanup = workersPage();
  else {
    document.title = "Not found · everruns";
    main.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/runs" }, "Back to runs")));
  }
}

function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

// ------------------------------------------------------------------ login

function showLogin(message) {
  if (loginShown) return;
  loginShown = true;
  stopPage();
  document.title = "Sign in · everruns";
  const error = h("p", { class: "muted", id: "login-error", role: "alert" }, message || "");
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    "aria-describedby": "login-help login-error",
  });
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        localStorage.setItem(TOKEN_KEY, input.value.trim());
        loginShown = false;
        route();
      },
    },
    h("div", { class: "field" }, h("label", { for: "token" }, "API token"), input),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  put(main,
    h(
      "section",
      { class: "card login", "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, "Sign in"),
      h(
        "p",
        { id: "login-help", class: "muted" },
        "This server requires an API token. Create one with ",
        h("code", {}, "everruns token create --name ui"),
        "; it is kept in this browser only.",
      ),
      error,
      form,
    ),
  );
  input.focus();
}

document.getElementById("signout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  route();
});

// ------------------------------------------------------------------ runs list

function runsPage(params) {
  document.title = "Runs · everruns";
  const filters = {
    status: params.get("status") || "",
    agent: params.get("agent") || "",
    q: params.get("q") || "",
  };
  let pages = 1; // pages of 50 shown, each fetched with the cursor of the one before
  const collapsed = new Set();
  let lastItems = [];
  const statusSel = h(
    "select",
    { id: "f-status", name: "status" },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)),
  );
  const agentSel = h("select", { id: "f-agent", name: "agent" }, h("option", { value: "" }, "All agents"));
  const search = h("input", {
    id: "f-q",
    name: "q",
    type: "search",
    placeholder: "Run id, input or result",
    value: filters.q,
    autocomplete: "off",
  });
  const tbody = h("tbody");
  const summary = h("span", { id: "runs-summary", "aria-live": "polite" });
  const more = h("button", { type: "button", class: "small", hidden: true }, "Show more");
  main.append(
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Runs"), h("p", { class: "muted" }, "Every run, live: the list refreshes every 2 seconds.")),
    ),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "f-status" }, "Status"), statusSel),
      h("div", { class: "field" }, h("label", { for: "f-agent" }, "Agent"), agentSel),
      h("div", { class: "field grow" }, h("label", { for: "f-q" }, "Search"), search),
    ),
    h(
      "div",
      { class: "card table-card" },
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "runs-table stack-table" },
          h("caption", { class: "visually-hidden" }, "Runs, newest first"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "Run"),
              h("th", { scope: "col" }, "Agent"),
              h("th", { scope: "col" }, "Status"),
              h("th", { scope: "col" }, "Age"),
              h("th", { scope: "col", class: "num" }, "Steps"),
              h("th", { scope: "col", class: "num" }, "Tokens"),
              h("th", { scope: "col", class: "num" }, "Cost"),
            ),
          ),
          tbody,
        ),
      ),
      h("div", { class: "list-foot" }, summary, more),
    ),
  );
  focusHeading();

  let agentsKnown = new Set();
  const loadAgents = async () => {
    const agents = await api("/v1/agents");
    const names = agents.map((a) => a.name);
    if (filters.agent && !names.includes(filters.agent)) names.push(filters.agent);
    const next = new Set(names);
    if (next.size === agentsKnown.size && [...next].every((n) => agentsKnown.has(n))) return;
    agentsKnown = next;
    put(agentSel,
      h("option", { value: "" }, "All agents"),
      [...next].sort().map((n) => h("option", { value: n, selected: n === filters.agent }, n)),
    );
  };

  const syncHash = () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const text = q.toString();
    history.replaceState(null, "", `#/runs${text ? `?${text}` : ""}`);
  };

  let generation = 0;
  const refresh = async () => {
    const mine = ++generation;
    const query = { limit: "50" };
    for (const [k, v] of Object.entries(filters)) if (v) query[k] = v;
    const { items, more: hasMore } = await fetchPages(query, pages);
    if (mine !== generation) return; // a newer request (filter change) won
    lastItems = items;
    renderRows();
    summary.textContent = `${items.length} run${items.length === 1 ? "" : "s"} shown`;
    more.hidden = !hasMore;
  };

  const renderRows = () => renderRunRows(tbody, lastItems, collapsed,
    filters.status || filters.agent || filters.q
      ? "No runs match these filters."
      : "No runs yet. Start one from Agents, the CLI (everruns start) or POST /v1/runs.",
    renderRows);

  const changed = () => {
    filters.status = statusSel.value;
    filters.agent = agentSel.value;
    filters.q = search.value.trim();
    pages = 1;
    syncHash();
    refresh().catch(() => {});
  };
  statusSel.addEventListener("change", changed);
  agentSel.addEventListener("change", changed);
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(changed, 250);
  });
  more.addEventListener("click", () => {
    pages += 1;
    refresh().catch(() => {});
  });

  let ticks = 0;
  const stop = poll(async () => {
    if (ticks++ % 15 === 0) await loadAgents();
    await refresh();
  }, LIST_POLL_MS);
  return () => {
    stop();
    clearTimeout(debounce);
  };
}

// ------------------------------------------------------------------ run page

function runPage(runId) {
  document.title = `Run ${runId} · everruns`;
  const st = {
    lastSeq: 0,
    status: null,
    row: null,
    steps: 0,
    usage: { input: 0, output: 0, cost: 0, calls: 0, cached: 0 },
    llm: { inFlight: false, attempt: 0, item: null, text: null },
    approvals: new Map(), // call_id -> approval box, while pending
    lastWorker: null,
    es: null,
    stopped: false,
    retryTimer: null,
    backoff: 1000,
    filling: null,
    needFill: false,
    result: null,
    error: null,
    boundary: boundaryTracker(), // which events a fork may start from
  };

  // ---- skeleton
  const title = h("h1", { id: "run-title" }, "Run");
  const statusBox = h("span", { id: "run-status", "aria-live": "polite" });
  const conn = h("span", { class: "conn", id: "conn", "data-state": "connecting" }, "connecting");
  const meta = h("div", { class: "run-meta" });
  const stats = {
    steps: h("dd", { id: "stat-steps" }, "0"),
    tokens: h("dd", { id: "stat-tokens" }, "0"),
    cost: h("dd", { id: "stat-cost" }, "$0.00"),
    calls: h("dd", { id: "stat-calls" }, "0"),
    cache: h("dd", { id: "stat-cache" }, "–"),
  };
  const btnCancel = h("button", { type: "button", class: "danger", id: "btn-cancel" }, "Cancel");
  const btnPause = h("button", { type: "button", id: "btn-pause" }, "Pause");
  const btnResume = h("button", { type: "button", id: "btn-resume" }, "Resume");
  const resultCard = h("section", { class: "card result", id: "result", hidden: true, "aria-labelledby": "result-title" });
  const timeline = h("ol", { class: "timeline", id: "timeline", "aria-label": "Journal events" });
  const message = h("textarea", { id: "message", name: "content", rows: 2, required: true, placeholder: "Ask a follow-up or give new instructions" });
  const sendBtn = h("button", { type: "submit", class: "primary" }, "Send");
  const budget = budgetCard({ h, api, toast, fmtCost, fmtInt }, runId);
  const pending = approvalsBar();
  // The run's own share of its tree's totals: what the page shows, which is fresher than the row.
  const children = childrenPanel(runId, () => st.row && { ...st.row, usage: st.shown || st.row.usage });
  const follow = follower(timeline, () => !TERMINAL.has(st.status));

  main.append(
    pending.bar,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/runs" }, "Runs"), " / ", h("span", { class: "mono" }, runId)),
    h(
      "div",
      { class: "run-layout" },
      h("header", { class: "run-head" },
        h("div", { class: "run-title" }, title, statusBox, conn),
        meta),
      h(
        "div",
        { class: "run-main" },
        resultCard,
        children.card,
        h("section", { class: "card", "aria-labelledby": "tl-title" }, h("h2", { id: "tl-title" }, "Timeline"), timeline),
        window.everrunsFiles ? window.everrunsFiles.card(runId, { h, token }) : null,
        h(
          "section",
          { class: "card composer", "aria-labelledby": "composer-title" },
          h("h2", { id: "composer-title" }, "Send a message"),
          h(
            "form",
            { onsubmit: (e) => { e.preventDefault(); sendMessage(); } },
            h("label", { for: "message", class: "visually-hidden" }, "Message to the agent"),
            message,
            h("div", { class: "row", id: "composer-row" }, sendBtn),
          ),
        ),
      ),
      h(
        "aside",
        { class: "run-side", "aria-label": "Run summary" },
        h(
          "section",
          { class: "card", "aria-labelledby": "usage-title" },
          h("h2", { id: "usage-title" }, "Usage so far"),
          h("dl", { class: "stats" },
            h("div", {}, h("dt", {}, "Cost"), stats.cost),
            h("div", {}, h("dt", {}, "Tokens"), stats.tokens),
            h("div", {}, h("dt", {}, "Steps"), stats.steps),
            h("div", {}, h("dt", {}, "LLM calls"), stats.calls),
            h("div", {}, h("dt", {}, "Cache hits"), stats.cache)),
        ),
        h(
          "section",
          { class: "card", "aria-labelledby": "actions-title" },
          h("h2", { id: "actions-title" }, "Actions"),
          h("div", { class: "actions" }, btnPause, btnResume, btnCancel),
        ),
        budget.card,
      ),
    ),
  );

  // Steer, interrupt, the grader's verdict and webhook deliveries (verbs.js).
  const verbs = mountVerbs(runId, { h, api, act, toast }, {
    message,
    composerRow: main.querySelector("#composer-row"),
    actions: main.querySelector(".run-side .actions"),
    side: main.querySelector(".run-side"),
    onChange: () => refreshRow().then(() => connect()).catch(() => {}),
  });

  // ---- header, stats and buttons
  const renderHead = () => {
    const row = st.row;
    const status = st.status || row?.status || "queued";
    put(statusBox, badge(status), window.everrunsProgress?.bar(st.progress || row?.progress, h));
    if (row) {
      put(title, row.agent, h("span", { class: "muted" }, ` v${row.agent_version}`));
      document.title = `${row.agent} · ${status} · everruns`;
      put(meta,
        h("span", {}, "created ", timeEl(row.created_at, fmtDateTime(row.created_at))),
        row.lease_owner
          ? h("span", { id: "run-worker" }, status === "running" ? "worker " : "last worker ", h("span", { class: "mono" }, row.lease_owner))
          : null,
        h("span", {}, `epoch ${row.epoch}`),
        row.parent_id ? h("span", {}, "parent ", h("a", { href: `#/runs/${encodeURIComponent(row.parent_id)}`, class: "mono" }, row.parent_id)) : null,
      );
    }
    const terminal = TERMINAL.has(status);
    btnCancel.disabled = terminal;
    btnPause.disabled = !["queued", "running", "waiting"].includes(status);
    btnResume.disabled = status !== "paused";
    const usage = row && row.last_seq > st.lastSeq
      ? { input: row.usage.input_tokens, output: row.usage.output_tokens, cost: row.usage.cost_usd, cached: row.usage.cached_input_tokens }
      : st.usage;
    stats.cost.textContent = row?.usage?.cost_known === false ? costText(row.usage) : fmtCost(usage.cost);
    st.shown = {
      input_tokens: usage.input,
      output_tokens: usage.output,
      cost_usd: usage.cost,
      cost_known: row?.usage?.cost_known,
    };
    if (row) budget.update(row);
    stats.tokens.textContent = fmtInt(usage.input + usage.output);
    stats.tokens.title = `${fmtInt(usage.input)} input + ${fmtInt(usage.output)} output`;
    stats.steps.textContent = fmtInt(Math.max(st.steps, row && row.last_seq > st.lastSeq ? row.steps : 0));
    stats.calls.textContent = fmtInt(st.usage.calls);
    const hits = cacheHits(usage);
    stats.cache.textContent = hits.text;
    stats.cache.title = hits.title;
  };

  const renderResult = () => {
    const status = st.status;
    if (!TERMINAL.has(status)) {
      resultCard.hidden = true;
      return;
    }
    resultCard.hidden = false;
    resultCard.className = `card result ${status}`;
    if (status === "completed") {
      const body = h("div", { class: "md", id: "result-body" });
      body.innerHTML = renderMarkdown(st.result || ""); // safe: the renderer escapes first
      put(resultCard, h("h2", { id: "result-title" }, "Result"), body);
    } else {
      const err = st.error || {};
      put(resultCard,
        h("h2", { id: "result-title" }, status === "failed" ? "Failed" : "Cancelled"),
        h("p", {}, err.reason ? h("strong", {}, `${err.reason}: `) : null, err.error || ""),
      );
    }
  };

  // ---- actions
  const control = (verb, label) =>
    act(api(`/v1/runs/${encodeURIComponent(runId)}/${verb}`, { method: "POST", body: {} }), (out) => {
      toast(`${label}: ${out.outcome}`);
      refreshRow().catch(() => {});
    });
  btnCancel.addEventListener("click", () => {
    if (confirm("Cancel this run? Its in-flight LLM call and tools are interrupted.")) control("cancel", "Cancel");
  });
  btnPause.addEventListener("click", () => control("pause", "Pause"));
  btnResume.addEventListener("click", () => {
    control("resume", "Resume").then(() => connect());
  });

  const sendMessage = async () => {
    const content = message.value.trim();
    if (!content) return;
    sendBtn.disabled = true;
    const ok = await act(
      api(`/v1/runs/${encodeURIComponent(runId)}/messages`, { method: "POST", body: { content } }),
    );
    sendBtn.disabled = false;
    if (ok) {
      message.value = "";
      toast("Message sent");
      connect();
    }
  };

  const fork = (seq) =>
    act(api(`/v1/runs/${encodeURIComponent(runId)}/fork`, { method: "POST", body: { seq } }), (run) => {
      toast(`Forked at event ${seq} as ${run.id}`);
      location.hash = `#/runs/${encodeURIComponent(run.id)}`;
    });

  const decide = (callId, approve, reason, box) => {
    for (const b of box.querySelectorAll("button")) b.disabled = true;
    act(
      api(`/v1/runs/${encodeURIComponent(runId)}/approvals/${encodeURIComponent(callId)}`, {
        method: "POST",
        body: { approve, reason },
      }),
      () => toast(approve ? "Approved" : "Denied"),
    ).then((out) => {
      if (!out) for (const b of box.querySelectorAll("button")) b.disabled = false;
    });
  };

  // ---- timeline rendering
  const item = (ev, { cls = "", title: titleNodes, body, compact = false, boundary = false }) => {
    const li = h(
      "li",
      { class: `ev ${cls}${compact ? " compact" : ""}`, id: `ev-${ev.seq}`, dataset: { seq: ev.seq, type: ev.type } },
      h(
        "div",
        { class: "ev-head" },
        h("span", { class: "ev-title" }, titleNodes),
        h("span", { class: "ev-time" }, timeEl(ev.ts, fmtTime(ev.ts))),
        h("span", { class: "ev-seq", "aria-label": `event ${ev.seq}` }, `#${ev.seq}`),
        boundary && h("button", {
          type: "button",
          class: "small ghost fork",
          "aria-label": `Fork a new run from event ${ev.seq}`,
          title: `Fork a new run from the journal up to event ${ev.seq}`,
          onclick: () => fork(ev.seq),
        }, "Fork"),
      ),
      body ? h("div", { class: "ev-body" }, body) : null,
    );
    return li;
  };

  const approvalBox = (callId) => {
    const reasonId = `reason-${callId}`;
    const reason = h("input", { id: reasonId, type: "text", autocomplete: "off", placeholder: "Optional for approve" });
    const box = h("div", { class: "approval-box", dataset: { callId } });
    append(box, [
      h(
        "div",
        { class: "row" },
        h("div", { class: "field" }, h("label", { for: reasonId }, "Reason"), reason),
        h("button", { type: "button", class: "ok", onclick: () => decide(callId, true, reason.value, box) }, "Approve"),
        h("button", { type: "button", class: "danger", onclick: () => decide(callId, false, reason.value, box) }, "Deny"),
      ),
    ]);
    return box;
  };

  const render = (ev) => {
    const d = ev.data || {};
    switch (ev.type) {
      case "run.created":
        return {
          cls: "user",
          title: ["Run created", d.agent ? h("span", { class: "muted" }, ` · ${d.agent.name} v${d.agent.version}`) : null],
          body: d.input != null ? h("div", { class: "bubble" }, d.input) : null,
        };
      case "message.user":
        return { cls: "user", title: "User message", body: h("div", { class: "bubble" }, d.content) };
      case "run.started": {
        const takeover = d.takeover === true || (d.takeover === undefined && Number(d.epoch) > 1);
        const previous = st.lastWorker;
        st.lastWorker = d.worker;
        if (takeover) {
          return {
            cls: "takeover",
            title: ["Taken over by worker ", h("span", { class: "mono" }, d.worker)],
            body: h(
              "div",
              { class: "callout warn" },
              `Epoch ${d.epoch}. `,
              previous ? ["The previous worker ", h("span", { class: "mono" }, previous), " stopped renewing its lease"] : "The previous worker stopped renewing its lease",
              d.crashes ? ` (takeover ${d.crashes})` : "",
              "; this worker resumed the run from the journal.",
            ),
          };
        }
        return {
          compact: true,
          title: [d.resumed ? "Resumed by worker " : "Started by worker ", h("strong", { class: "mono" }, d.worker), ` · epoch ${d.epoch}`,
            d.framework ? ` · ${FRAMEWORKS[d.framework] || d.framework} agent` : ""],
        };
      }
      case "llm.started":
        return {
          compact: true,
          cls: "llm",
          title: [h("strong", {}, "LLM call"), ` · step ${d.step} · attempt ${d.attempt}`, d.model ? ` · ${d.model}` : ""],
        };
      case "llm.completed": {
        const msg = d.message || {};
        const u = d.usage || {};
        const parts = [];
        if (msg.content) {
          const md = h("div", { class: "md answer" });
          md.innerHTML = renderMarkdown(msg.content);
          parts.push(md);
        }
        for (const call of msg.tool_calls || []) {
          parts.push(
            h("div", { class: "call" },
              h("span", { class: "tag warn" }, "tool call"), " ",
              h("span", { class: "call-name" }, call.name), " ",
              h("span", { class: "muted mono" }, call.id),
              h("pre", { "aria-label": `Arguments of ${call.name}` }, json(call.arguments || {}))),
          );
        }
        return {
          cls: "llm",
          title: [
            msg.tool_calls?.length && !msg.content ? "Tool calls" : "Answer",
            h("span", { class: "muted" }, ` · ${fmtInt(u.input_tokens)} in / ${fmtInt(u.output_tokens)} out tokens · ${fmtCost(u.cost_usd)}`),
          ],
          body: h("div", { class: "bubble" }, parts.length ? parts : h("span", { class: "muted" }, "(empty answer)")),
        };
      }
      case "llm.failed":
        return {
          cls: "error",
          title: `LLM call failed: ${d.class || "error"}`,
          body: h("div", { class: "callout" }, d.error || "",
            d.retryable !== false
              ? h("div", { class: "muted" }, d.retry_at ? ["Will retry at ", timeEl(d.retry_at, fmtTime(d.retry_at)), " (", countdown(d.retry_at, fmtIn), ")"] : "Will retry.")
              : h("div", {}, h("strong", {}, "Not retryable."))),
        };
      case "llm.fallback":
        return { compact: true, cls: "llm", title: ["Fell back from ", h("strong", {}, d.from), " to ", h("strong", {}, d.to), ` (${d.reason})`] };
      case "tool.started":
        return {
          compact: true,
          cls: "tool",
          title: ["Tool ", h("strong", { class: "mono" }, d.name), ` started · attempt ${d.attempt}`, d.effect ? ` · ${d.effect}` : ""],
        };
      case "tool.completed": {
        const failure = failedOutput(d.output);
        if (failure) {
          return {
            cls: "tool error",
            title: ["Tool ", h("span", { class: "mono" }, d.name), ` failed: ${failure}`],
            body: [h("div", { class: "callout" }, collapsible(d.output, "Result")),
              d.files && window.everrunsFiles ? window.everrunsFiles.diffs(runId, ev.seq, d.files, { h, token }) : null],
          };
        }
        return {
          cls: "tool ok",
          title: ["Tool ", h("span", { class: "mono" }, d.name), " returned"],
          body: [collapsible(d.output, "Result"), d.note ? h("p", { class: "muted" }, `Note: ${d.note}`) : null,
            d.files && window.everrunsFiles ? window.everrunsFiles.diffs(runId, ev.seq, d.files, { h, token }) : null],
        };
      }
      case "tool.failed":
        return {
          cls: "error",
          title: ["Tool ", h("span", { class: "mono" }, d.name), d.denied ? " denied" : d.interrupted ? " interrupted" : " failed"],
          body: [h("div", { class: "callout" }, collapsible(d.error, "Error")),
            d.files && window.everrunsFiles ? window.everrunsFiles.diffs(runId, ev.seq, d.files, { h, token }) : null],
        };
      case "tool.waiting":
        return {
          cls: "wait",
          title: ["Tool ", h("span", { class: "mono" }, d.name), " waiting"],
          body: h("div", { class: "callout warn" },
            d.reason ? `${d.reason}. ` : "",
            d.wake_at ? ["Wakes at ", timeEl(d.wake_at, fmtTime(d.wake_at)), " (", countdown(d.wake_at, fmtIn), ")"] : "Until a signal.",
            d.wait_for?.length ? h("div", {}, "Child runs: ", d.wait_for.map((id, i) => [i ? ", " : "", h("a", { href: `#/runs/${encodeURIComponent(id)}`, class: "mono" }, id)])) : null),
        };
      case "tool.retrying":
        return {
          cls: "wait",
          title: ["Tool ", h("span", { class: "mono" }, d.name), ` retrying (attempt ${d.attempt} did not take effect)`],
          body: h("div", { class: "callout warn" }, `${d.reason}. `,
            d.retry_at ? ["Retries at ", timeEl(d.retry_at, fmtTime(d.retry_at)), ` (${fmtIn(d.retry_at)})`] : ""),
        };
      case "approval.requested": {
        // The decision is taken in the bar at the top of the page (sticky on phones).
        const box = approvalBox(d.call_id);
        st.approvals.set(d.call_id, box);
        pending.add(d.call_id, d.name, box);
        return {
          cls: "wait",
          title: ["Approval needed: ", h("span", { class: "mono" }, d.name)],
          body: h("div", { class: "callout warn" },
            h("div", {}, "The agent wants to call ", h("strong", { class: "mono" }, d.name), " with:"),
            h("pre", {}, json(d.arguments || {})),
            h("div", { class: "approval-state", dataset: { callId: d.call_id } }, "Waiting for a decision (at the top of the page).")),
        };
      }
      case "approval.granted":
      case "approval.denied": {
        const granted = ev.type === "approval.granted";
        if (st.approvals.has(d.call_id)) {
          pending.remove(d.call_id);
          for (const el of timeline.querySelectorAll(".approval-state")) {
            if (el.dataset.callId === d.call_id) put(el, h("span", { class: `tag ${granted ? "ok" : "bad"}` }, granted ? "approved" : "denied"));
          }
          st.approvals.delete(d.call_id);
        }
        return {
          compact: true,
          cls: granted ? "ok" : "error",
          title: [h("strong", {}, granted ? "Approved" : "Denied"), ` call ${d.call_id}`, d.reason ? `: ${d.reason}` : ""],
        };
      }
      case "run.waiting":
        return {
          cls: "wait",
          title: d.reason === "approval" ? "Waiting for approval" : `Waiting: ${d.reason || "wait"}`,
          body: h("div", { class: "callout warn" },
            d.wake_at
              ? ["Wakes at ", timeEl(d.wake_at, fmtDateTime(d.wake_at)), " (", countdown(d.wake_at, fmtIn), ")"]
              : ["Until a signal", d.calls?.length ? ` (calls ${d.calls.join(", ")})` : "", "."]),
        };
      case "run.paused":
        return { compact: true, title: [h("strong", {}, "Paused"), d.by ? ` by ${d.by}` : ""] };
      case "run.resumed":
        return { compact: true, title: h("strong", {}, "Resumed") };
      case "run.forked":
        return {
          compact: true,
          title: [h("strong", {}, "Forked"), " from ", h("a", { href: `#/runs/${encodeURIComponent(d.from_run)}`, class: "mono" }, d.from_run), ` at event ${d.at_seq}`],
        };
      case "run.completed":
        return { cls: "ok", compact: true, title: [h("strong", {}, "Completed"), " · result above"] };
      case "run.failed":
        return {
          cls: "error",
          title: `Run failed: ${d.reason || "error"}`,
          body: h("div", { class: "callout" }, d.error || ""),
        };
      case "run.cancelled":
        return { compact: true, cls: "error", title: [h("strong", {}, "Cancelled"), d.reason ? `: ${d.reason}` : ""] };
      case "compaction.started":
        return { compact: true, title: [h("strong", {}, "Compacting the context"), d.reason ? ` (${d.reason})` : ""] };
      case "context.compacted":
        return {
          compact: true,
          title: [h("strong", {}, "Context compacted"), ` · messages before #${d.until} summarized`],
          body: collapsible(d.summary, "Summary"),
        };
      case "child.finished":
        return {
          compact: true,
          cls: d.status === "completed" ? "ok" : "error",
          title: ["Child run ", h("a", { href: `#/runs/${encodeURIComponent(d.run_id)}`, class: "mono" }, d.run_id), ` ${d.status}`],
        };
      default:
        return renderVerbEvent(ev, h) || {
          compact: true,
          title: h("strong", {}, ev.type),
          body: h("details", {}, h("summary", {}, "Data"), h("pre", {}, json(d))),
        };
    }
  };

  // ---- streaming answer (ephemeral llm.delta events)
  const startStream = (ev, li) => {
    const text = h("div", { class: "stream-text", id: "stream-text", "aria-live": "polite", "aria-atomic": "false" });
    const wrap = h("div", { class: "ev-body stream", id: "stream" },
      h("div", { class: "bubble" }, h("span", { class: "muted stream-label" }, "Generating…"), text, h("span", { class: "cursor", "aria-hidden": "true" })));
    li.classList.add("streaming");
    li.append(wrap);
    st.llm = { inFlight: true, attempt: Number(ev.data?.attempt || 0), item: li, text, wrap };
  };

  const endStream = (superseded) => {
    const { item: li, wrap } = st.llm;
    if (li) li.classList.remove("streaming");
    if (wrap) {
      if (superseded && wrap.querySelector(".stream-text").textContent) {
        // Keep what the failed attempt said, struck through: it never entered the journal.
        wrap.removeAttribute("id");
        const text = wrap.querySelector(".stream-text");
        text.removeAttribute("id");
        text.removeAttribute("aria-live");
        text.classList.add("superseded");
        wrap.querySelector(".cursor")?.remove();
        wrap.querySelector(".stream-label").textContent = "Discarded partial answer (this attempt did not complete): ";
      } else {
        wrap.remove();
      }
    }
    st.llm = { inFlight: false, attempt: st.llm.attempt, item: null, text: null, wrap: null };
  };

  const onDelta = (data) => {
    if (!st.llm.inFlight || Number(data.attempt) !== st.llm.attempt) return; // superseded attempt
    const label = st.llm.wrap.querySelector(".stream-label");
    if (label.textContent) label.textContent = "";
    st.llm.text.append(document.createTextNode(data.text || ""));
  };

  // ---- folding events into the page
  const apply = (ev) => {
    if (ev.seq <= st.lastSeq) return; // duplicate (replay after a reconnect)
    if (ev.seq > st.lastSeq + 1) {
      st.needFill = true; // a gap: read what we missed from the journal
      fill();
      return;
    }
    st.lastSeq = ev.seq;
    const d = ev.data || {};
    switch (ev.type) {
      case "run.created": st.status = "queued"; break;
      case "run.started": st.status = "running"; endStream(true); break;
      case "run.waiting": st.status = "waiting"; break;
      case "run.paused": st.status = "paused"; break;
      case "run.resumed": st.status = "queued"; break;
      case "run.forked": if (!TERMINAL.has(st.status)) st.status = "queued"; break;
      case "message.user":
        if (st.status === "completed" || st.status === "failed") st.status = "queued";
        break;
      case "run.completed": st.status = "completed"; st.result = d.result; break;
      case "run.failed": st.status = "failed"; st.error = d; break;
      case "run.cancelled": st.status = "cancelled"; st.error = d; endStream(true); break;
      case "llm.started": st.usage.calls += 1; break;
      case "llm.completed": st.steps += 1; endStream(false); break;
      case "llm.failed": endStream(true); break;
      default: st.status = verbStatus(ev.type) || st.status; break;
    }
    // A run-level event while a call streams (takeover, failure, pause): that attempt is over.
    if (st.llm.inFlight && ev.type.startsWith("run.")) endStream(true);
    if (d.progress && ev.type.startsWith("tool.")) st.progress = d.progress;
    const u = d.usage;
    if (u && ["llm.completed", "llm.failed", "llm.charged", "context.compacted", "outcome.graded"].includes(ev.type)) {
      st.usage.input += Number(u.input_tokens || 0);
      st.usage.output += Number(u.output_tokens || 0);
      st.usage.cost += Number(u.cost_usd || 0);
      st.usage.cached += Number(u.cached_input_tokens || 0);
    }
    if (d.child || ev.type === "child.finished") children.poke();
    else if (TERMINAL_EVENTS.has(ev.type)) children.poke(false);
    const boundary = st.boundary(ev);
    const li = item(ev, { ...render(ev), boundary });
    timeline.append(li);
    if (ev.type === "llm.started") startStream(ev, li);
    renderHead();
    renderResult();
    follow.added();
  };

  const fill = () => {
    if (st.filling) return st.filling;
    st.needFill = true;
    st.filling = (async () => {
      try {
        while (st.needFill && !st.stopped) {
          st.needFill = false;
          const events = await api(`/v1/runs/${encodeURIComponent(runId)}/events?after=${st.lastSeq}&limit=1000`);
          for (const ev of events) apply(ev);
          if (events.length === 1000) st.needFill = true;
        }
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) toast(`Could not load events: ${err.message}`, "error");
      } finally {
        st.filling = null;
      }
    })();
    return st.filling;
  };

  // ---- the live stream (EventSource reconnects by itself with Last-Event-ID)
  const setConn = (state, text) => {
    conn.dataset.state = state;
    conn.textContent = text || state;
  };

  const onEvent = (msg) => {
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (ev.type === "llm.delta" || ev.ephemeral) {
      if (ev.type === "llm.delta") onDelta(ev.data || {});
      else if (ev.type === "tool.progress" && ev.data) { st.progress = ev.data; renderHead(); } // live, not journaled
      return;
    }
    apply(ev);
    if (TERMINAL_EVENTS.has(ev.type) && TERMINAL.has(st.status)) {
      closeStream();
      setConn("ended", "run ended");
    }
  };

  const closeStream = () => {
    if (st.es) st.es.close();
    st.es = null;
    clearTimeout(st.retryTimer);
    st.retryTimer = null;
  };

  const connect = () => {
    if (st.stopped || st.es) return;
    clearTimeout(st.retryTimer);
    st.retryTimer = null;
    const q = new URLSearchParams({ after: String(st.lastSeq) });
    if (token()) q.set("access_token", token());
    const es = new EventSource(`/v1/runs/${encodeURIComponent(runId)}/events/stream?${q}`);
    st.es = es;
    setConn("connecting", "connecting");
    es.onopen = () => {
      st.backoff = 1000;
      setConn("live", "live");
    };
    es.onmessage = onEvent;
    for (const type of [...EVENT_TYPES, ...VERB_EVENTS, "llm.delta", "tool.progress"]) es.addEventListener(type, onEvent);
    es.onerror = () => {
      if (st.es !== es) return;
      if (TERMINAL.has(st.status) && (!st.row || st.row.last_seq <= st.lastSeq)) {
        closeStream(); // the server ends the stream with the run
        setConn("ended", "run ended");
        return;
      }
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error): retry ourselves, resuming after the last seq.
        closeStream();
        setConn("reconnecting", "reconnecting…");
        st.retryTimer = setTimeout(() => {
          refreshRow().catch(() => {});
          connect();
        }, st.backoff);
        st.backoff = Math.min(st.backoff * 2, 15000);
      } else {
        setConn("reconnecting", "reconnecting…");
      }
    };
  };

  const refreshRow = async () => {
    st.row = await api(`/v1/runs/${encodeURIComponent(runId)}`);
    renderHead();
    verbs.update(st.row);
    // New events while no stream is open (a message after the end, a resume): follow again.
    if (!st.es && !st.retryTimer && st.row.last_seq > st.lastSeq) {
      if (TERMINAL.has(st.row.status)) await fill();
      else connect();
    }
  };

  const online = () => {
    if (!st.es || st.es.readyState !== EventSource.OPEN) {
      closeStream();
      connect();
    }
  };
  window.addEventListener("online", online);

  (async () => {
    try {
      await refreshRow();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        put(main, h("h1", {}, "Run not found"), h("p", {}, `No run ${runId}. `, h("a", { href: "#/runs" }, "Back to runs")));
        st.stopped = true;
        return;
      }
      if (err instanceof ApiError && err.status === 401) return;
    }
    if (st.stopped) return;
    focusHeading();
    connect();
  })();
  const stopPoll = poll(async () => {
    if (st.row) await refreshRow();
  }, LIST_POLL_MS);

  return () => {
    st.stopped = true;
    stopPoll();
    children.stop();
    follow.stop();
    pending.stop();
    closeStream();
    window.removeEventListener("online", online);
  };
}

// ------------------------------------------------------------------ approvals inbox

function approvalsPage() {
  document.title = "Approvals · everruns";
  const list = h("ul", { class: "inbox", id: "inbox", "aria-label": "Pending approvals" });
  const empty = h("p", { class: "card empty", hidden: true }, "Nothing waits for a decision.");
  main.append(
    h("div", { class: "page-head" },
      h("div", {}, h("h1", {}, "Approvals"), h("p", { class: "muted" }, "Tool calls that wait for a human decision, across all runs."))),
    empty,
    list,
  );
  focusHeading();
  const cards = new Map();
  const decide = (item, approve, reason, card) => {
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    act(
      api(`/v1/runs/${encodeURIComponent(item.run_id)}/approvals/${encodeURIComponent(item.call_id)}`, {
        method: "POST",
        body: { approve, reason },
      }),
      () => {
        toast(`${approve ? "Approved" : "Denied"} ${item.name} in ${item.run_id}`);
        card.remove();
        cards.delete(`${item.run_id}/${item.call_id}`);
        empty.hidden = cards.size > 0;
        updateApprovalsBadge().catch(() => {});
      },
    ).then((out) => {
      if (!out) for (const b of card.querySelectorAll("button")) b.disabled = false;
    });
  };
  const card = (item) => {
    const key = `${item.run_id}/${item.call_id}`;
    const rid = `areason-${cards.size}-${item.call_id}`.replace(/[^\w-]/g, "_");
    const reason = h("input", { id: rid, type: "text", autocomplete: "off" });
    const li = h("li", { class: "card", dataset: { key } });
    append(li, [
      h("h2", {}, h("span", { class: "mono" }, item.name), h("span", { class: "muted" }, ` · ${item.agent}`)),
      h("p", { class: "muted" }, "Run ", h("a", { href: `#/runs/${encodeURIComponent(item.run_id)}`, class: "mono" }, item.run_id), ` · call ${item.call_id}`),
      h("pre", { "aria-label": "Arguments" }, json(item.arguments || {})),
      h("div", { class: "approval-box" },
        h("div", { class: "row" },
          h("div", { class: "field" }, h("label", { for: rid }, "Reason"), reason),
          h("button", { type: "button", class: "ok", onclick: () => decide(item, true, reason.value, li) }, "Approve"),
          h("button", { type: "button", class: "danger", onclick: () => decide(item, false, reason.value, li) }, "Deny"))),
    ]);
    return li;
  };
  const stop = poll(async () => {
    const items = await api("/v1/approvals");
    const seen = new Set();
    for (const item of items) {
      const key = `${item.run_id}/${item.call_id}`;
      seen.add(key);
      if (!cards.has(key)) {
        const li = card(item);
        cards.set(key, li);
        list.append(li);
      }
    }
    for (const [key, li] of cards) {
      if (!seen.has(key)) {
        li.remove();
        cards.delete(key);
      }
    }
    empty.hidden = cards.size > 0;
    setApprovalsBadge(items.length);
  }, LIST_POLL_MS);
  return stop;
}

function setApprovalsBadge(n) {
  const badgeEl = document.getElementById("approvals-count");
  badgeEl.hidden = !n;
  badgeEl.textContent = n ? String(n) : "";
  badgeEl.setAttribute("aria-label", `${n} pending`);
}

async function updateApprovalsBadge() {
  if (loginShown) return;
  try {
    setApprovalsBadge((await api("/v1/approvals")).length);
  } catch {
    /* shown elsewhere */
  }
}

// ------------------------------------------------------------------ workers

function workersPage() {
  document.title = "Workers · everruns";
  const tbody = h("tbody");
  const attention = attentionPanel({ h, put, api });
  main.append(
    h("div", { class: "page-head" },
      h("div", {}, h("h1", {}, "Workers"), h("p", { class: "muted" }, "Live workers (heartbeat in the last minute) and the runs each holds."))),
    h("div", { class: "card table-card" },
      h("div", { class: "table-wrap" },
        h("table", { class: "stack-table", id: "workers-table" },
          h("caption", { class: "visually-hidden" }, "Live workers"),
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "Worker"),
            h("th", { scope: "col" }, "Host"),
            h("th", { scope: "col", class: "num" }, "PID"),
            h("th", { scope: "col" }, "Started"),
            h("th", { scope: "col" }, "Heartbeat"),
            h("th", { scope: "col", class: "num" }, "Runs held"))),
          tbody))),
    attention.element,
  );
  focusHeading();
  return poll(async () => {
    await attention.refresh();
    const workers = await api("/v1/workers");
    if (!workers.length) {
      put(tbody, h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No live workers. Start one with everruns worker (or everruns server without --no-worker).")));
      return;
    }
    put(tbody,
      ...workers.map((w) =>
        h("tr", { dataset: { workerId: w.id } },
          h("td", { class: "primary-cell mono", "data-label": "Worker" }, w.id),
          h("td", { "data-label": "Host" }, w.hostname || "–"),
          h("td", { class: "num", "data-label": "PID" }, w.pid ?? "–"),
          h("td", { "data-label": "Started" }, timeEl(w.started_at, fmtAge(w.started_at))),
          h("td", { "data-label": "Heartbeat" }, timeEl(w.heartbeat_at, fmtAge(w.heartbeat_at))),
          h("td", { class: "num", "data-label": "Runs held" }, fmtInt(w.runs)))),
    );
  }, LIST_POLL_MS);
}

// ------------------------------------------------------------------ start

window.addEventListener("hashchange", route);
document.querySelector("[data-skip]").addEventListener("click", (e) => {
  e.preventDefault(); // the hash is the router's: move focus instead of navigating
  main.focus();
});
setInterval(updateApprovalsBadge, 5000);
startCountdowns(fmtIn);
route();
updateApprovalsBadge();

// For the views in their own files (tree.js, live.js, agents.js).
export {
  h, append, put, api, ApiError, act, poll, toast, badge, timeEl, json, collapsible,
  fmtAge, fmtIn, fmtTime, fmtDateTime, fmtInt, fmtCost, focusHeading,
};
