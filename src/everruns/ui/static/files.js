// The Files card of a run page: the workspace as the journal tells it (a tree with
// size and the step that last changed each file), a text viewer, downloads (one file
// or all as a zip), and what each step changed. app.js calls
// window.everrunsFiles.card(runId, { h, token }) and places the returned element.

function fmtSize(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

async function fetchRaw(path, token) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const res = await fetch(path, { headers, cache: "no-store" });
  if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
  return res;
}

async function download(path, name, token) {
  const blob = await (await fetchRaw(path, token)).blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function fileUrl(runId, path, sha) {
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  const base = `/v1/runs/${encodeURIComponent(runId)}/files/${encoded}`;
  return sha ? `${base}?sha256=${sha}` : base;
}

function append(el, ...children) {
  el.append(...children);
  return el;
}

function card(runId, { h, token }) {
  const list = h("ul", { class: "file-tree", id: "file-tree", "aria-label": "Workspace files" });
  const viewer = h("pre", { class: "file-view", id: "file-view", hidden: true });
  const viewerTitle = h("h3", { class: "mono", hidden: true });
  const changes = h("ol", { class: "file-changes", id: "file-changes", "aria-label": "Changes by step" });
  const empty = h("p", { class: "muted" }, "No files yet.");
  const base = `/v1/runs/${encodeURIComponent(runId)}`;
  let lastKey = "";

  const show = async (path, sha) => {
    viewerTitle.textContent = sha ? `${path} (version ${sha.slice(0, 12)})` : path;
    viewerTitle.hidden = false;
    viewer.hidden = false;
    try {
      const res = await fetchRaw(fileUrl(runId, path, sha), token);
      const type = res.headers.get("content-type") || "";
      const text = type.startsWith("text/") || type.includes("json") || type.includes("python") || type.includes("javascript");
      viewer.textContent = text ? await res.text() : `[binary file, ${res.headers.get("content-length") || "?"} bytes: download it]`;
    } catch (e) {
      viewer.textContent = `could not load ${path}: ${e.message}`;
    }
  };

  const render = (files, steps) => {
    list.replaceChildren();
    empty.hidden = files.length > 0;
    const shown = new Set();
    for (const f of files) {
      const parts = f.path.split("/");
      for (let d = 1; d < parts.length; d++) {
        const folder = parts.slice(0, d).join("/");
        if (shown.has(folder)) continue;
        shown.add(folder);
        const dir = h("li", { class: "folder mono" }, `${parts[d - 1]}/`);
        dir.style.paddingLeft = `${(d - 1) * 1.2}em`;
        list.append(dir);
      }
      const depth = parts.length - 1;
      const li = h("li", { "data-path": f.path });
      li.style.paddingLeft = `${depth * 1.2}em`; // CSSOM: the CSP forbids style attributes
      list.append(
        append(li,
          h("button", { type: "button", class: "link mono", onclick: () => show(f.path) }, f.path.split("/").pop()),
          h("span", { class: "muted" }, ` ${fmtSize(f.size)} · step ${f.step}${f.call_id ? ` · ${f.call_id}` : " · handed in"} `),
          h("button", { type: "button", class: "ghost small", onclick: () => download(fileUrl(runId, f.path), f.path.split("/").pop(), token) }, "Download")),
      );
    }
    changes.replaceChildren(
      ...steps.map((c) =>
        h("li", {},
          h("span", { class: "muted" }, `step ${c.step} · seq ${c.seq} · ${c.name || "input"} ${c.call_id || ""}: `),
          ...Object.entries(c.files).map(([p, sha], i) => [
            i ? ", " : "",
            sha
              ? h("button", { type: "button", class: "link mono", onclick: () => show(p, sha) }, p)
              : h("span", { class: "mono deleted" }, `${p} (deleted)`),
          ]))),
    );
  };

  const refresh = async () => {
    try {
      const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
      const [files, steps] = await Promise.all(
        ["files", "changes"].map((p) => fetch(`${base}/${p}`, { headers, cache: "no-store" }).then((r) => (r.ok ? r.json() : []))),
      );
      const key = JSON.stringify(files);
      if (key !== lastKey) {
        lastKey = key;
        render(files, steps);
      }
    } catch {
      /* shown on the next refresh */
    }
  };

  const section = h("section", { class: "card files", id: "files", "aria-labelledby": "files-title" },
    h("div", { class: "row" },
      h("h2", { id: "files-title" }, "Files"),
      h("button", { type: "button", class: "ghost small", onclick: () => download(`${base}/files.zip`, `${runId}-files.zip`, token) }, "Download all (zip)")),
    empty, list, viewerTitle, viewer,
    h("details", {}, h("summary", {}, "Changes by step"), changes));
  refresh();
  const timer = setInterval(() => (section.isConnected ? refresh() : clearInterval(timer)), 3000);
  return section;
}

// A line diff (longest common subsequence; files over 3000 lines are shown whole).
// `null` is no file (a new file's before, a deleted file's after): every line is added
// or removed, none is matched with the empty line of an empty text.
function lineDiff(before, after) {
  const a = before === null ? [] : before.split("\n");
  const b = after === null ? [] : after.split("\n");
  if (a.length * b.length > 9e6) return [...a.map((l) => ["-", l]), ...b.map((l) => ["+", l])];
  const n = a.length;
  const m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (i < n && (j >= m || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push(["-", a[i]]); i++; }
    else { out.push(["+", b[j]]); j++; }
  }
  return out;
}

async function textOf(runId, path, sha, token) {
  if (!sha) return null;
  return (await fetchRaw(fileUrl(runId, path, sha), token)).text();
}

// The file changes journaled with one tool call, as diffs against each file's previous
// version (loaded when opened). Used by the timeline's tool results.
function diffs(runId, seq, files, { h, token }) {
  const paths = Object.keys(files);
  const body = h("div", { class: "file-diffs" });
  let loaded = false;
  const details = h("details", { class: "files-changed" },
    h("summary", {}, `Files changed (${paths.length}): ${paths.slice(0, 3).join(", ")}${paths.length > 3 ? ", …" : ""}`),
    body);
  details.addEventListener("toggle", async () => {
    if (!details.open || loaded) return;
    loaded = true;
    try {
      const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
      const history = await (await fetch(`/v1/runs/${encodeURIComponent(runId)}/changes`, { headers, cache: "no-store" })).json();
      for (const path of paths) {
        const earlier = history.filter((c) => c.seq < seq && path in c.files).pop();
        const [before, after] = await Promise.all([
          textOf(runId, path, earlier ? earlier.files[path] : null, token),
          textOf(runId, path, files[path], token),
        ]);
        const lines = lineDiff(before, after).filter(([k], idx, all) =>
          k !== " " || all.slice(Math.max(0, idx - 2), idx + 3).some(([x]) => x !== " "));
        body.append(h("h4", { class: "mono" }, files[path] ? path : `${path} (deleted)`),
          h("pre", { class: "diff" }, ...lines.map(([k, l]) => h("span", { class: k === "+" ? "add" : k === "-" ? "del" : "" }, `${k} ${l}`))));
      }
    } catch (e) {
      body.append(h("p", { class: "muted" }, `could not load the changes: ${e.message}`));
    }
  });
  return details;
}

window.everrunsFiles = { card, diffs };
