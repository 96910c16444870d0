// The life of a message (docs/protocol.md, section 6.27): edit and delete one's own messages,
// replies and their thread, reactions; `message.changed` events and `join` with `changes`.
// Every change is queued with its own cid (kept in sessionStorage) and sent again with the same
// cid after a reconnect, like posts. Everything a user wrote goes in as text. Edit and Delete
// are offered only where the room's edit policy allows them (editpolicy.js).

import { Closing, closesAt, mayChange, whyNot } from "./editpolicy.js";
import { appendText, el, formatTime } from "./text.js";

const $ = (id) => document.getElementById(id);
const CHANGES_KEY = "chat.changes";
export const EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
const RETRY = new Set(["disconnected", "unavailable", "internal"]);

function newCid() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

function firstLine(msg) {
  if (!msg) return "";
  if (msg.state === "deleted") return "message deleted";
  const line = (msg.text || (msg.file ? `[file: ${msg.file.name}]` : "")).split("\n")[0];
  return line.length > 80 ? `${line.slice(0, 80)}…` : line;
}

// A message (wire form) after a `message.changed` event; null when it was removed.
export function applyChange(msg, ev) {
  if (ev.state === "removed") return null;
  const out = { ...msg, text: ev.text ?? "", state: ev.state };
  if (!ev.state) delete out.state;
  if (ev.state === "deleted") {
    delete out.file;
    delete out.reactions;
  }
  if (ev.edited_ts !== undefined) out.edited_ts = ev.edited_ts;
  if (ev.reactions !== undefined) {
    if (Object.keys(ev.reactions).length) out.reactions = ev.reactions;
    else delete out.reactions;
  }
  return out;
}

export function makeLifecycle(ctx) {
  const { state, request, roomData, list, renderRoom, senderName, jumpTo, showError, openPanel, renderFile } = ctx;
  state.changes = JSON.parse(sessionStorage.getItem(CHANGES_KEY) || "[]");
  state.mine = new Map(); // "room:seq:emoji" -> true / false: the user's own reactions, once known
  state.replying = null; // {room, seq}: what the next post answers
  const ui = { editing: null, confirming: null, picking: null, thread: null, changing: false, focus: null };
  window.chatLifecycle = ui; // for the browser tests

  const save = () => sessionStorage.setItem(CHANGES_KEY, JSON.stringify(state.changes));
  // Draws a row again; the button of it that has focus gets it back in the new row.
  function refresh(room, seq) {
    if (state.current !== room) return;
    const active = document.activeElement;
    const name = active && (active.dataset.act || active.dataset.emoji);
    if (name && !ui.focus && active.closest(`.msg[data-seq="${seq}"]`)) ui.focus = { room, seq, name, at: Date.now() };
    list.refresh(`m${seq}`);
  }
  const same = (a, room, seq) => a && a.room === room && a.seq === seq;
  const mine = (msg) => state.me && msg.sender.id === state.me.id;
  // The edit policy: the room's (from its last join) and the server's clock, as the page knows it.
  state.clockSkew = 0; // the server's clock minus the page's (ms), from the last join's `now`
  const serverNow = () => Date.now() + state.clockSkew;
  const policyOf = (room) => roomData(room).editPolicy;
  const closing = new Closing((room, seq) => refresh(room, seq));
  // Whether the page offers Edit and Delete on `msg` now; a window that closes later redraws it.
  function changeable(msg) {
    if (!mine(msg)) return false;
    const policy = policyOf(msg.room);
    const until = closesAt(policy, msg.ts);
    const now = serverNow();
    if (now > until) return false;
    if (until < Infinity) closing.watch(msg.room, msg.seq, until - state.clockSkew + 1);
    return true;
  }
  // At a click: the window may have closed since the row was drawn (a sleeping laptop).
  function stillChangeable(msg) {
    const policy = policyOf(msg.room);
    if (mayChange(policy, msg.ts, serverNow())) return true;
    $("composer-error").textContent = `You can no longer change this message: ${whyNot(policy)}.`;
    ui.confirming = null;
    refresh(msg.room, msg.seq);
    return false;
  }
  // Keyboard users keep their place: the row is drawn again, and this button of it takes focus.
  // (Until it has it: the row may be drawn again before the next frame. A wish 5 s old is gone.)
  const focusNext = (room, seq, name) => { ui.focus = { room, seq, name, at: Date.now() }; refresh(room, seq); };
  function focusIfWanted(button, room, seq, name) {
    const want = ui.focus;
    if (!same(want, room, seq) || want.name !== name) return;
    requestAnimationFrame(() => {
      if (ui.focus !== want || !button.isConnected) return;
      ui.focus = null;
      if (Date.now() - want.at < 5000) button.focus();
    });
  }

  function store(msg) {
    const data = roomData(msg.room);
    if (msg.state === "removed") {
      data.msgs.delete(msg.seq);
      data.seqs = data.seqs.filter((s) => s !== msg.seq);
    } else if (data.msgs.has(msg.seq)) {
      data.msgs.set(msg.seq, msg);
      refresh(msg.room, msg.seq);
      refreshAnswers(data, msg.seq);
    }
  }

  // The answers' quotes of a message that changed.
  function refreshAnswers(data, seq) {
    if (state.current !== data.id) return;
    for (const s of data.seqs) if (s > seq && data.msgs.get(s).reply_to === seq) refresh(data.id, s);
  }

  // -- rendering ---------------------------------------------------------------------------

  // What follows a message's meta line; `meta` gets "(edited)" and the actions.
  function body(msg, meta) {
    const out = [];
    const { room, seq } = msg;
    const deleted = msg.state === "deleted";
    if (msg.state === "edited") meta.append(el("span", { class: "edited", title: msg.edited_ts ? formatTime(msg.edited_ts) : null }, "(edited)"));
    if (msg.reply_to) {
      const original = roomData(room).msgs.get(msg.reply_to);
      out.push(el(
        "button",
        { type: "button", class: "reply-ref", title: "Show the message it answers", onclick: () => jumpTo(room, msg.reply_to) },
        "↪ ",
        original ? el("bdi", { class: "who" }, senderName(original.sender)) : `#${msg.reply_to}`,
        original ? ": " : "",
        el("bdi", {}, firstLine(original)),
      ));
    }
    if (deleted) {
      out.push(el("div", { class: "text deleted" }, "message deleted"));
    } else if (same(ui.editing, room, seq)) {
      out.push(editor(msg));
    } else {
      if (msg.text) out.push(appendText(el("div", { class: "text", dir: "auto" }), msg.text));
      if (msg.file) out.push(renderFile(msg.file));
    }
    if (deleted) return out;
    const actions = el("span", { class: "actions" });
    const act = (label, name, fn) => {
      const button = el("button", { type: "button", class: "act", "data-act": name, onclick: fn }, label);
      focusIfWanted(button, room, seq, name);
      return button;
    };
    if (same(ui.confirming, room, seq)) {
      actions.append(
        el("span", { class: "confirm", role: "alert" }, "Delete?"),
        act("yes", "delete-yes", () => { if (stillChangeable(msg)) remove(msg); }),
        act("no", "delete-no", () => { ui.confirming = null; focusNext(room, seq, "delete"); }),
      );
    } else {
      actions.append(
        act("Reply", "reply", () => startReply(msg)),
        act("Thread", "thread", () => showThread(room, seq)),
        act("React", "react", () => { ui.picking = same(ui.picking, room, seq) ? null : { room, seq }; focusNext(room, seq, ui.picking ? EMOJI[0] : "react"); }),
      );
      if (!same(ui.editing, room, seq) && changeable(msg)) {
        actions.append(
          act("Edit", "edit", () => { if (stillChangeable(msg)) startEdit(msg); }),
          act("Delete", "delete", () => { if (stillChangeable(msg)) { ui.confirming = { room, seq }; focusNext(room, seq, "delete-no"); } }),
        );
      }
    }
    meta.append(actions);
    const counts = msg.reactions || {};
    const shown = same(ui.picking, room, seq) ? [...new Set([...EMOJI, ...Object.keys(counts)])] : Object.keys(counts);
    if (shown.length) {
      out.push(el("div", { class: "reactions" }, ...shown.map((emoji) => {
        const count = counts[emoji] || 0;
        const pressed = state.mine.get(`${room}:${seq}:${emoji}`) === true;
        const button = el(
          "button",
          { type: "button", class: "reaction", "data-emoji": emoji, "aria-pressed": String(pressed), "aria-label": `${emoji} ${count}`, onclick: () => toggle(msg, emoji) },
          el("span", {}, emoji),
          count ? el("span", { class: "count" }, String(count)) : null,
        );
        focusIfWanted(button, room, seq, emoji);
        return button;
      })));
    }
    return out;
  }

  function editor(msg) {
    const box = el("textarea", { class: "edit-text", "aria-label": "Edit the message", rows: 2, dir: "auto" });
    box.value = ui.editing.draft;
    box.addEventListener("input", () => { ui.editing.draft = box.value; });
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); saveEdit(msg); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); cancelEdit(); }
    });
    requestAnimationFrame(() => { if (box.isConnected && document.activeElement !== box) box.focus(); });
    return el(
      "div",
      { class: "editor" },
      box,
      el("span", { class: "hint" }, "Enter saves, Escape cancels "),
      el("button", { type: "button", onclick: () => saveEdit(msg) }, "Save"),
      el("button", { type: "button", onclick: cancelEdit }, "Cancel"),
    );
  }

  // -- edit, delete ------------------------------------------------------------------------

  function startEdit(msg) {
    const before = ui.editing;
    ui.editing = { room: msg.room, seq: msg.seq, draft: msg.text };
    ui.confirming = null;
    if (before) refresh(before.room, before.seq);
    refresh(msg.room, msg.seq);
  }

  function cancelEdit() {
    const was = ui.editing;
    ui.editing = null;
    if (was) focusNext(was.room, was.seq, "edit");
  }

  function saveEdit(msg) {
    let text = ui.editing ? ui.editing.draft : "";
    if (text.toWellFormed) text = text.toWellFormed();
    if (!text.trim()) return;
    const max = state.hello ? state.hello.limits.max_message_chars : 8000;
    if (Array.from(text).length > max) {
      $("composer-error").textContent = `A message holds at most ${max} characters.`;
      return;
    }
    ui.editing = null;
    ui.focus = { room: msg.room, seq: msg.seq, name: "edit", at: Date.now() };
    const held = roomData(msg.room).msgs.get(msg.seq) || msg;
    if (text !== held.text) {
      store({ ...held, text, state: "edited" }); // shown now; the reply or event says the rest
      queue({ op: "message.edit", room: msg.room, seq: msg.seq, text });
    } else {
      refresh(msg.room, msg.seq);
    }
  }

  function remove(msg) {
    ui.confirming = null;
    const held = roomData(msg.room).msgs.get(msg.seq) || msg;
    const { file: _file, reactions: _reactions, ...rest } = held;
    store({ ...rest, text: "", state: "deleted" });
    $("messages").focus();
    queue({ op: "message.delete", room: msg.room, seq: msg.seq });
  }

  // -- reactions ---------------------------------------------------------------------------

  function toggle(msg, emoji) {
    const key = `${msg.room}:${msg.seq}:${emoji}`;
    const known = state.mine.get(key);
    // Unknown (say, after a reload): add; a `duplicate` answer means it was there: remove it.
    queue({ op: known ? "reaction.remove" : "reaction.add", room: msg.room, seq: msg.seq, emoji, probe: known === undefined });
  }

  function learn(room, seq, emoji, added) {
    state.mine.set(`${room}:${seq}:${emoji}`, added);
  }

  // -- the queue of changes ----------------------------------------------------------------

  function queue(change) {
    state.changes.push({ ...change, cid: newCid(), sent: false });
    save();
    flushChanges();
  }

  async function flushChanges() {
    if (ui.changing) return;
    ui.changing = true;
    try {
      while (state.changes.length && state.conn && state.conn.online) {
        const change = state.changes[0];
        const { op, probe, sent, ...fields } = change;
        const retry = sent;
        change.sent = true;
        save();
        try {
          const reply = await request(op, fields);
          drop(change);
          if (op.startsWith("reaction.")) {
            learn(fields.room, fields.seq, fields.emoji, op === "reaction.add");
            if (probe && !retry && reply.duplicate) {
              learn(fields.room, fields.seq, fields.emoji, true);
              state.changes.unshift({ op: "reaction.remove", room: fields.room, seq: fields.seq, emoji: fields.emoji, cid: newCid(), sent: false });
              save();
            }
          }
          store(reply.message);
          bumpChange(fields.room, reply.change);
        } catch (err) {
          if (RETRY.has(err.code)) break; // sent again with the same cid after the reconnect
          if (err.code === "rate_limited") {
            const rate = state.hello ? state.hello.limits.posts_per_user_per_s : 1;
            await new Promise((r) => setTimeout(r, Math.max(1000 / rate, 250)));
            continue;
          }
          drop(change);
          showError($("composer-error"), err);
          // What was shown ahead of the answer is not so: read the message again.
          reread(fields.room, fields.seq);
        }
      }
    } finally {
      ui.changing = false;
    }
  }

  function drop(change) {
    state.changes = state.changes.filter((c) => c.cid !== change.cid);
    save();
  }

  async function reread(room, seq) {
    try {
      const page = await request("history", { room, after: seq - 1, limit: 1 });
      const msg = page.messages.find((m) => m.seq === seq);
      if (msg) store(msg);
    } catch {
      // It stays as shown until the room is read again.
    }
  }

  function bumpChange(room, change) {
    if (typeof change !== "number") return;
    const data = roomData(room);
    data.changeNo = Math.max(data.changeNo || 0, change);
  }

  // -- live changes and resume -------------------------------------------------------------

  function onChanged(ev) {
    const data = roomData(ev.room);
    bumpChange(ev.room, ev.change);
    if (ev.reaction && state.me && ev.reaction.user === state.me.id) learn(ev.room, ev.seq, ev.reaction.emoji, ev.reaction.added);
    if (ev.state === "removed") {
      data.msgs.delete(ev.seq);
      data.seqs = data.seqs.filter((s) => s !== ev.seq);
    } else if (data.msgs.has(ev.seq)) {
      data.msgs.set(ev.seq, applyChange(data.msgs.get(ev.seq), ev));
      refresh(ev.room, ev.seq);
      if (!ev.reaction) refreshAnswers(data, ev.seq);
    }
    if (ev.state === "deleted" || ev.state === "removed") {
      if (same(ui.editing, ev.room, ev.seq)) ui.editing = null;
      if (same(ui.confirming, ev.room, ev.seq)) ui.confirming = null;
    }
    if (state.current === ev.room) renderRoom();
    if (ui.thread && ui.thread.room === ev.room && state.panel === "thread") showThread(ev.room, ui.thread.seq);
  }

  // A new answer: the open thread it belongs to shows it.
  function onReply(msg) {
    const t = ui.thread;
    if (t && state.panel === "thread" && t.room === msg.room && t.seq === msg.reply_to && !t.more && !t.replies.some((m) => m.seq === msg.seq)) {
      t.replies.push(msg);
      renderThread();
    }
  }

  // The `changes` field of a join: the room's change number the page has seen (0 the first time).
  function joinFields(data) {
    return { changes: data.changeNo || 0 };
  }

  // After a join's reply: what changed while the page was away, as it is now.
  function applyJoin(data, reply) {
    if (typeof reply.now === "number") state.clockSkew = reply.now - Date.now();
    if (typeof reply.edit_policy === "string" && reply.edit_policy !== data.editPolicy) {
      data.editPolicy = reply.edit_policy; // rows drawn under another policy: drawn again
      for (const seq of data.seqs) if (mine(data.msgs.get(seq))) refresh(data.id, seq);
    }
    if (typeof reply.change_no === "number") data.changeNo = Math.max(data.changeNo || 0, reply.change_no);
    for (const msg of reply.changed || []) {
      if (msg.state === "removed") {
        data.msgs.delete(msg.seq);
        data.seqs = data.seqs.filter((s) => s !== msg.seq);
      } else if (data.msgs.has(msg.seq)) {
        data.msgs.set(msg.seq, msg);
        refresh(data.id, msg.seq);
      }
    }
  }

  // -- replies and threads -----------------------------------------------------------------

  function startReply(msg) {
    state.replying = { room: msg.room, seq: msg.seq };
    renderReplying();
    $("composer-text").focus();
  }

  function renderReplying() {
    const r = state.replying;
    const show = r && r.room === state.current;
    $("replying").hidden = !show;
    if (!show) return;
    const msg = roomData(r.room).msgs.get(r.seq);
    $("replying-to").replaceChildren(
      "Replying to ",
      msg ? el("bdi", { class: "who" }, senderName(msg.sender)) : `#${r.seq}`,
      msg ? ": " : "",
      el("bdi", {}, firstLine(msg)),
    );
  }

  function cancelReply() {
    state.replying = null;
    renderReplying();
    $("composer-text").focus();
  }

  // The `reply_to` of the next post in `room` (and forget it).
  function takeReply(room) {
    const r = state.replying;
    if (!r || r.room !== room) return undefined;
    state.replying = null;
    renderReplying();
    return r.seq;
  }

  async function showThread(room, seq, more = false) {
    const keep = more && ui.thread && ui.thread.room === room && ui.thread.seq === seq;
    ui.thread = { room, seq, replies: keep ? ui.thread.replies : [], root: keep ? ui.thread.root : null, more: false };
    openPanel("thread", "Thread");
    const error = $("thread-error");
    error.textContent = "";
    try {
      const after = keep && ui.thread.replies.length ? ui.thread.replies[ui.thread.replies.length - 1].seq : 0;
      const reply = await request("thread", { room, seq, after, limit: 50 });
      if (!ui.thread || ui.thread.room !== room || ui.thread.seq !== seq) return;
      ui.thread.root = reply.message;
      ui.thread.replies.push(...reply.replies);
      ui.thread.more = reply.more;
    } catch (err) {
      showError(error, err);
    }
    renderThread();
  }

  function threadItem(msg, root) {
    return el(
      "li",
      { class: root ? "root" : null },
      el(
        "button",
        { type: "button", onclick: () => jumpTo(msg.room, msg.seq) },
        el("span", { class: "meta" }, el("bdi", {}, senderName(msg.sender)), ` · ${formatTime(msg.ts)}`, msg.state === "edited" ? " · (edited)" : ""),
        msg.state === "deleted" ? el("span", { class: "text deleted" }, "message deleted") : el("span", { class: "text", dir: "auto" }, msg.text || (msg.file ? `[file: ${msg.file.name}]` : "")),
      ),
    );
  }

  function renderThread() {
    const t = ui.thread;
    if (!t) return;
    const items = [];
    if (t.root) items.push(threadItem(t.root, true));
    for (const msg of t.replies) items.push(threadItem(msg, false));
    $("thread-list").replaceChildren(...items);
    $("thread-count").textContent = t.root ? `${t.replies.length}${t.more ? "+" : ""} ${t.replies.length === 1 ? "reply" : "replies"}` : "";
    $("thread-more").hidden = !t.more;
  }

  function wire() {
    $("replying-cancel").addEventListener("click", cancelReply);
    $("thread-more").addEventListener("click", () => { if (ui.thread) showThread(ui.thread.room, ui.thread.seq, true); });
    $("composer-text").addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.replying && !state.panel) cancelReply();
    });
  }

  wire();
  return { body, onChanged, onReply, joinFields, applyJoin, flushChanges, takeReply, renderReplying };
}
