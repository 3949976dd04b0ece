// Run trees: sub-agent runs grouped under their parent in the runs list, a parent's
// children listed live on its page, tree totals, and cursor paging of the list.
import { h, put, api, badge, timeEl, fmtAge, fmtInt, fmtCost } from "./app.js";

const CHILD_POLL_MS = 2000;

// Cost as the API knows it: "unknown" when a model without a price took part.
export function costText(usage) {
  if (!usage) return "–";
  return usage.cost_known === false ? "unknown" : fmtCost(usage.cost_usd);
}

function tokensOf(usage) {
  if (!usage) return 0;
  return usage.total_tokens ?? Number(usage.input_tokens || 0) + Number(usage.output_tokens || 0);
}

// The totals of a run and its sub-agents: the API's `tree_usage` when it gives one,
// else the sum of the run and the children at hand.
export function treeTotals(run, children) {
  if (run?.tree_usage) return { ...run.tree_usage, exact: true };
  const all = [run, ...children].filter(Boolean).map((r) => r.usage || {});
  return {
    input_tokens: all.reduce((n, u) => n + Number(u.input_tokens || 0), 0),
    output_tokens: all.reduce((n, u) => n + Number(u.output_tokens || 0), 0),
    cost_usd: all.reduce((n, u) => n + Number(u.cost_usd || 0), 0),
    cost_known: all.every((u) => u.cost_known !== false),
    exact: false,
  };
}

// Every page of the list up to `pages`, each asked with the cursor of the one before.
export async function fetchPages(query, pages) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < pages; i += 1) {
    const q = new URLSearchParams(query);
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/runs?${q}`);
    items.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return { items, more: Boolean(cursor) };
}

// Rows in display order: each run whose parent is on the page right after that
// parent (oldest child first), at depth + 1; the others in the list's order.
export function treeOrder(items) {
  const byId = new Map(items.map((r) => [r.id, r]));
  const kids = new Map();
  for (const run of items) {
    if (run.parent_id && byId.has(run.parent_id)) {
      if (!kids.has(run.parent_id)) kids.set(run.parent_id, []);
      kids.get(run.parent_id).push(run);
    }
  }
  const out = [];
  const visit = (run, depth, ancestors) => {
    const children = (kids.get(run.id) || []).slice().sort((a, b) => a.created_at - b.created_at);
    out.push({ run, depth, children, ancestors });
    for (const child of children) visit(child, depth + 1, [...ancestors, run.id]);
  };
  for (const run of items) {
    if (!(run.parent_id && byId.has(run.parent_id))) visit(run, 0, []);
  }
  return out;
}

// The runs table body, grouped; `collapsed` (a Set of run ids) survives refreshes.
export function renderRunRows(tbody, items, collapsed, emptyText, rerender) {
  if (!items.length) {
    put(tbody, h("tr", {}, h("td", { colspan: 7, class: "empty" }, emptyText)));
    return;
  }
  const rows = treeOrder(items);
  put(tbody, ...rows.map(({ run, depth, children, ancestors }) => {
    const hidden = ancestors.some((id) => collapsed.has(id));
    const open = !collapsed.has(run.id);
    const toggle = children.length
      ? h("button", {
        type: "button",
        class: "small ghost tree-toggle",
        "aria-expanded": String(open),
        "aria-label": `${open ? "Hide" : "Show"} the ${children.length} sub-agent runs of ${run.id}`,
        onclick: () => {
          if (open) collapsed.add(run.id);
          else collapsed.delete(run.id);
          rerender();
        },
      }, `${open ? "▾" : "▸"} ${children.length} sub-agent${children.length === 1 ? "" : "s"}`)
      : null;
    const orphan = depth === 0 && run.parent_id
      ? h("div", { class: "muted small-text" }, "sub-agent of ",
        h("a", { href: `#/runs/${encodeURIComponent(run.parent_id)}`, class: "mono" }, run.parent_id))
      : null;
    const totals = children.length ? treeTotals(run, children) : null;
    return h(
      "tr",
      {
        class: depth ? "child-row" : null,
        hidden,
        dataset: { runId: run.id, status: run.status, parentId: run.parent_id || "", depth: String(depth) },
      },
      h("td", { class: "primary-cell", "data-label": "Run" },
        h("div", {},
          h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, title: run.id }, run.id),
          toggle ? [" ", toggle] : null,
          run.input ? h("div", { class: "input", title: run.truncated ? "(shortened in the list)" : run.input }, run.input) : null,
          orphan)),
      h("td", { "data-label": "Agent" }, run.agent, h("span", { class: "muted" }, ` v${run.agent_version}`)),
      h("td", { "data-label": "Status" }, badge(run.status), window.everrunsProgress?.bar(run.progress, h)),
      h("td", { "data-label": "Age" }, timeEl(run.created_at, fmtAge(run.created_at))),
      h("td", { class: "num", "data-label": "Steps" }, fmtInt(run.steps)),
      h("td", { class: "num", "data-label": "Tokens" }, fmtInt(tokensOf(run.usage))),
      h("td", { class: "num", "data-label": "Cost" }, costText(run.usage),
        totals ? h("div", { class: "muted small-text tree-cost", title: "This run and its sub-agents" }, `tree ${costText(totals)}`) : null),
    );
  }));
}

// The "Sub-agents" card of a run page: its children, live, and the tree totals.
export function childrenPanel(runId, getRow) {
  const tbody = h("tbody");
  const totals = h("p", { class: "muted", id: "tree-totals" });
  const card = h("section", { class: "card", id: "children", hidden: true, "aria-labelledby": "children-title" },
    h("h2", { id: "children-title" }, "Sub-agents"),
    totals,
    h("div", { class: "table-wrap" },
      h("table", { class: "stack-table children-table" },
        h("caption", { class: "visually-hidden" }, "Sub-agent runs of this run"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Run"),
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col", class: "num" }, "Steps"),
          h("th", { scope: "col", class: "num" }, "Tokens"),
          h("th", { scope: "col", class: "num" }, "Cost"))),
        tbody)));
  let stopped = false;
  let timer = null;
  let settled = false;
  let active = false; // polls only once the journal showed a spawn (or the API a tree)
  const refresh = async () => {
    const { items } = await fetchPages({ parent_id: runId, limit: "500" }, 4);
    if (stopped) return;
    const row = getRow();
    card.hidden = !items.length;
    const kids = items.slice().sort((a, b) => a.created_at - b.created_at);
    put(tbody, ...kids.map((run) =>
      h("tr", { dataset: { childId: run.id, status: run.status } },
        h("td", { class: "primary-cell", "data-label": "Run" },
          h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, class: "mono" }, run.id),
          h("span", { class: "muted" }, ` ${run.agent} v${run.agent_version}`)),
        h("td", { "data-label": "Status" }, badge(run.status)),
        h("td", { class: "num", "data-label": "Steps" }, fmtInt(run.steps)),
        h("td", { class: "num", "data-label": "Tokens" }, fmtInt(tokensOf(run.usage))),
        h("td", { class: "num", "data-label": "Cost" }, costText(run.usage)))));
    const t = treeTotals(row, kids);
    const done = kids.filter((k) => ["completed", "failed", "cancelled"].includes(k.status)).length;
    put(totals,
      h("strong", {}, "Tree total: "),
      h("span", { id: "tree-cost" }, costText(t)),
      ` · ${fmtInt(Number(t.input_tokens || 0) + Number(t.output_tokens || 0))} tokens`,
      ` · ${kids.length} sub-agent${kids.length === 1 ? "" : "s"}, ${done} finished`,
      t.exact ? "" : " (this run and its direct sub-agents)");
    // Poll until the run and every child have ended.
    settled = ["completed", "failed", "cancelled"].includes(row?.status) && done === kids.length;
  };
  const tick = async () => {
    clearTimeout(timer);
    try {
      await refresh();
    } catch {
      /* the run page reports connection problems */
    }
    if (!stopped && !settled) timer = setTimeout(tick, CHILD_POLL_MS);
  };
  return {
    card,
    // A child was spawned or ended (`start`), or the run ended: show it now.
    poke: (start = true) => {
      if (stopped || !(active || start)) return;
      active = true;
      settled = false;
      clearTimeout(timer); // several events in a row: one request
      timer = setTimeout(tick, 100);
    },
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
