// The room management page: for the users who create and manage rooms.
// It speaks the client WebSocket protocol (docs/protocol.md) in JSON; the server checks every
// request again, so what this page hides is a convenience, never the protection.

import { Connection, websocketUrl } from "./proto.js";
import { action, debounce, el, field, fill, say, select } from "./ui.js";

const TOKEN_KEY = "chatserver.token";
const ROLES = [
  ["members", "Members"],
  ["managers", "Managers"],
  ["presenters", "Presenters"],
];
const PRIVACY = [["open", "open"], ["closed", "closed"], ["secret", "secret"]];
const TYPES = [["normal", "normal"], ["auditorium", "auditorium"]];
const INVITATIONS = [["inherit", "as the category says"], ["off", "off"]];

const state = { conn: null, me: null, admin: false, categories: [], managed: [], room: null,
  holders: new Map(), addins: [], everyone: false };
const main = () => document.getElementById("main");

function key(p) {
  return `${p.kind}:${p.id}`;
}

function principalName(p) {
  if (p.kind === "everyone") return "everyone";
  const known = state.holders.get(key(p));
  const name = known ? known.name : `#${p.id}`;
  return p.kind === "group" ? `group ${name}` : name;
}

async function connect() {
  const conn = await Connection.open(await websocketUrl());
  conn.onEvent(onEvent);
  conn.closed.then(() => {
    if (state.conn === conn) say("The connection closed: reload the page to reconnect.", "error");
  });
  state.conn = conn;
  return conn;
}

async function start() {
  try {
    await connect();
  } catch (err) {
    say(`Cannot reach the server: ${err.message}. If the node runs, it may not admit this`
      + " page's origin on its WebSocket: see listen.websocket_origins.", "error");
    return;
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    try {
      await signedIn(await state.conn.call("auth", { token }));
      return;
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  showSignIn();
}

function showSignIn() {
  fill(document.getElementById("who"));
  const [userField, user] = field("User name", el("input", {
    name: "user", autocomplete: "username", required: true, maxlength: 256 }));
  const [passField, password] = field("Password", el("input", {
    name: "password", type: "password", autocomplete: "current-password", required: true }));
  const form = el("form", { class: "panel signin", id: "signin" },
    el("h2", { text: "Sign in" }), userField, passField,
    el("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", action(async () => {
    const reply = await state.conn.call("auth", { user: user.value, password: password.value });
    sessionStorage.setItem(TOKEN_KEY, reply.token);
    await signedIn(reply);
  }));
  fill(main(), form);
  user.focus();
}

async function signedIn(reply) {
  state.me = reply.user;
  say("");
  const logout = el("button", { class: "plain", type: "button", text: "Sign out",
    onclick: action(async () => {
      sessionStorage.removeItem(TOKEN_KEY);
      const old = state.conn;
      state.conn = null;
      try { await old.call("logout"); } catch { /* closed either way */ }
      await connect();
      showSignIn();
    }) });
  fill(document.getElementById("who"),
    el("span", { text: `Signed in as ${reply.user.display_name || reply.user.name}` }), logout);
  state.categories = (await state.conn.call("categories")).categories;
  state.admin = state.categories.some((c) => Array.isArray(c.allowed));
  await refreshManaged();
  render();
}

async function refreshManaged() {
  state.managed = (await state.conn.call("rooms.managed")).rooms;
}

function creatable() {
  return state.categories.filter((c) => c.can_create);
}

function render() {
  const list = el("ul", { class: "list rooms", id: "room-list" });
  for (const room of state.managed) list.append(roomItem(room));
  if (!state.managed.length) list.append(el("li", { class: "muted", text: "You manage no room." }));
  const side = el("section", { "aria-label": "Your rooms" }, el("h2", { text: "Rooms you manage" }),
    list);
  if (creatable().length) {
    side.append(el("p", {}, el("button", { type: "button", id: "new-room", text: "New room",
      onclick: () => showCreate() })));
  }
  if (state.admin) side.append(findAnyRoom());
  const editor = el("div", { id: "editor" });
  fill(main(), el("div", { class: "layout" }, el("div", {}, side), editor));
  if (state.room) showRoom(state.room.id);
  else fill(editor, el("section", {}, el("p", { class: "muted",
    text: creatable().length || state.managed.length
      ? "Choose a room, or make a new one."
      : "You manage no room and may not create rooms. Ask an administrator." })));
}

function roomItem(room) {
  const button = el("button", { class: "room", type: "button", "data-id": room.id,
    "aria-current": state.room && state.room.id === room.id ? "true" : "false",
    onclick: () => showRoom(room.id) }, room.name);
  if (room.disabled) button.append(el("span", { class: "tag off", text: "disabled" }));
  else button.append(el("span", { class: "tag", text: room.privacy }));
  return el("li", {}, button);
}

function findAnyRoom() {
  const results = el("ul", { class: "list rooms" });
  const search = debounce(action(async () => {
    const reply = await state.conn.call("rooms", { query: input.value, limit: 20 });
    fill(results, reply.rooms.map(roomItem));
  }), 250);
  const [wrap, input] = field("Find any room (administrators)", el("input", {
    type: "search", maxlength: 256, oninput: () => search() }));
  return el("div", {}, wrap, results);
}

function showCreate() {
  state.room = null;
  const [nameField, name] = field("Name", el("input", { name: "name", required: true,
    maxlength: 256 }));
  const [descField, description] = field("Description", el("input", { name: "description",
    maxlength: 256 }));
  const [catField, category] = field("Category",
    select("category", creatable().map((c) => [c.id, c.name]), creatable()[0].id));
  const [privField, privacy] = field("Privacy", select("privacy", PRIVACY, "closed"));
  const [typeField, type] = field("Type", select("type", TYPES, "normal"));
  const [invField, invitations] = field("Invitations", select("invitations", INVITATIONS,
    "inherit"));
  const form = el("form", { class: "panel", id: "create-form" }, el("h2", { text: "New room" }),
    nameField, descField, catField, privField, typeField, invField,
    el("button", { type: "submit", text: "Create" }));
  form.addEventListener("submit", action(async () => {
    const reply = await state.conn.call("room.create", {
      name: name.value, description: description.value, category: Number(category.value),
      privacy: privacy.value, type: type.value, invitations: invitations.value });
    say(`Room “${reply.room.name}” created.`, "ok");
    await refreshManaged();
    state.room = reply.room;
    render();
  }));
  fill(document.getElementById("editor"), form);
  name.focus();
}

async function loadChoices(roomId) {
  const reply = await state.conn.call("room.choices", { room: roomId });
  state.holders = new Map(reply.holders.map((h) => [key(h), h]));
  state.addins = reply.addins;
  state.everyone = reply.everyone;
}

async function showRoom(roomId) {
  const room = (await state.conn.call("room.get", { room: roomId })).room;
  state.room = room;
  for (const button of document.querySelectorAll("#room-list button.room")) {
    button.setAttribute("aria-current", button.dataset.id === String(roomId) ? "true" : "false");
  }
  const editor = document.getElementById("editor");
  if (!room.can_manage) {
    fill(editor, el("section", {}, el("p", { text: "You may not manage this room." })));
    return;
  }
  await loadChoices(roomId);
  fill(editor, settingsPanel(room), rolesPanel(room));
}

function settingsPanel(room) {
  const category = state.categories.find((c) => c.id === room.category);
  const [nameField, name] = field("Name", el("input", { name: "name", value: room.name,
    required: true, maxlength: 256 }));
  const [descField, description] = field("Description", el("input", { name: "description",
    value: room.description, maxlength: 256 }));
  const [privField, privacy] = field("Privacy", select("privacy", PRIVACY, room.privacy));
  const [typeField, type] = field("Type", select("type", TYPES, room.type));
  const [invField, invitations] = field("Invitations", select("invitations", INVITATIONS,
    room.invitations));
  const addinOptions = [[0, "none"], ...state.addins.map((a) => [a.id, a.name])];
  const [addinField, addin] = field("Add-in", select("addin", addinOptions, room.addin || 0));
  const form = el("form", { class: "panel", id: "settings-form" },
    el("h2", {}, room.name, el("span", { class: room.disabled ? "tag off" : "tag",
      text: room.disabled ? "disabled" : `${room.privacy}, ${room.type}` })),
    el("p", { class: "muted", text: `Category: ${category ? category.name : room.category}` }),
    nameField, descField, el("div", { class: "inline" }, privField, typeField, invField,
      addinField),
    el("div", { class: "inline" },
      el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", class: "danger", id: "toggle-disabled",
        text: room.disabled ? "Enable the room" : "Disable the room",
        onclick: action(async () => {
          await state.conn.call(room.disabled ? "room.enable" : "room.disable", { room: room.id });
          say(room.disabled ? "The room is enabled." : "The room is disabled.", "ok");
          await refreshManaged();
          render();
        }) })));
  form.addEventListener("submit", action(async () => {
    const change = {};
    if (name.value !== room.name) change.name = name.value;
    if (description.value !== room.description) change.description = description.value;
    for (const [k, control] of [["privacy", privacy], ["type", type],
      ["invitations", invitations]]) {
      if (control.value !== room[k]) change[k] = control.value;
    }
    if (Number(addin.value) !== (room.addin || 0)) change.addin = Number(addin.value);
    if (!Object.keys(change).length) {
      say("Nothing to save.");
      return;
    }
    await state.conn.call("room.update", { room: room.id, ...change });
    say("Saved.", "ok");
    await refreshManaged();
    render();
  }));
  return form;
}

async function changeRoles(room, add, remove) {
  const reply = await state.conn.call("room.members", { room: room.id, add, remove });
  if (reply.room === null) {
    say("Done; you no longer manage this room.", "ok");
    state.room = null;
    await refreshManaged();
    render();
    return;
  }
  const invited = reply.invited.length ? ` ${reply.invited.length} invited.` : "";
  say(`Saved.${invited}`, "ok");
  await showRoom(room.id);
}

function rolesPanel(room) {
  const lists = ROLES.map(([role, label]) => {
    const list = el("ul", { class: "list", id: `role-${role}` });
    for (const p of room[role] || []) {
      list.append(el("li", {}, el("span", {}, principalName(p)),
        el("button", { type: "button", class: "plain", "aria-label":
          `Remove ${principalName(p)} from ${label.toLowerCase()}`, text: "Remove",
          onclick: action(() => changeRoles(room, undefined, { [role]: [p] })) })));
    }
    if (!(room[role] || []).length) list.append(el("li", { class: "muted", text: "nobody" }));
    return el("div", {}, el("h3", { text: label }), list);
  });
  const results = el("ul", { class: "list", id: "search-results", "aria-live": "polite" });
  const [roleField, role] = field("Role", select("role", ROLES.map(([r, l]) => [r, l.slice(0,
    -1).toLowerCase()]), "members"));
  const add = (p, label) => el("button", { type: "button", "aria-label": `Add ${label}`,
    text: "Add", onclick: action(() => changeRoles(room, { [role.value]: [p] }, undefined)) });
  const search = debounce(action(async () => {
    if (!query.value.trim()) {
      fill(results);
      return;
    }
    const reply = await state.conn.call("room.choices", { room: room.id, query: query.value });
    const items = [];
    for (const u of reply.users) {
      const label = u.display_name && u.display_name !== u.name
        ? `${u.name} (${u.display_name})` : u.name;
      items.push(el("li", {}, el("span", { text: label }),
        add({ kind: "user", id: u.id }, label)));
    }
    for (const g of reply.groups) {
      items.push(el("li", {}, el("span", { text: `group ${g.name}` }),
        add({ kind: "group", id: g.id }, `group ${g.name}`)));
    }
    if (reply.everyone) {
      items.push(el("li", {}, el("span", { text: "everyone" }),
        add({ kind: "everyone", id: 0 }, "everyone")));
    }
    if (!items.length) items.push(el("li", { class: "muted", text: "nobody found" }));
    fill(results, items);
  }), 250);
  const [queryField, query] = field("Find users and groups", el("input", {
    type: "search", id: "people-search", maxlength: 256, autocomplete: "off",
    oninput: () => search() }));
  return el("section", { id: "roles" }, el("h2", { text: "People" }),
    el("p", { class: "muted", text: "Adding members invites them when the room's invitations"
      + " are on." }),
    el("div", { class: "inline" }, queryField, roleField), results,
    el("div", { class: "roles" }, lists));
}

function onEvent(event) {
  if (!state.room) return;
  if ((event.ev === "room.updated" || event.ev === "room.removed")
    && event.room && (event.room.id === state.room.id || event.room === state.room.id)) {
    showRoom(state.room.id).catch(() => {});
  }
}

start();
