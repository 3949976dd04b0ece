// A tiny, safe Markdown renderer for agent results.
//
// Safety first: the whole input is HTML-escaped before any Markdown rule runs,
// so every tag in the output comes from the rules below; links are kept only for
// http(s) URLs. Supported: headings, paragraphs, line breaks, **bold**, *italic*,
// `code`, fenced code blocks, bullet and numbered lists, > quotes, --- rules, links.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Placeholders keep code spans and links away from the emphasis rules.
const HOLD = "\u0000";

function inline(text) {
  const held = [];
  const hold = (html) => `${HOLD}${held.push(html) - 1}${HOLD}`;
  let out = text.replace(/`([^`\n]+)`/g, (_, code) => hold(`<code>${code}</code>`));
  out = out.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, label, url) => {
    // `url` is already escaped; only absolute http(s) links survive.
    if (!/^https?:\/\/[^\s]/i.test(url)) return whole;
    return hold(
      `<a href="${url}" rel="noopener noreferrer nofollow" target="_blank">${emphasis(label)}</a>`,
    );
  });
  out = emphasis(out);
  const slot = new RegExp(`${HOLD}(\\d+)${HOLD}`, "g");
  // Links may hold code spans: restore until no placeholder is left.
  for (let n = 0; n < 3 && out.includes(HOLD); n += 1) {
    out = out.replace(slot, (_, i) => held[Number(i)]);
  }
  return out;
}

function emphasis(text) {
  return text
    .replace(/\*\*(?=\S)([^*]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([^_]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/\*(?=[^\s*])([^*]*?[^\s*])\*/g, "<em>$1</em>")
    .replace(/\*([^\s*])\*/g, "<em>$1</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_]|[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}

const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
const FENCE = /^\s*(```|~~~)/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s*&gt;\s?(.*)$/;

export function renderMarkdown(source) {
  const text = escapeHtml(source ?? "").replace(/\u0000/g, "");
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const html = [];
  let i = 0;
  const isBlockStart = (line) =>
    FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) ||
    NUMBERED.test(line) || QUOTE.test(line);
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence) {
      const lang = line.trim().slice(3).trim().split(/\s+/)[0];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end)
      const cls = /^[\w+-]+$/.test(lang) ? ` class="language-${lang}"` : "";
      html.push(`<pre><code${cls}>${body.join("\n")}</code></pre>`);
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      const level = heading[1].length;
      html.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      html.push("<hr>");
      i += 1;
      continue;
    }
    if (BULLET.test(line) || NUMBERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? NUMBERED : BULLET;
      const items = [];
      const first = ordered ? Number(line.match(NUMBERED)[1]) : 1;
      while (i < lines.length && pattern.test(lines[i])) {
        const m = lines[i].match(pattern);
        let item = ordered ? m[2] : m[1];
        i += 1;
        // Lazy continuation lines (indented, not a new item) belong to the item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !pattern.test(lines[i])) {
          item += " " + lines[i].trim();
          i += 1;
        }
        items.push(`<li>${inline(item)}</li>`);
      }
      const tag = ordered ? "ol" : "ul";
      const start = ordered && first !== 1 ? ` start="${first}"` : "";
      html.push(`<${tag}${start}>${items.join("")}</${tag}>`);
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].match(QUOTE)[1]);
      html.push(`<blockquote>${renderMarkdownEscaped(body)}</blockquote>`);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && (para.length === 0 || !isBlockStart(lines[i]))) {
      para.push(lines[i].trim());
      i += 1;
    }
    html.push(`<p>${para.map(inline).join("<br>")}</p>`);
  }
  return html.join("\n");
}

// Quotes hold already-escaped lines: render them as paragraphs without escaping again.
function renderMarkdownEscaped(lines) {
  const paras = lines.join("\n").split(/\n\s*\n/).filter((p) => p.trim());
  return paras.map((p) => `<p>${p.split("\n").map(inline).join("<br>")}</p>`).join("");
}
