// The Workers page's "needs attention" list: the checks of `everruns doctor`, from
// GET /v1/health/attention (dead workers, clock skew, open breakers, stuck runs,
// approvals waiting too long, an old schema). app.js passes its DOM and API helpers.

const LABELS = {
  migrations: "Schema",
  dead_worker: "Dead worker",
  clock_skew: "Clock skew",
  versions: "Versions",
  breaker_open: "Breaker open",
  stuck_run: "Stuck run",
  approval_pending: "Approval waiting",
};

export function attentionPanel({ h, put, api }) {
  const list = h("ul", { class: "attention-list", id: "attention-list" });
  const status = h("p", { class: "muted", id: "attention-status" }, "Checking…");
  const element = h("section", { class: "card attention", "aria-labelledby": "attention-head" },
    h("h2", { id: "attention-head" }, "Needs attention"), status, list);

  async function refresh() {
    const found = await api("/v1/health/attention");
    element.dataset.count = String(found.length);
    if (!found.length) {
      put(status, "Nothing needs attention.");
      put(list);
      return;
    }
    put(status, `${found.length} finding${found.length === 1 ? "" : "s"} (same as everruns doctor):`);
    put(list, ...found.map((f) => {
      const subject = f.check === "stuck_run" || f.check === "approval_pending"
        ? h("a", { href: `#/runs/${encodeURIComponent(f.subject)}`, class: "mono" }, f.subject)
        : h("span", { class: "mono" }, f.subject);
      return h("li", { dataset: { check: f.check } },
        h("span", { class: "badge failed" }, LABELS[f.check] || f.check), " ", subject,
        h("div", { class: "muted" }, f.message));
    }));
  }

  return { element, refresh };
}
