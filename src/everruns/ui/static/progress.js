// Tool progress bars: the latest ctx.progress() of a run's tools ({done, total, note}),
// on the run page (live from the journal) and in the runs list (from the run row).
// app.js calls window.everrunsProgress.bar(progress, h), which returns null when a run
// has no progress to show.

function bar(progress, h) {
  if (!progress || progress.done == null) return null;
  const done = Number(progress.done);
  const total = progress.total == null ? null : Number(progress.total);
  const pct = total ? Math.max(0, Math.min(100, (100 * done) / total)) : null;
  const label = total ? `${done} of ${total} (${pct.toFixed(0)}%)` : `${done}`;
  const meter = h("progress", { class: "tool-progress", max: total || 1, value: total ? done : undefined, "aria-label": "Tool progress" });
  return h("span", { class: "tool-progress-wrap", title: progress.note || label },
    meter, h("span", { class: "muted small" }, ` ${label}${progress.note ? ` · ${progress.note}` : ""}`));
}

window.everrunsProgress = { bar };
