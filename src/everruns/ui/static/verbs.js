// Run verbs in the web UI: steer and interrupt buttons, the grader's verdict, and the run's
// webhook deliveries with their attempts. Mounted by app.js's run page (small hooks only).

// Journal events of the run verbs (SSE listeners, the timeline, the status).
export const VERB_EVENTS = ["run.interrupted", "outcome.grading", "outcome.graded"];

export function verbStatus(type) {
  return type === "run.interrupted" ? "waiting" : null;
}

// A timeline item for a verb event, or null for the generic one.
export function renderVerbEvent(ev, h) {
  const d = ev.data || {};
  if (ev.type === "run.interrupted") {
    const cut = (d.tools || []).map((t) => `${t.name} (${t.outcome})`);
    if (d.llm) cut.unshift(`LLM call, attempt ${d.llm.attempt}`);
    return {
      compact: true,
      cls: "error",
      title: [h("strong", {}, "Interrupted"), ` · cut: ${cut.join(", ") || "nothing in flight"} · waits for a message`],
    };
  }
  if (ev.type === "outcome.grading") {
    return { compact: true, title: [h("strong", {}, "Grading"), ` the answer (iteration ${d.iteration}, ${d.model})`] };
  }
  if (ev.type === "outcome.graded") {
    return {
      compact: true,
      cls: d.passed ? "ok" : "error",
      title: [h("strong", {}, `Grader: ${String(d.verdict || "").replace("_", " ")}`), ` · iteration ${d.iteration}`],
      body: d.feedback ? h("div", { class: "callout" }, d.feedback) : null,
    };
  }
  return null;
}

function fmtWhen(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

// tools: { h, api, act, toast } from app.js; parts: the run page's elements to extend.
export function mountVerbs(runId, tools, parts) {
  const { h, api, act, toast } = tools;
  const path = (verb) => `/v1/runs/${encodeURIComponent(runId)}/${verb}`;

  // Steer: the composer's text, injected within the current turn.
  const btnSteer = h("button", {
    type: "button",
    id: "btn-steer",
    title: "Redirect the agent now: injected after the in-flight LLM call or tool batch",
  }, "Steer");
  btnSteer.addEventListener("click", async () => {
    const content = parts.message.value.trim();
    if (!content) return;
    btnSteer.disabled = true;
    const receipt = await act(api(path("steer"), { method: "POST", body: { content } }));
    btnSteer.disabled = false;
    if (receipt) {
      parts.message.value = "";
      toast(`Steer journaled as event ${receipt.seq}`);
      parts.onChange();
    }
  });
  parts.composerRow.append(btnSteer);

  // Interrupt: stop the in-flight atom, wait for a message.
  const btnInterrupt = h("button", {
    type: "button",
    id: "btn-interrupt",
    title: "Stop the in-flight LLM call and tools now; the next message continues the run",
  }, "Interrupt");
  btnInterrupt.addEventListener("click", () =>
    act(api(path("interrupt"), { method: "POST", body: {} }), (receipt) => {
      toast(`Interrupt: ${receipt.outcome}${receipt.seq ? ` (event ${receipt.seq})` : ""}`);
      parts.onChange();
    }));
  parts.actions.prepend(btnInterrupt);

  // The grader's verdict and the webhook deliveries.
  const verdict = h("p", { id: "run-verdict", hidden: true });
  const list = h("ul", { class: "deliveries", id: "deliveries" });
  const card = h("section", { class: "card", id: "deliveries-card", hidden: true, "aria-labelledby": "deliveries-title" },
    h("h2", { id: "deliveries-title" }, "Webhook deliveries"), list);
  parts.side.append(h("section", { class: "card", id: "verdict-card", hidden: true }, h("h2", {}, "Outcome"), verdict), card);

  const deliveries = async () => {
    const rows = await api(`/v1/webhooks/deliveries?run_id=${encodeURIComponent(runId)}`);
    card.hidden = rows.length === 0;
    list.replaceChildren(...rows.map((d) => {
      const last = d.history[d.history.length - 1];
      const detail = last ? ` · last ${fmtWhen(last.ts)}: ${last.status ?? last.error}` : "";
      return h("li", { dataset: { id: d.id, status: d.status } },
        h("span", { class: `badge ${d.status === "delivered" ? "completed" : d.status === "failed" ? "failed" : "waiting"}` }, d.status),
        ` ${d.event_type} → `, h("span", { class: "mono" }, d.url),
        h("span", { class: "muted" }, ` · ${d.attempts} attempt${d.attempts === 1 ? "" : "s"}${detail}`));
    }));
  };

  return {
    // Called with each refreshed run row.
    update(row) {
      const terminal = ["completed", "failed", "cancelled"].includes(row.status);
      btnInterrupt.disabled = terminal || row.status === "paused";
      btnSteer.disabled = row.status === "cancelled";
      verdict.hidden = !row.outcome;
      verdict.parentElement.hidden = !row.outcome;
      if (row.outcome) {
        verdict.replaceChildren(h("span", { class: `badge ${row.outcome === "satisfied" ? "completed" : row.outcome === "revising" ? "running" : "failed"}` }, row.outcome.replace("_", " ")));
      }
      deliveries().catch(() => {});
    },
  };
}
