// Text is text: everything a user wrote is put into the page with textContent / text nodes,
// never as HTML. Links become <a> only for http(s) URLs, with rel="noopener noreferrer".

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?)\]}]+$/;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An http(s) URL made safe to put in href, or null.
export function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// Appends `text` to `parent` as text nodes, with http(s) links clickable.
export function appendText(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let raw = match[0];
    const trail = raw.match(TRAILING);
    if (trail) raw = raw.slice(0, raw.length - trail[0].length);
    const href = safeUrl(raw);
    if (!href) continue;
    parent.append(document.createTextNode(text.slice(last, match.index)));
    parent.append(el("a", { href, target: "_blank", rel: "noopener noreferrer" }, raw));
    last = match.index + raw.length;
  }
  parent.append(document.createTextNode(text.slice(last)));
  return parent;
}

// A snippet with its highlights ([start, end) in code points, not UTF-16 units).
export function appendHighlighted(parent, snippet, highlights) {
  const points = Array.from(snippet);
  let last = 0;
  for (const [start, end] of highlights || []) {
    if (start < last || end <= start) continue;
    parent.append(document.createTextNode(points.slice(last, start).join("")));
    parent.append(el("mark", {}, points.slice(start, end).join("")));
    last = end;
  }
  parent.append(document.createTextNode(points.slice(last).join("")));
  return parent;
}

export function formatTime(ts) {
  const d = new Date(ts);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleString();
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
