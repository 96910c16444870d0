// DOM helpers shared by the managers' and the administrators' pages.
// Every text that comes from the server goes in through textContent (el's string children,
// or the "text" property): nothing is ever parsed as HTML.

const ALLOWED_ATTRS = new Set([
  "id", "class", "type", "name", "value", "placeholder", "for", "role", "href", "title",
  "autocomplete", "maxlength", "minlength", "required", "disabled", "checked", "selected",
  "aria-label", "aria-live", "aria-current", "aria-pressed", "aria-controls", "aria-expanded",
  "tabindex", "hidden", "data-role", "data-kind", "data-id", "spellcheck", "inputmode", "size",
  "rows", "scope", "colspan", "open",
]);

/** el("button", {class: "x", onclick: f}, "text", child, …): a new element. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "text") {
      node.textContent = String(value);
    } else if (ALLOWED_ATTRS.has(key)) {
      node.setAttribute(key, value === true ? "" : String(value));
    } else {
      throw new Error(`attribute ${key} is not allowed`);
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A labelled form control: returns [wrapper, control]. */
export function field(label, control) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 10)}`;
  control.id = id;
  return [el("div", { class: "field" }, el("label", { for: id, text: label }), control), control];
}

export function select(name, options, value) {
  const node = el("select", { name });
  for (const [optionValue, label] of options) {
    const option = el("option", { value: optionValue, text: label });
    if (String(optionValue) === String(value)) option.selected = true;
    node.append(option);
  }
  return node;
}

/** Show a message in the page's status line (role=status, read out by screen readers). */
export function say(text, kind = "info") {
  const line = document.getElementById("status");
  if (!line) return;
  line.className = `status ${kind}`;
  line.textContent = text;
}

export function errorText(err) {
  if (err && err.code) return `${err.message} (${err.code})`;
  return String(err && err.message ? err.message : err);
}

/** Run an async action from a button, showing errors in the status line. */
export function action(fn) {
  return async (event) => {
    if (event) event.preventDefault();
    try {
      await fn(event);
    } catch (err) {
      say(errorText(err), "error");
    }
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function time(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
