// The Agents page: stored agents, their spec as YAML, a YAML editor that creates a
// new agent or a new version (POST /v1/agents: the CLI's validation, the field named),
// a form to start a run, and the agent's memory (list, delete one, clear all).
import { h, put, api, act, toast, ApiError, fmtAge, fmtDateTime, fmtCost, fmtInt, timeEl, focusHeading, main } from "./app.js";
import { toYaml } from "./yaml.js";
import { agentCost } from "./budgets.js";

const TEMPLATE = `name: my-agent
system_prompt: You are a helpful assistant.
model:
  provider: openai
  name: gpt-4o-mini
limits: {max_steps: 20}
`;

// The problem details of a refused spec, each field named.
function problemBox(err) {
  const errors = err instanceof ApiError && Array.isArray(err.data?.errors) ? err.data.errors : [];
  return h("div", { class: "callout", role: "alert", id: "yaml-error" },
    h("strong", {}, err.data?.title || "Could not save"), " ",
    errors.length ? null : err.message,
    errors.length
      ? h("ul", { class: "field-errors" }, errors.map((e) =>
        h("li", {}, e.field ? [h("code", { class: "field-name" }, e.field), ": "] : null, e.message)))
      : null);
}

function editor(initial, heading, onSaved) {
  const text = h("textarea", { id: "agent-yaml", name: "yaml", rows: 18, spellcheck: "false", class: "mono yaml-editor" });
  text.value = initial;
  const status = h("div", { id: "yaml-status" });
  const save = h("button", { type: "submit", class: "primary", id: "save-agent" }, "Save agent");
  const form = h("form", {
    class: "form-grid",
    onsubmit: async (e) => {
      e.preventDefault();
      save.disabled = true;
      put(status);
      try {
        const agent = await api("/v1/agents", { method: "POST", body: { yaml: text.value } });
        toast(`Saved ${agent.name} v${agent.version}`);
        onSaved(agent);
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) put(status, problemBox(err));
      } finally {
        save.disabled = false;
      }
    },
  },
  h("div", { class: "field" }, h("label", { for: "agent-yaml" }, "Spec (YAML)"), text),
  status,
  h("div", { class: "row" }, save));
  return h("section", { id: "agent-editor", "aria-labelledby": "editor-title" },
    h("h2", { id: "editor-title" }, heading), form);
  // (inside the detail card, so not a card of its own)
}

// The agent's memory: what its runs remembered for later runs.
function memoryPanel(name) {
  const list = h("ul", { class: "memory-list", id: "memory-list", "aria-label": `Memory of ${name}` });
  const clear = h("button", { type: "button", class: "danger small", id: "memory-clear" }, "Clear all");
  const path = `/v1/agents/${encodeURIComponent(name)}/memory`;
  const load = async () => {
    const { items } = await api(path);
    clear.disabled = !items.length;
    if (!items.length) {
      put(list, h("li", { class: "muted empty" }, "Nothing remembered yet."));
      return;
    }
    put(list, ...items.map((item) =>
      h("li", { dataset: { key: item.key } },
        h("div", { class: "memory-value" }, item.value),
        h("div", { class: "memory-meta muted" },
          h("span", { class: "mono" }, item.key), " · ", timeEl(item.updated_at, fmtAge(item.updated_at)),
          h("button", {
            type: "button",
            class: "small ghost",
            "aria-label": `Delete memory ${item.key}`,
            onclick: () => act(api(`${path}/${encodeURIComponent(item.key)}`, { method: "DELETE" }), () => {
              toast("Deleted");
              load().catch(() => {});
            }),
          }, "Delete")))));
  };
  clear.addEventListener("click", () => {
    if (!confirm(`Forget everything ${name} remembered?`)) return;
    act(api(path, { method: "DELETE" }), () => {
      toast("Memory cleared");
      load().catch(() => {});
    });
  });
  load().catch((err) => put(list, h("li", { role: "alert" }, err.message)));
  return h("section", { class: "memory", id: "memory", "aria-labelledby": "memory-title" },
    h("div", { class: "row spread" }, h("h3", { id: "memory-title" }, "Memory"), clear), list);
}

export function agentsPage(selected, params) {
  document.title = "Agents · everruns";
  const list = h("ul", { class: "agent-list", id: "agent-list", "aria-label": "Agents" });
  const detail = h("section", { class: "card", id: "agent-detail", "aria-live": "polite" });
  const newBtn = h("button", { type: "button", class: "primary", id: "new-agent", onclick: () => { location.hash = "#/agents?new=1"; } }, "New agent");
  main.append(
    h("div", { class: "page-head" },
      h("div", {}, h("h1", {}, "Agents"), h("p", { class: "muted" }, "Stored agent specs, their versions, a YAML editor and a form to start a run.")),
      newBtn),
    h("div", { class: "grid-2" }, h("section", { class: "card table-card", "aria-label": "Agent list" }, list), detail),
  );
  focusHeading();
  let stopped = false;
  const opened = (agent) => {
    const target = `#/agents/${encodeURIComponent(agent.name)}`;
    if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange")); // a new version
    else location.hash = target;
  };

  const showAgent = async (name, version) => {
    const agent = await api(
      version ? `/v1/agents/${encodeURIComponent(name)}/versions/${version}` : `/v1/agents/${encodeURIComponent(name)}`,
    );
    const latest = await api(`/v1/agents/${encodeURIComponent(name)}`);
    if (stopped) return;
    const versionSel = h("select", { id: "agent-version", name: "version" },
      Array.from({ length: latest.version }, (_, i) => latest.version - i).map((v) =>
        h("option", { value: v, selected: v === agent.version }, `v${v}${v === latest.version ? " (latest)" : ""}`)));
    versionSel.addEventListener("change", () => showAgent(name, Number(versionSel.value)).catch((e) => toast(e.message, "error")));
    const input = h("textarea", { id: "run-input", name: "input", rows: 3, placeholder: "What should the agent do?" });
    const start = h("button", { type: "submit", class: "primary", id: "start-run" }, "Start run");
    const form = h("form", {
      class: "form-grid",
      onsubmit: async (e) => {
        e.preventDefault();
        start.disabled = true;
        const run = await act(api("/v1/runs", {
          method: "POST",
          body: { agent: name, version: Number(versionSel.value), input: input.value || null },
        }));
        start.disabled = false;
        if (run) location.hash = `#/runs/${encodeURIComponent(run.id)}`;
      },
    },
    h("div", { class: "field" }, h("label", { for: "agent-version" }, "Version"), versionSel),
    h("div", { class: "field" }, h("label", { for: "run-input" }, "Input"), input),
    h("div", {}, start));
    const yaml = toYaml(agent.spec);
    const edit = h("button", { type: "button", class: "small", id: "edit-agent" }, "Edit as a new version");
    edit.addEventListener("click", () => {
      put(detail, editor(yaml, `Edit ${name} (saved as a new version)`, opened));
      detail.querySelector("textarea").focus();
    });
    put(detail,
      h("h2", {}, name, agent.archived ? h("span", { class: "tag" }, " archived") : null),
      h("h3", {}, "Start a run"),
      form,
      h("div", { class: "row spread" }, h("h3", {}, `Spec (v${agent.version})`), edit),
      h("pre", { class: "spec", id: "agent-spec", "aria-label": `Spec of ${name} v${agent.version}` }, yaml),
      memoryPanel(name),
      h("h3", {}, "Cost of its runs"),
      await agentCost({ h, api, fmtCost, fmtInt }, name).catch((e) => h("p", { class: "muted" }, e.message)),
    );
  };

  (async () => {
    try {
      const agents = await api("/v1/agents");
      if (stopped) return;
      if (params.get("new") || !agents.length) {
        put(detail, editor(TEMPLATE, "New agent", opened));
      }
      if (!agents.length) {
        put(list, h("li", { class: "empty" }, "No agents yet: write one in YAML, or POST /v1/agents."));
        return;
      }
      const current = selected || agents[0].name;
      put(list,
        ...agents.map((a) =>
          h("li", {}, h("a", { href: `#/agents/${encodeURIComponent(a.name)}`, "aria-current": a.name === current && !params.get("new") ? "true" : null },
            h("span", {}, h("strong", {}, a.name), a.archived ? h("span", { class: "muted" }, " (archived)") : null),
            h("span", { class: "muted", title: fmtDateTime(a.created_at) }, `v${a.version} · ${fmtAge(a.created_at)}`)))),
      );
      if (!params.get("new")) await showAgent(current, Number(params.get("version")) || null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      put(detail, h("p", { role: "alert" }, err.message));
    }
  })();
  return () => {
    stopped = true;
  };
}
