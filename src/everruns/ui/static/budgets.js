// Budgets in the web UI (issue 11): a run's own and tree usage, a form that raises its
// limits (and resumes it when it failed on one), and the cost of an agent's runs per day.
// app.js passes its helpers in (`ui`: h, api, toast, fmtCost, fmtInt); the cost text
// ("unknown" when a call had no price, never $0) is tree.js's.

import { costText } from "./tree.js";

const RESUMABLE = new Set(["budget_exceeded", "max_steps_exceeded", "deadline_exceeded"]);

function usageText(usage, ui) {
  if (!usage) return "…";
  return `${costText(usage)} · ${ui.fmtInt(usage.total_tokens)} tokens`;
}

/** The run page's budget card: own and tree usage, the limits set, a raise form. */
export function budgetCard(ui, runId) {
  const { h, api, toast } = ui;
  const own = h("dd", { id: "budget-own" }, "…");
  const tree = h("dd", { id: "budget-tree" }, "…");
  const limits = h("dd", { id: "budget-limits" }, "as in the spec");
  const field = (id, label, attrs) =>
    h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
  const status = { row: null };
  const submit = h("button", { type: "submit", id: "budget-raise" }, "Raise limits");
  const form = h(
    "form",
    {
      class: "form-grid",
      "aria-label": "Raise limits",
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {};
        const number = (id, key, parse) => {
          const value = form.querySelector(`#${id}`).value.trim();
          if (value) body[key] = parse(value);
        };
        number("limit-cost", "max_cost_usd", Number);
        number("limit-tokens", "max_tokens", (v) => parseInt(v, 10));
        number("limit-steps", "max_steps", (v) => parseInt(v, 10));
        number("limit-deadline", "deadline", (v) => v);
        if (!Object.keys(body).length) {
          toast("Give at least one limit to change", "error");
          return;
        }
        submit.disabled = true;
        try {
          await api(`/v1/runs/${encodeURIComponent(runId)}/limits`, { method: "POST", body });
          const row = status.row;
          if (row && row.status === "failed" && RESUMABLE.has(row.error?.reason)) {
            await api(`/v1/runs/${encodeURIComponent(runId)}/resume`, { method: "POST" });
            toast("Limits raised; the run continues");
          } else {
            toast("Limits raised");
          }
          form.reset();
        } catch (err) {
          toast(err.message, "error");
        } finally {
          submit.disabled = false;
        }
      },
    },
    field("limit-cost", "Max cost (USD)", { type: "number", min: "0", step: "any", inputmode: "decimal" }),
    field("limit-tokens", "Max tokens", { type: "number", min: "1", step: "1" }),
    field("limit-steps", "Max steps", { type: "number", min: "1", step: "1" }),
    field("limit-deadline", "Deadline from now", { type: "text", placeholder: "2h" }),
    h("div", {}, submit),
  );
  const card = h(
    "section",
    { class: "card", id: "budget", "aria-labelledby": "budget-title" },
    h("h2", { id: "budget-title" }, "Budget"),
    h("dl", { class: "stats" },
      h("div", {}, h("dt", {}, "This run"), own),
      h("div", {}, h("dt", {}, "With sub-agents"), tree),
      h("div", {}, h("dt", {}, "Limits raised"), limits)),
    form,
  );
  const update = (row) => {
    status.row = row;
    own.textContent = usageText(row.usage, ui);
    tree.textContent = usageText(row.tree_usage || row.usage, ui);
    const set = Object.entries(row.limits || {});
    limits.textContent = set.length ? set.map(([k, v]) => `${k}=${v}`).join(", ") : "as in the spec";
  };
  return { card, update };
}

/** The cost of an agent's runs per day (own usage of each run: no double counting). */
export async function agentCost(ui, name) {
  const { h, api, fmtCost, fmtInt } = ui;
  const page = await api(`/v1/runs?agent=${encodeURIComponent(name)}&limit=500`);
  const days = new Map();
  for (const run of page.items) {
    const day = new Date(run.created_at * 1000).toISOString().slice(0, 10);
    const entry = days.get(day) || { runs: 0, tokens: 0, cost: 0, unknown: 0 };
    entry.runs += 1;
    entry.tokens += Number(run.usage.total_tokens || 0);
    if (run.usage.cost_known === false) entry.unknown += 1;
    else entry.cost += Number(run.usage.cost_usd || 0);
    days.set(day, entry);
  }
  if (!days.size) return h("p", { class: "muted", id: "agent-cost" }, "No runs yet.");
  const max = Math.max(...[...days.values()].map((d) => d.cost), 1e-9);
  const rows = [...days.entries()].sort(([a], [b]) => (a < b ? 1 : -1)).map(([day, d]) =>
    h("tr", {},
      h("td", {}, day),
      h("td", { class: "num" }, fmtInt(d.runs)),
      h("td", { class: "num" }, fmtInt(d.tokens)),
      h("td", { class: "num" }, fmtCost(d.cost) + (d.unknown ? ` + unknown (${d.unknown})` : "")),
      h("td", { "aria-hidden": "true" },
        h("span", { class: "cost-bar", style: `display:inline-block;height:0.7em;background:currentColor;opacity:0.5;width:${Math.round((d.cost / max) * 100)}px` }))));
  return h("table", { class: "table", id: "agent-cost", "aria-label": `Cost of ${name}'s runs per day` },
    h("thead", {}, h("tr", {}, h("th", {}, "Day (UTC)"), h("th", {}, "Runs"), h("th", {}, "Tokens"), h("th", {}, "Cost"), h("th", {}, ""))),
    h("tbody", {}, rows));
}
