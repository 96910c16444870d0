// The chat client: signs in, lists rooms, shows a room's messages live, posts, files, search,
// mentions, feeds, roster, invitations, add-ins. Talks the documented WebSocket protocol
// (docs/protocol.md) and the HTTP file endpoints; every user-written string goes in as text.

import { ChatError, Connection } from "./conn.js";
import { VirtualList } from "./list.js";
import { appendText, el, formatTime, safeUrl } from "./text.js";
import { Uploads } from "./files.js";
import { makeEvents } from "./events.js";
import { makeOutbox } from "./outbox.js";
import { makePanels } from "./panels.js";
import { makeLifecycle } from "./lifecycle.js";
import { RoomData } from "./roomdata.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "chatserver.token"; // shared with /manage/ and the single sign-on page
const OUTBOX_KEY = "chat.outbox";
const JOINED_KEY = "chat.joined";
const PAGE = 100;

const state = {
  conn: null,
  hello: null,
  me: null,
  token: null,
  categories: new Map(),
  rooms: new Map(),
  current: null,
  roomData: new Map(), // room id -> RoomData
  joined: new Set(JSON.parse(sessionStorage.getItem(JOINED_KEY) || "[]")),
  outbox: JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || "[]"),
  names: new Map(), // user id -> display name
  lookups: new Map(), // room id -> Set of user ids to look up
  invitations: [],
  mentions: [],
  feeds: [],
  feedHits: [],
  panel: null,
  searchCursor: null,
  roster: null,
  sending: false,
};
window.chatState = state; // for the browser tests and debugging

function roomData(id) {
  let data = state.roomData.get(id);
  if (!data) {
    data = new RoomData(id);
    state.roomData.set(id, data);
  }
  return data;
}

function saveOutbox() { sessionStorage.setItem(OUTBOX_KEY, JSON.stringify(state.outbox)); }
function saveJoined() { sessionStorage.setItem(JOINED_KEY, JSON.stringify([...state.joined])); }

// -- connection --------------------------------------------------------------------------

async function nodeUrls() {
  const response = await fetch("/client.json", { cache: "no-store" });
  const info = await response.json();
  const extra = new URLSearchParams(location.hash.slice(1)).get("nodes");
  const urls = extra ? extra.split(",").filter((u) => /^wss?:\/\//.test(u)) : [];
  return [...urls, ...info.websocket];
}

function setState(name, detail) {
  const node = $("state");
  node.dataset.state = name;
  const words = { connecting: "connecting…", online: "online", reconnecting: "reconnecting", offline: "offline" };
  node.textContent = detail && name !== "connecting" ? `${words[name]} (${detail})` : words[name];
}

async function connect(credentials) {
  const urls = await nodeUrls();
  const conn = new Connection(urls, { event: (ev) => onEvent(ev), state: setState, ready: onReady, ended: onEnded });
  state.conn = conn;
  try {
    await conn.start(credentials);
  } catch (err) {
    conn.stop();
    state.conn = null;
    throw err;
  }
}

function onEnded(reason) {
  if (reason === "logged_out" || reason === "revoked" || reason === "unauthenticated") {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignin(reason === "logged_out" ? "" : "Your session ended: sign in again.");
  }
}

async function onReady(hello, auth) {
  state.hello = hello;
  state.me = auth.user;
  state.token = auth.token;
  state.names.set(auth.user.id, auth.user.display_name);
  sessionStorage.setItem(TOKEN_KEY, auth.token);
  if (hello.pool && hello.pool.active) addPoolNodes(hello.pool.active);
  state.invitations = auth.invitations || [];
  $("me").textContent = auth.user.display_name;
  const manage = hello.room_management_url;
  const href = manage && (manage.startsWith("/") ? manage : safeUrl(manage));
  $("manage-link").hidden = !href;
  if (href) $("manage-link").href = href;
  $("signin").hidden = true;
  $("app").hidden = false;
  await loadRooms();
  renderInvitations();
  // Rejoin what was open, from where we were, then send what is still unacknowledged.
  await Promise.all([...state.joined].map((id) => join(id).catch(() => {})));
  if (state.current !== null && !state.joined.has(state.current)) state.current = null;
  renderRoom();
  flushOutbox();
  lifecycle.flushChanges();
  loadMentions().catch(() => {});
  loadFeeds().catch(() => {});
}

function addPoolNodes(active) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  for (const node of active) {
    if (!node.websocket) continue;
    let [host, port] = [node.websocket.slice(0, node.websocket.lastIndexOf(":")), node.websocket.slice(node.websocket.lastIndexOf(":") + 1)];
    if (host === "0.0.0.0" || host === "::" || host === "[::]") host = location.hostname;
    const url = `${scheme}://${host}:${port}`;
    if (!state.conn.urls.includes(url)) state.conn.urls.push(url);
  }
}

function request(op, fields) {
  return state.conn ? state.conn.request(op, fields) : Promise.reject(new ChatError("disconnected", "offline"));
}

// -- rooms ---------------------------------------------------------------------------------

async function loadRooms() {
  const categories = await request("categories");
  state.categories = new Map(categories.categories.map((c) => [c.id, c]));
  const rooms = new Map();
  let cursor = null;
  for (let page = 0; page < 20; page++) {
    const reply = await request("rooms", { limit: 500, ...(cursor ? { cursor } : {}) });
    for (const room of reply.rooms) rooms.set(room.id, room);
    cursor = reply.cursor;
    if (!cursor) break;
  }
  state.rooms = rooms;
  for (const room of rooms.values()) {
    const data = roomData(room.id);
    if (!state.joined.has(room.id)) {
      data.lastSeq = Math.max(data.lastSeq, room.last_seq);
      data.marker = room.last_seq - room.unread;
    }
    data.mentions = room.mentions;
  }
  renderRooms();
  renderCreate();
}

function renderCreate() {
  const select = $("create-category");
  select.replaceChildren();
  for (const cat of state.categories.values()) {
    if (cat.can_create) select.append(el("option", { value: cat.id }, cat.name));
  }
  $("create-form").closest("details").hidden = !select.options.length;
}

function renderRooms() {
  const filter = $("room-filter").value.trim().toLowerCase();
  const groups = new Map();
  for (const room of state.rooms.values()) {
    if (filter && !room.name.toLowerCase().includes(filter)) continue;
    const cat = state.categories.get(room.category);
    const name = cat ? cat.name : "Other";
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(room);
  }
  const out = [];
  let total = 0;
  for (const name of [...groups.keys()].sort((a, b) => a.localeCompare(b))) {
    const list = el("ul");
    for (const room of groups.get(name)) {
      const data = roomData(room.id);
      total += data.mentions || 0;
      const button = el(
        "button",
        {
          class: "room-button" + (data.unread ? " has-unread" : ""),
          "aria-current": state.current === room.id ? "true" : "false",
          "data-room": room.id,
          onclick: () => openRoom(room.id),
        },
        el("bdi", { class: "name", title: room.description || null }, room.name),
      );
      if (data.mentions) button.append(el("span", { class: "badge mentions", title: "mentions" }, `@${data.mentions}`));
      if (data.unread) button.append(el("span", { class: "badge unread", title: "unread" }, String(data.unread)));
      list.append(el("li", {}, button));
    }
    out.push(el("section", {}, el("h2", {}, el("bdi", {}, name)), list));
  }
  if (!out.length) out.push(el("p", { class: "empty" }, filter ? "No room matches." : "No rooms yet."));
  $("room-groups").replaceChildren(...out);
  $("mention-total").hidden = !total;
  $("mention-total").textContent = String(total);
}

async function join(id) {
  const data = roomData(id);
  const since = data.hi;
  const resume = since !== null && data.tail;
  const reply = await request("join", { room: id, ...(resume ? { since } : {}), ...lifecycle.joinFields(resume ? data : {}) });
  state.joined.add(id);
  saveJoined();
  if (since === null || !data.tail) {
    data.reset();
    data.oldest = false;
  }
  data.lastSeq = reply.last_seq;
  data.marker = reply.last_seq - reply.unread;
  data.mentions = reply.mentions;
  data.addin = reply.addin_info || null;
  data.tail = true;
  if (reply.cleared && since !== null) {
    for (const seq of [...data.seqs]) if (seq > since) data.msgs.delete(seq);
    data.seqs = data.seqs.filter((s) => data.msgs.has(s));
  }
  for (const msg of reply.messages) data.add(msg);
  lifecycle.applyJoin(data, reply);
  if (reply.gap) await fillForward(data, since);
  if (!reply.messages.length && !data.seqs.length) data.oldest = true;
  if (since === null && reply.messages.length && reply.messages[0].seq === 1) data.oldest = true;
  queueLookups(id, reply.messages);
  if (state.current === id) renderRoom();
  renderRooms();
}

// After a `join` with `gap`: page forward from `since` until the reply's messages.
async function fillForward(data, since) {
  let after = since;
  for (;;) {
    const page = await request("history", { room: data.id, after, limit: 500 });
    for (const msg of page.messages) data.add(msg);
    queueLookups(data.id, page.messages);
    if (!page.more || !page.messages.length) break;
    after = page.messages[page.messages.length - 1].seq;
  }
}

async function openRoom(id, { focus = true } = {}) {
  $("sidebar").classList.remove("open");
  $("menu").setAttribute("aria-expanded", "false");
  state.current = id;
  if (!state.joined.has(id)) {
    try {
      await join(id);
    } catch (err) {
      state.current = null;
      showError($("composer-error"), err);
      renderRoom();
      return;
    }
  }
  renderRoom();
  renderRooms();
  if (state.panel === "roster") showRoster();
  if (state.panel === "addin") showAddin();
  if (focus) $("composer-text").focus();
}

async function leaveRoom() {
  const id = state.current;
  if (id === null) return;
  await request("leave", { room: id }).catch(() => {});
  state.joined.delete(id);
  saveJoined();
  state.roomData.delete(id);
  state.current = null;
  renderRoom();
  renderRooms();
}

// -- the message list ----------------------------------------------------------------------

const list = new VirtualList($("messages"), $("messages-inner"), renderItem, (item) => item.key);
list.onScrollTop = () => loadOlder();
list.onScrollBottom = () => loadNewer();
list.onViewed = (item) => markRead(item);

function items(data) {
  const out = [];
  if (!data.oldest) out.push({ key: "older", older: true });
  for (const seq of data.seqs) out.push({ key: `m${seq}`, msg: data.msgs.get(seq) });
  if (data.tail) {
    const held = new Set(data.seqs.map((s) => data.msgs.get(s).cid));
    for (const post of state.outbox) {
      if (post.room === data.id && !held.has(post.cid)) out.push({ key: `p${post.cid}`, pending: post });
    }
  }
  return out;
}

function renderRoom() {
  const id = state.current;
  const room = id !== null ? state.rooms.get(id) : null;
  const open = id !== null && room;
  $("room-head").hidden = !open;
  $("messages").hidden = !open;
  $("composer").hidden = !open;
  $("empty").hidden = !!open;
  if (!open) {
    list.clear();
    list.roomId = null;
    return;
  }
  const data = roomData(id);
  $("room-name").replaceChildren(el("bdi", {}, room.name));
  $("room-description").replaceChildren(el("bdi", {}, room.description || ""));
  $("show-addin").hidden = !data.addin;
  lifecycle.renderReplying();
  if (list.roomId !== id) {
    list.clear();
    list.roomId = id;
    list.stick = true;
  }
  list.setItems(items(data), { keepAnchor: !list.stick });
}

function senderName(sender) {
  return state.names.get(sender.id) || sender.name;
}

function renderItem(item) {
  if (item.older) return el("div", { class: "msg older" }, "Loading older messages…");
  if (item.pending) {
    const post = item.pending;
    return el(
      "div",
      { class: "msg" },
      el("div", { class: "meta" }, el("bdi", { class: "who" }, state.me ? state.me.display_name : ""), el("span", { class: "pending" }, post.failed ? "not sent" : "sending…")),
      appendText(el("div", { class: "text", dir: "auto" }), post.text),
    );
  }
  const msg = item.msg;
  const data = roomData(msg.room);
  const meta = el(
    "div",
    { class: "meta" },
    el("bdi", { class: "who", title: `@${msg.sender.name}` }, senderName(msg.sender)),
    el("time", { datetime: new Date(msg.ts).toISOString() }, formatTime(msg.ts)),
  );
  const classes = "msg" + (data.jumped === msg.seq ? " jumped" : "");
  return el("div", { class: classes, "data-seq": msg.seq }, meta, ...lifecycle.body(msg, meta)); // lifecycle.js
}

async function loadOlder() {
  const data = state.current !== null ? roomData(state.current) : null;
  if (!data || data.oldest || data.loadingOlder || data.lo === null) return;
  data.loadingOlder = true;
  try {
    const page = await request("history", { room: data.id, before: data.lo, limit: PAGE });
    for (const msg of page.messages) data.add(msg);
    if (!page.more) data.oldest = true;
    queueLookups(data.id, page.messages);
    if (state.current === data.id) list.setItems(items(data), { keepAnchor: true });
  } finally {
    data.loadingOlder = false;
  }
  if (state.current === data.id && !data.oldest && $("messages").scrollTop < 400) loadOlder();
}

async function loadNewer() {
  const data = state.current !== null ? roomData(state.current) : null;
  if (!data || data.tail || data.loadingNewer || data.hi === null) return;
  data.loadingNewer = true;
  try {
    const page = await request("history", { room: data.id, after: data.hi, limit: PAGE });
    for (const msg of page.messages) data.add(msg);
    if (!page.more) data.tail = true;
    queueLookups(data.id, page.messages);
    if (state.current === data.id) list.setItems(items(data), { keepAnchor: true });
  } finally {
    data.loadingNewer = false;
  }
}

async function jumpTo(roomId, seq) {
  if (!state.rooms.has(roomId)) return;
  await openRoom(roomId, { focus: false });
  const data = roomData(roomId);
  if (!data.msgs.has(seq)) {
    const page = await request("history", { room: roomId, around: seq, limit: PAGE });
    data.reset();
    for (const msg of page.messages) data.add(msg);
    data.lastSeq = Math.max(data.lastSeq, ...page.messages.map((m) => m.seq));
    data.oldest = !page.more;
    data.tail = false;
    queueLookups(roomId, page.messages);
  }
  data.jumped = seq;
  list.clear();
  list.roomId = roomId;
  list.stick = false;
  list.setItems(items(data));
  list.scrollToKey(`m${seq}`);
  $("messages").focus();
}

// -- read markers --------------------------------------------------------------------------

let readTimer = 0;
function markRead(item) {
  if (!item || !item.msg || document.hidden || !document.hasFocus()) return;
  const data = roomData(item.msg.room);
  if (item.msg.seq <= data.marker) return;
  data.wantMarker = Math.max(data.wantMarker || 0, item.msg.seq);
  clearTimeout(readTimer);
  readTimer = setTimeout(() => sendRead(data), 300);
}

async function sendRead(data) {
  const seq = data.wantMarker;
  if (!seq || seq <= data.marker) return;
  data.marker = seq;
  if (data.marker >= data.lastSeq) data.mentions = 0;
  renderRooms();
  try {
    await request("read", { room: data.id, seq });
  } catch {
    // The marker comes back when the user reads again.
  }
}

window.addEventListener("focus", () => list.schedule());

// -- display names -------------------------------------------------------------------------

let lookupTimer = 0;
function queueLookups(roomId, messages) {
  let set = state.lookups.get(roomId);
  for (const msg of messages) {
    if (state.names.has(msg.sender.id)) continue;
    if (!set) state.lookups.set(roomId, (set = new Set()));
    set.add(msg.sender.id);
  }
  if (set && !lookupTimer) lookupTimer = setTimeout(runLookups, 50);
}

async function runLookups() {
  lookupTimer = 0;
  const work = [...state.lookups.entries()];
  state.lookups.clear();
  let found = false;
  for (const [room, ids] of work) {
    const wanted = [...ids].filter((id) => !state.names.has(id));
    for (let i = 0; i < wanted.length; i += 100) {
      try {
        const reply = await request("users.lookup", { room, ids: wanted.slice(i, i + 100) });
        for (const user of reply.users) state.names.set(user.id, user.display_name);
        found = found || reply.users.length > 0;
      } catch {
        // Names stay the user names.
      }
    }
  }
  if (found && state.current !== null) {
    const data = roomData(state.current);
    list.clear();
    list.roomId = state.current;
    list.setItems(items(data));
  }
}

// -- posting (outbox.js) ------------------------------------------------------------------

const { submitPost, flushOutbox, autosize } = makeOutbox({
  state,
  request,
  roomData,
  sendRead,
  renderRoom,
  showError: (...args) => showError(...args),
  list,
  saveOutbox,
  takeReply: (room) => lifecycle.takeReply(room),
});

// -- events (events.js) -------------------------------------------------------------------

const { onEvent } = makeEvents({
  state,
  roomData,
  renderRooms,
  renderRoom,
  renderInvitations: (...args) => renderInvitations(...args),
  loadRooms,
  join,
  queueLookups,
  sendRead,
  saveOutbox,
  saveJoined,
  request,
  list,
  addPoolNodes,
  renderMentions: (...args) => renderMentions(...args),
  renderFeeds: (...args) => renderFeeds(...args),
  renderRoster: (...args) => renderRoster(...args),
  showRoster: (...args) => showRoster(...args),
  onChanged: (ev) => lifecycle.onChanged(ev),
  onReply: (msg) => lifecycle.onReply(msg),
});

// -- the side panel and invitations (panels.js) ---------------------------------------------

const { openPanel, closePanel, renderInvitations, runSearch, loadMentions, renderMentions, loadFeeds, renderFeeds, showRoster, renderRoster, showAddin } = makePanels({
  state,
  request,
  roomData,
  senderName,
  jumpTo,
  openRoom,
  showError,
});

// -- edits, deletes, replies, threads, reactions (lifecycle.js) -----------------------------

const renderFile = (file) => uploads.render(file, () => list.schedule());
const lifecycle = makeLifecycle({ state, request, roomData, list, renderRoom, senderName, jumpTo, showError, openPanel, renderFile });

// -- sign in and out -----------------------------------------------------------------------

function showError(node, err) {
  node.textContent = err instanceof ChatError || err instanceof Error ? err.message : String(err);
}

function showSignin(message) {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("signin-user").focus();
  fetch("/client.json", { cache: "no-store" })
    .then((r) => r.json())
    .then((info) => { $("signin-sso").hidden = !info.sso_url; })
    .catch(() => {});
}

async function signOut() {
  sessionStorage.clear();
  if (state.conn) {
    state.conn.stopped = true;
    await request("logout").catch(() => {});
    state.conn.stop();
  }
  location.reload();
}

// -- wiring --------------------------------------------------------------------------------

const uploads = new Uploads({
  token: () => state.token,
  limitBytes: () => (state.hello ? state.hello.limits.max_file_size_kb * 1024 : Infinity),
  progress: (name, percent) => {
    $("upload").hidden = percent === null;
    $("upload-name").textContent = name;
    $("upload-progress").value = percent ?? 0;
  },
  error: (message) => { $("composer-error").textContent = message; },
});

function wire() {
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    try {
      await connect({ user: $("signin-user").value, password: $("signin-password").value });
      $("signin-password").value = "";
    } catch (err) {
      showError($("signin-error"), err);
    }
  });
  $("signout").addEventListener("click", signOut);
  $("room-filter").addEventListener("input", renderRooms);
  $("menu").addEventListener("click", () => {
    const open = $("sidebar").classList.toggle("open");
    $("menu").setAttribute("aria-expanded", String(open));
  });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); submitPost(); });
  $("composer-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submitPost();
    }
  });
  $("composer-text").addEventListener("input", autosize);
  $("leave-room").addEventListener("click", leaveRoom);
  $("show-roster").addEventListener("click", showRoster);
  $("show-addin").addEventListener("click", showAddin);
  $("panel-close").addEventListener("click", closePanel);
  $("open-search").addEventListener("click", () => { openPanel("search", "Search"); $("search-text").focus(); });
  $("open-mentions").addEventListener("click", () => { openPanel("mentions", "Mentions"); renderMentions(); loadMentions().catch(() => {}); });
  $("open-feeds").addEventListener("click", () => { openPanel("feeds", "Feeds"); renderFeeds(); });
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(false); });
  $("search-more").addEventListener("click", () => runSearch(true));
  $("feed-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("feed-error").textContent = "";
    try {
      await request("feed.add", { name: $("feed-name").value, query: $("feed-query").value });
      $("feed-name").value = "";
      $("feed-query").value = "";
    } catch (err) {
      showError($("feed-error"), err);
    }
  });
  $("create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("create-error").textContent = "";
    try {
      const reply = await request("room.create", {
        name: $("create-name").value,
        category: Number($("create-category").value),
        privacy: $("create-privacy").value,
      });
      $("create-name").value = "";
      await loadRooms();
      await openRoom(reply.room.id);
    } catch (err) {
      showError($("create-error"), err);
    }
  });
  $("password-form").addEventListener("submit", async (e) => {
    // The user's own change (password.change): the server checks the policy and signs the
    // user's other sessions out; this one stays.
    e.preventDefault();
    const result = $("password-result");
    result.textContent = "";
    try {
      await request("password.change", { password: $("password-old").value, new_password: $("password-new").value });
      $("password-old").value = "";
      $("password-new").value = "";
      result.textContent = "Password changed; your other sessions were signed out.";
    } catch (err) {
      showError(result, err);
    }
  });
  $("file-input").addEventListener("change", () => {
    const file = $("file-input").files[0];
    if (file && state.current !== null) uploads.upload(state.current, file);
    $("file-input").value = "";
  });
  const main = $("main");
  let depth = 0;
  main.addEventListener("dragenter", (e) => {
    if (state.current === null || !e.dataTransfer.types.includes("Files")) return;
    depth += 1;
    $("dropzone").hidden = false;
  });
  main.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("dropzone").hidden = true; });
  main.addEventListener("dragover", (e) => { if (state.current !== null) e.preventDefault(); });
  main.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("dropzone").hidden = true;
    const file = e.dataTransfer.files[0];
    if (file && state.current !== null) uploads.upload(state.current, file);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.panel) closePanel();
    if ((e.ctrlKey || e.metaKey) && e.key === "k") {
      e.preventDefault();
      openPanel("search", "Search");
      $("search-text").focus();
    }
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      const buttons = [...document.querySelectorAll(".room-button")];
      const at = buttons.findIndex((b) => Number(b.dataset.room) === state.current);
      const next = buttons[at + (e.key === "ArrowUp" ? -1 : 1)];
      if (next) { e.preventDefault(); openRoom(Number(next.dataset.room)); }
    }
  });
  setInterval(() => { if (state.conn && state.conn.online) loadRooms().catch(() => {}); }, 60000);
}

async function boot() {
  wire();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showSignin();
  try {
    await connect({ token });
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignin(err.code === "unauthenticated" ? "Your session ended: sign in again." : err.message);
  }
  return undefined;
}

boot();
