// The administrators' page, served by the management port: categories, groups, user policies,
// add-ins, run-time settings and the audit log, through the management API (/openapi.json).

import { api, query } from "./api.js";
import { action, debounce, el, field, fill, say, select, time } from "./ui.js";

const TABS = [
  ["categories", "Categories"], ["groups", "Groups"], ["users", "Users"], ["addins", "Add-ins"],
  ["settings", "Settings"], ["audit", "Audit log"],
];
const LISTS = [["allowed", "Allowed"], ["denied", "Denied"], ["creators", "Creators"]];
const SETTINGS = [
  ["default_chat_history", "number"], ["max_file_size_kb", "number"],
  ["participant_update_limit", "number"], ["room_management_url", "text"],
];
const names = { users: new Map(), groups: new Map() };
let tab = "categories";
const main = () => document.getElementById("main");

function principalName(p) {
  if (p.kind === "everyone") return "everyone";
  const known = (p.kind === "user" ? names.users : names.groups).get(p.id);
  const name = known ? known.name : `#${p.id}`;
  return p.kind === "group" ? `group ${name}` : name;
}

async function loadNames() {
  for (const u of await api.get("/api/v1/users?limit=1000")) names.users.set(u.id, u);
  names.groups.clear();
  for (const g of await api.get("/api/v1/groups")) names.groups.set(g.id, g);
}

function showSignIn() {
  fill(document.getElementById("who"));
  const [userField, user] = field("Administrator", el("input", { name: "user",
    autocomplete: "username", required: true }));
  const [passField, password] = field("Password", el("input", { name: "password",
    type: "password", autocomplete: "current-password", required: true }));
  const form = el("form", { class: "panel signin", id: "signin" }, el("h2", { text: "Sign in" }),
    userField, passField, el("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", action(async () => {
    await api.signIn(user.value, password.value);
    await signedIn();
  }));
  fill(main(), form);
  user.focus();
}

async function signedIn() {
  await loadNames();
  say("");
  fill(document.getElementById("who"), el("button", { type: "button", class: "plain",
    text: "Sign out", onclick: () => { api.forget(); showSignIn(); } }));
  await show(tab);
}

async function show(name) {
  tab = name;
  const tabs = el("nav", { class: "tabs", "aria-label": "Sections" }, TABS.map(([id, label]) =>
    el("button", { type: "button", "data-id": id, "aria-pressed": id === name ? "true" : "false",
      class: id === name ? "" : "plain", text: label, onclick: action(() => show(id)) })));
  const body = el("div", { id: "tab-body" });
  fill(main(), tabs, body);
  const views = { categories, groups, users, addins, settings, audit };
  await views[name](body);
}

// -- a principal picker: users by name (the API), groups (all, filtered here), everyone -------

function picker(label, onPick, { everyone = true } = {}) {
  const results = el("ul", { class: "list", "aria-live": "polite" });
  const search = debounce(action(async () => {
    const text = input.value.trim();
    if (!text) {
      fill(results);
      return;
    }
    const users = await api.get(`/api/v1/users${query({ query: text, limit: 20 })}`);
    const lower = text.toLowerCase();
    const items = [];
    const pick = (p, what) => el("li", {}, el("span", { text: what }), el("button", {
      type: "button", text: "Add", "aria-label": `Add ${what}`, onclick: action(() => onPick(p)) }));
    for (const u of users) items.push(pick({ kind: "user", id: u.id }, u.name));
    for (const g of names.groups.values()) {
      if (g.name.toLowerCase().includes(lower)) {
        items.push(pick({ kind: "group", id: g.id }, `group ${g.name}`));
      }
    }
    if (everyone && "everyone".includes(lower)) items.push(pick({ kind: "everyone", id: 0 },
      "everyone"));
    if (!items.length) items.push(el("li", { class: "muted", text: "nobody found" }));
    fill(results, items);
  }), 250);
  const [wrap, input] = field(label, el("input", { type: "search", autocomplete: "off",
    oninput: () => search() }));
  return el("div", {}, wrap, results);
}

// -- categories ------------------------------------------------------------------------------

async function categories(body, selected = null) {
  const all = await api.get("/api/v1/categories");
  const list = el("ul", { class: "list rooms", id: "category-list" }, all.map((c) => el("li", {},
    el("button", { type: "button", class: "room", "data-id": c.id,
      "aria-current": selected === c.id ? "true" : "false", text: c.name,
      onclick: action(() => categories(body, c.id)) }))));
  const [nameField, name] = field("New category's name", el("input", { required: true,
    maxlength: 256 }));
  const create = el("form", { class: "inline" }, nameField,
    el("button", { type: "submit", text: "Add category" }));
  create.addEventListener("submit", action(async () => {
    const made = await api.post("/api/v1/categories", { name: name.value });
    say(`Category “${made.name}” added.`, "ok");
    await categories(body, made.id);
  }));
  const editor = el("div", { id: "category-editor" });
  fill(body, el("div", { class: "layout" }, el("section", {}, el("h2", { text: "Categories" }),
    list, create), editor));
  const current = all.find((c) => c.id === selected);
  if (current) fill(editor, categoryEditor(body, current));
}

function categoryEditor(body, c) {
  const [nameField, name] = field("Name", el("input", { value: c.name, maxlength: 256 }));
  const [descField, description] = field("Description", el("input", { value: c.description,
    maxlength: 256 }));
  const box = (key, label) => {
    const input = el("input", { type: "checkbox", name: key, checked: c[key] });
    return [el("label", {}, input, ` ${label}`), input];
  };
  const [invLabel, invitations] = box("invitations", "invitations");
  const [fileLabel, fileUpload] = box("file_upload", "file upload");
  const [histLabel, chatHistory] = box("chat_history", "chat history");
  const form = el("form", { class: "panel", id: "category-form" },
    el("h2", { text: c.name }), nameField, descField,
    el("div", { class: "inline" }, invLabel, fileLabel, histLabel),
    el("div", { class: "inline" }, el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", class: "danger", text: "Remove category",
        onclick: action(async () => {
          await api.del(`/api/v1/categories/${c.id}`);
          say("Category removed.", "ok");
          await categories(body);
        }) })));
  form.addEventListener("submit", action(async () => {
    await api.patch(`/api/v1/categories/${c.id}`, { name: name.value,
      description: description.value, invitations: invitations.checked,
      file_upload: fileUpload.checked, chat_history: chatHistory.checked });
    say("Saved.", "ok");
    await categories(body, c.id);
  }));
  const change = async (add, remove) => {
    await api.patch(`/api/v1/categories/${c.id}`, { add, remove });
    say("Saved.", "ok");
    await categories(body, c.id);
  };
  const lists = LISTS.map(([key, label]) => {
    const items = c[key].map((p) => el("li", {}, el("span", { text: principalName(p) }),
      el("button", { type: "button", class: "plain", text: "Remove",
        "aria-label": `Remove ${principalName(p)} from ${label.toLowerCase()}`,
        onclick: action(() => change({}, { [key]: [p] })) })));
    if (!items.length) items.push(el("li", { class: "muted", text: "nobody" }));
    return el("div", {}, el("h3", { text: label }), el("ul", { class: "list",
      id: `list-${key}` }, items));
  });
  const [whichField, which] = field("Add to", select("list", LISTS, "allowed"));
  const people = el("section", {}, el("h2", { text: "Who is in it" }),
    el("div", { class: "roles" }, lists), whichField,
    picker("Find users and groups", (p) => change({ [which.value]: [p] }, {})));
  return el("div", {}, form, people);
}

// -- groups ----------------------------------------------------------------------------------

async function groups(body, selected = null) {
  await loadNames();
  const list = el("ul", { class: "list rooms" }, [...names.groups.values()].map((g) => el("li", {},
    el("button", { type: "button", class: "room", text: g.name,
      "aria-current": selected === g.id ? "true" : "false",
      onclick: action(() => groups(body, g.id)) }))));
  const [nameField, name] = field("New group's name", el("input", { required: true,
    maxlength: 256 }));
  const create = el("form", { class: "inline" }, nameField,
    el("button", { type: "submit", text: "Add group" }));
  create.addEventListener("submit", action(async () => {
    const made = await api.post("/api/v1/groups", { name: name.value });
    say(`Group “${made.name}” added.`, "ok");
    await groups(body, made.id);
  }));
  const editor = el("div", {});
  fill(body, el("div", { class: "layout" }, el("section", {}, el("h2", { text: "Groups" }), list,
    create), editor));
  if (selected === null) return;
  const g = await api.get(`/api/v1/groups/${selected}`);
  const change = async (add, remove) => {
    await api.patch(`/api/v1/groups/${g.id}/members`, { add, remove });
    say("Saved.", "ok");
    await groups(body, g.id);
  };
  const members = (g.members || []).map((p) => el("li", {}, el("span", { text: principalName(p) }),
    el("button", { type: "button", class: "plain", text: "Remove",
      "aria-label": `Remove ${principalName(p)}`, onclick: action(() => change([], [p])) })));
  if (!members.length) members.push(el("li", { class: "muted", text: "no members" }));
  fill(editor, el("section", {}, el("h2", { text: g.name }),
    el("p", { class: "muted", text: g.description }), el("ul", { class: "list" }, members),
    picker("Add users and groups", (p) => change([p], []), { everyone: false }),
    el("button", { type: "button", class: "danger", text: "Remove group",
      onclick: action(async () => {
        await api.del(`/api/v1/groups/${g.id}`);
        say("Group removed.", "ok");
        await groups(body);
      }) })));
}

// -- users and their policy ------------------------------------------------------------------

async function users(body) {
  const rows = el("tbody", {});
  const load = action(async () => {
    const found = await api.get(`/api/v1/users${query({ query: input.value, limit: 100 })}`);
    fill(rows, found.map((u) => {
      const policy = select("policy", [["default", "default"], ["on", "on"], ["off", "off"]],
        u.policy === null ? "default" : u.policy ? "on" : "off");
      policy.setAttribute("aria-label", `Persistent chat for ${u.name}`);
      policy.addEventListener("change", action(async () => {
        const value = policy.value === "default" ? null : policy.value === "on";
        await api.put(`/api/v1/users/${u.id}/policy`, { persistent_chat_enabled: value });
        say(`Policy of ${u.name} saved.`, "ok");
      }));
      return el("tr", {}, el("td", { text: u.name }), el("td", { text: u.display_name }),
        el("td", { text: u.is_admin ? "yes" : "" }),
        el("td", { text: u.persistent_chat_enabled ? "on" : "off" }), el("td", {}, policy));
    }));
  });
  const [wrap, input] = field("Find users", el("input", { type: "search",
    oninput: debounce(load, 250) }));
  fill(body, el("section", {}, el("h2", { text: "Users and their persistent chat policy" }), wrap,
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {},
      ["Name", "Display name", "Admin", "Chat now", "Policy"].map((h) => el("th", { scope: "col",
        text: h })))), rows))));
  await load();
}

// -- add-ins ---------------------------------------------------------------------------------

async function addins(body) {
  const all = await api.get("/api/v1/addins");
  const rows = all.map((a) => el("tr", {}, el("td", { text: a.name }), el("td", { text: a.url }),
    el("td", {}, el("button", { type: "button", class: "danger", text: "Remove",
      "aria-label": `Remove ${a.name}`, onclick: action(async () => {
        await api.del(`/api/v1/addins/${a.id}`);
        say("Add-in removed.", "ok");
        await addins(body);
      }) }))));
  const [nameField, name] = field("Name", el("input", { required: true, maxlength: 256 }));
  const [urlField, url] = field("URL (https://…)", el("input", { type: "url", required: true }));
  const form = el("form", { class: "inline" }, nameField, urlField,
    el("button", { type: "submit", text: "Add add-in" }));
  form.addEventListener("submit", action(async () => {
    await api.post("/api/v1/addins", { name: name.value, url: url.value });
    say("Add-in added.", "ok");
    await addins(body);
  }));
  fill(body, el("section", {}, el("h2", { text: "Add-ins" }), el("div", { class: "scroll" },
    el("table", {}, el("thead", {}, el("tr", {}, ["Name", "URL", ""].map((h) => el("th", {
      scope: "col", text: h })))), el("tbody", {}, rows))), form));
}

// -- run-time settings -----------------------------------------------------------------------

async function settings(body) {
  const config = await api.get("/api/v1/config");
  const inputs = {};
  const fields = SETTINGS.map(([key, type]) => {
    const given = config.global[key];
    const [wrap, input] = field(`${key} (now ${config.effective[key] || "—"})`, el("input", {
      type, name: key, value: given === undefined ? "" : given,
      placeholder: `default: ${config.defaults[key]}` }));
    inputs[key] = [input, type];
    return wrap;
  });
  const form = el("form", { class: "panel", id: "settings-form" },
    el("h2", { text: `Run-time settings (deployment-wide; this node: ${config.node})` }),
    el("p", { class: "muted", text: "Empty: the default from the configuration." }), fields,
    el("button", { type: "submit", text: "Save" }));
  form.addEventListener("submit", action(async () => {
    const patch = {};
    for (const [key, [input, type]] of Object.entries(inputs)) {
      if (input.value === "") patch[key] = null;
      else patch[key] = type === "number" ? Number(input.value) : input.value;
    }
    await api.patch("/api/v1/config", patch);
    say("Settings saved.", "ok");
    await settings(body);
  }));
  fill(body, form);
}

// -- the audit log ---------------------------------------------------------------------------

async function audit(body) {
  const rows = el("tbody", { id: "audit-rows" });
  let last = null;
  const more = el("button", { type: "button", class: "plain", text: "Older entries" });
  const load = async (fresh) => {
    if (fresh) {
      fill(rows);
      last = null;
    }
    const entries = await api.get(`/api/v1/audit${query({ limit: 50, action: actionInput.value,
      target: target.value, before: last ?? undefined })}`);
    for (const e of entries) {
      const detail = el("details", {}, el("summary", { text: "before / after" }),
        el("pre", { text: `before: ${JSON.stringify(e.before, null, 1)}\n`
          + `after: ${JSON.stringify(e.after, null, 1)}` }));
      rows.append(el("tr", {}, el("td", { text: time(e.ts) }), el("td", { text: e.actor }),
        el("td", { text: e.action }), el("td", { text: e.target }), el("td", {}, detail)));
      last = e.id;
    }
    more.hidden = entries.length < 50;
  };
  more.addEventListener("click", action(() => load(false)));
  const [actionField, actionInput] = field("Action (e.g. category.update)", el("input", {
    type: "search", maxlength: 64, oninput: debounce(action(() => load(true)), 300) }));
  const [targetField, target] = field("Target (e.g. category:2)", el("input", {
    type: "search", maxlength: 256, oninput: debounce(action(() => load(true)), 300) }));
  fill(body, el("section", {}, el("h2", { text: "Audit log, newest first" }),
    el("div", { class: "inline" }, actionField, targetField),
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {},
      ["When", "Who", "Action", "Target", "Change"].map((h) => el("th", { scope: "col",
        text: h })))), rows)), more));
  await load(true);
}

async function start() {
  if (api.token) {
    try {
      await signedIn();
      return;
    } catch {
      api.forget();
    }
  }
  showSignIn();
}

start();
