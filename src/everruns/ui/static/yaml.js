// A YAML writer for JSON values (agent specs), read back by PyYAML's safe_load:
// plain scalars only when they cannot be read as anything else, multi-line strings
// as literal blocks, everything else JSON-quoted (JSON strings are YAML scalars).

const PLAIN = /^[A-Za-z_/.][\w .\/@+-]*$/;
const SPECIAL = /^(?:true|false|yes|no|on|off|y|n|null|~|\.nan|\.inf|-\.inf|[-+]?\.?\d.*)$/i;

function scalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : JSON.stringify(String(value));
  const text = String(value);
  if (PLAIN.test(text) && !SPECIAL.test(text) && !text.endsWith(" ") && !text.includes(" #")) return text;
  return JSON.stringify(text);
}

function block(text, pad) {
  // A literal block keeps the text byte for byte when its lines need no indicator.
  if (!text.includes("\n") || /^\s/.test(text) || /[ \t]\n|[ \t]$|\n\n$|\r/.test(text)) return null;
  const body = text.endsWith("\n") ? text.slice(0, -1) : text;
  const head = text.endsWith("\n") ? "|" : "|-";
  return `${head}\n${body.split("\n").map((line) => (line ? pad + line : "")).join("\n")}`;
}

function isEmpty(value) {
  return Array.isArray(value) ? value.length === 0 : Object.keys(value).length === 0;
}

function write(value, indent) {
  const pad = "  ".repeat(indent);
  if (Array.isArray(value)) {
    return value.map((item) => {
      if (item && typeof item === "object" && !isEmpty(item)) {
        const inner = write(item, indent + 1).replace(/^\s+/, "");
        return `${pad}- ${inner}`;
      }
      return `${pad}- ${inline(item, indent + 1)}`;
    }).join("\n");
  }
  return Object.entries(value).map(([key, item]) => {
    const name = scalar(key);
    if (item && typeof item === "object" && !isEmpty(item)) {
      return `${pad}${name}:\n${write(item, indent + 1)}`;
    }
    return `${pad}${name}: ${inline(item, indent + 1)}`;
  }).join("\n");
}

function inline(value, indent) {
  if (Array.isArray(value)) return "[]";
  if (value && typeof value === "object") return "{}";
  if (typeof value === "string") return block(value, "  ".repeat(indent)) ?? scalar(value);
  return scalar(value);
}

export function toYaml(value) {
  if (value === null || typeof value !== "object") return `${scalar(value)}\n`;
  if (isEmpty(value)) return Array.isArray(value) ? "[]\n" : "{}\n";
  return `${write(value, 0)}\n`;
}
