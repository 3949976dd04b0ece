// The live end of a run page: auto-follow with a "Jump to live" pill, wake-time
// countdowns that tick, the sticky approvals bar, and which events a fork may start from.
import { h } from "./app.js";

// The page follows the newest event while the run is live, until the user scrolls
// away from the end; a pill brings them back (and following resumes).
export function follower(timeline, isLive) {
  let following = true;
  let ours = false; // a scroll we caused is not the user leaving the end
  const pill = h("button", { type: "button", class: "live-pill", id: "jump-live", hidden: true }, "↓ Jump to live");
  const atEnd = () => timeline.getBoundingClientRect().bottom <= window.innerHeight + 80;
  const toEnd = () => {
    const last = timeline.lastElementChild;
    if (!last) return;
    ours = true;
    last.scrollIntoView({ block: "end", behavior: "instant" });
    requestAnimationFrame(() => { ours = false; });
  };
  const onScroll = () => {
    if (atEnd()) {
      following = true;
      pill.hidden = true;
    } else if (!ours) {
      following = false;
    }
  };
  // Scrolling up is leaving the end, even while the page is being moved to it.
  const leave = () => { following = false; };
  const onWheel = (e) => { if (e.deltaY < 0) leave(); };
  const onKey = (e) => { if (["ArrowUp", "PageUp", "Home"].includes(e.key)) leave(); };
  pill.addEventListener("click", () => {
    following = true;
    pill.hidden = true;
    toEnd();
  });
  window.addEventListener("scroll", onScroll, { passive: true });
  window.addEventListener("wheel", onWheel, { passive: true });
  window.addEventListener("touchmove", leave, { passive: true });
  window.addEventListener("keydown", onKey);
  document.body.append(pill);
  return {
    // After an event was added to the timeline.
    added() {
      if (!isLive()) {
        pill.hidden = true;
        return;
      }
      if (following) toEnd();
      else pill.hidden = false;
    },
    stop() {
      window.removeEventListener("scroll", onScroll);
      window.removeEventListener("wheel", onWheel);
      window.removeEventListener("touchmove", leave);
      window.removeEventListener("keydown", onKey);
      pill.remove();
    },
  };
}

// "in 42 s" that counts down: an element refreshed every second until it is removed.
export function countdown(ts, fmt) {
  return h("span", { class: "countdown", dataset: { until: String(ts) } }, fmt(ts));
}

export function startCountdowns(fmt) {
  const timer = setInterval(() => {
    for (const el of document.querySelectorAll(".countdown[data-until]")) {
      el.textContent = fmt(Number(el.dataset.until));
    }
  }, 1000);
  return () => clearInterval(timer);
}

// Pending approvals at the top of the page (sticky below the top bar on phones).
export function approvalsBar() {
  const list = h("div", { class: "pending-list" });
  const bar = h("section", { class: "card pending-approvals", id: "pending-approvals", hidden: true, "aria-labelledby": "pending-title" },
    h("h2", { id: "pending-title" }, "Waiting for your decision"), list);
  const topbar = document.querySelector(".topbar");
  const measure = () => document.documentElement.style.setProperty("--topbar-h", `${topbar ? topbar.offsetHeight : 0}px`);
  measure();
  window.addEventListener("resize", measure);
  return {
    bar,
    add(callId, name, box) {
      list.append(h("div", { class: "pending-item", dataset: { callId } },
        h("div", {}, "Approve ", h("strong", { class: "mono" }, name), "?"), box));
      bar.hidden = false;
    },
    remove(callId) {
      for (const el of list.querySelectorAll(".pending-item")) if (el.dataset.callId === callId) el.remove();
      bar.hidden = !list.children.length;
    },
    stop() {
      window.removeEventListener("resize", measure);
    },
  };
}

// Turn boundaries: where a fork starts a coherent new run (after an answer, after the
// last result of a step's tool calls, after a user message, at the end).
export function boundaryTracker() {
  const open = new Set();
  return (ev) => {
    const d = ev.data || {};
    switch (ev.type) {
      case "llm.completed":
        for (const call of d.message?.tool_calls || []) open.add(call.id);
        return true;
      case "tool.completed":
      case "tool.failed":
        open.delete(d.call_id);
        return open.size === 0;
      case "message.user":
      case "run.completed":
      case "context.compacted":
        return true;
      default:
        return false;
    }
  };
}

// A tool result that says it failed: a shell's non-zero exit code or a timeout.
export function failedOutput(output) {
  if (typeof output !== "string" || !output.startsWith("{")) return null;
  let value;
  try {
    value = JSON.parse(output);
  } catch {
    return null;
  }
  if (!value || typeof value !== "object") return null;
  if (value.timed_out === true) return "timed out";
  if (typeof value.exit_code === "number" && value.exit_code !== 0) return `exit code ${value.exit_code}`;
  return null;
}
