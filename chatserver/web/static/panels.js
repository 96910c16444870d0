// The side panel (search, mentions, feeds, roster, add-in) and the invitations: what the
// page shows beside a room. `ctx` gives what they need of the app: its state, `request`,
// `roomData`, `senderName`, `jumpTo`, `openRoom` and `showError`.

import { appendHighlighted, el, formatTime, safeUrl } from "./text.js";

const $ = (id) => document.getElementById(id);

export function makePanels(ctx) {
  const { state, request, roomData, senderName, jumpTo, openRoom, showError } = ctx;

  // -- invitations ---------------------------------------------------------------------------

  function renderInvitations() {
    const items = state.invitations.map((inv) =>
      el(
        "li",
        {},
        el("bdi", {}, inv.room.name),
        inv.by ? el("span", { class: "muted" }, " from ", el("bdi", {}, inv.by.display_name)) : null,
        el("button", { type: "button", onclick: () => acceptInvitation(inv) }, "Open"),
        el("button", { type: "button", onclick: () => dismissInvitation(inv) }, "Dismiss"),
      ),
    );
    $("invitation-list").replaceChildren(...items);
    $("invitations").hidden = !items.length;
  }

  async function acceptInvitation(inv) {
    state.invitations = state.invitations.filter((i) => i !== inv);
    renderInvitations();
    if (!state.rooms.has(inv.room.id)) state.rooms.set(inv.room.id, inv.room);
    await openRoom(inv.room.id);
  }

  async function dismissInvitation(inv) {
    state.invitations = state.invitations.filter((i) => i !== inv);
    renderInvitations();
    await request("invitation.dismiss", { room: inv.room.id }).catch(() => {});
  }

  // -- side panel: search, mentions, feeds, roster, add-in ----------------------------------

  function openPanel(name, title) {
    state.panel = name;
    $("panel").hidden = false;
    $("panel-title").textContent = title;
    for (const body of ["search", "mentions", "feeds", "roster", "addin", "thread"]) {
      $(`panel-${body}`).hidden = body !== name;
    }
    if (name !== "addin") $("panel-addin").replaceChildren();
  }

  function closePanel() {
    state.panel = null;
    state.roster = null;
    $("panel").hidden = true;
    $("panel-addin").replaceChildren();
  }

  function hitItem(hit, extra) {
    const room = state.rooms.get(hit.room);
    const meta = el(
      "span",
      { class: "meta" },
      el("bdi", {}, room ? room.name : `room ${hit.room}`),
      " · ",
      el("bdi", {}, senderName(hit.sender)),
      ` · ${formatTime(hit.ts)}`,
      extra ? ` · ${extra}` : "",
    );
    const text = el("span", { class: "text", dir: "auto" });
    if (hit.snippet !== undefined) appendHighlighted(text, hit.snippet, hit.highlights);
    else text.textContent = hit.text ?? "(not kept)";
    if (hit.file) text.append(" [file: ", el("bdi", {}, hit.file.name), "]");
    return el("li", {}, el("button", { type: "button", onclick: () => jumpTo(hit.room, hit.seq) }, meta, text));
  }

  function searchQuery() {
    const parts = [];
    const text = $("search-text").value.trim();
    if (text) parts.push(text);
    const from = $("search-from").value.trim();
    if (from) parts.push(/\s/.test(from) ? `from:"${from.replaceAll('"', "")}"` : `from:${from}`);
    if ($("search-after").value) parts.push(`after:${$("search-after").value}`);
    if ($("search-before").value) parts.push(`before:${$("search-before").value}`);
    if ($("search-files").checked) parts.push("has:file");
    return parts.join(" ");
  }

  async function runSearch(more) {
    const query = searchQuery();
    if (!query) return;
    const fields = { query };
    if ($("search-here").checked && state.current !== null) fields.room = state.current;
    if (more && state.searchCursor) fields.cursor = state.searchCursor;
    $("search-error").textContent = "";
    try {
      const reply = await request("search", fields);
      const items = reply.hits.map((hit) => hitItem(hit));
      if (more) $("search-results").append(...items);
      else $("search-results").replaceChildren(...items);
      if (!reply.hits.length && !more) $("search-results").replaceChildren(el("li", { class: "empty" }, "Nothing found."));
      state.searchCursor = reply.cursor;
      $("search-more").hidden = !reply.cursor;
    } catch (err) {
      showError($("search-error"), err);
    }
  }

  async function loadMentions() {
    const reply = await request("mentions", { limit: 50 });
    state.mentions = reply.mentions;
    if (state.panel === "mentions") renderMentions();
  }

  function renderMentions() {
    const items = state.mentions.map((m) => hitItem(m));
    $("mention-list").replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "No mentions.")]));
  }

  async function loadFeeds() {
    const reply = await request("feed.list");
    state.feeds = reply.feeds;
    if (state.panel === "feeds") renderFeeds();
  }

  function renderFeeds() {
    $("feed-list").replaceChildren(
      ...state.feeds.map((feed) =>
        el(
          "li",
          {},
          el("span", {}, el("bdi", {}, feed.name), " — ", el("code", {}, el("bdi", {}, feed.query))),
          el("button", { type: "button", onclick: () => request("feed.remove", { feed: feed.id }).catch(() => {}) }, "Remove"),
        ),
      ),
    );
    $("feed-hits").replaceChildren(...state.feedHits.map((hit) => hitItem(hit, hit.feedName)));
  }

  async function showRoster() {
    if (state.current === null) return;
    openPanel("roster", "People here");
    const room = state.current;
    try {
      const reply = await request("room.participants", { room });
      state.roster = { room, participants: reply.participants, count: reply.count, updates: reply.updates, limit: reply.limit };
      renderRoster();
    } catch (err) {
      showError($("roster-count"), err);
    }
  }

  function renderRoster() {
    const roster = state.roster;
    if (!roster) return;
    const tooMany = !roster.updates || roster.count > roster.participants.length;
    $("roster-count").textContent = tooMany
      ? `${roster.count} people are here: too many to list them all.`
      : `${roster.count} ${roster.count === 1 ? "person is" : "people are"} here.`;
    $("roster-list").replaceChildren(...(tooMany && !roster.updates ? [] : roster.participants.map((p) =>
      el("li", {}, el("bdi", {}, state.names.get(p.id) || p.name), " ", el("span", { class: "meta" }, `@${p.name}`)))));
  }

  function showAddin() {
    const data = state.current !== null ? roomData(state.current) : null;
    const url = data && data.addin ? safeUrl(data.addin.url) : null;
    if (!url) return;
    openPanel("addin", data.addin.name);
    $("panel-addin").replaceChildren(
      el("iframe", {
        src: url,
        title: data.addin.name,
        sandbox: "allow-scripts allow-forms allow-popups",
        referrerpolicy: "no-referrer",
      }),
    );
  }

  return { openPanel, closePanel, renderInvitations, runSearch, loadMentions, renderMentions, loadFeeds, renderFeeds, showRoster, renderRoster, showAddin };
}
