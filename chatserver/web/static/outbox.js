// Posting: the outbox of posts not yet acknowledged (kept in sessionStorage), sent in order,
// each with its own cid, and sent again with the same cid after a reconnect.

const $ = (id) => document.getElementById(id);

export function makeOutbox(ctx) {
  const { state, request, roomData, sendRead, renderRoom, showError, list, saveOutbox, takeReply } = ctx;

  // -- posting -------------------------------------------------------------------------------

  function newCid() {
    return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  }

  function submitPost() {
    const box = $("composer-text");
    let text = box.value;
    if (text.toWellFormed) text = text.toWellFormed(); // no lone surrogates on the wire
    if (!text.trim() || state.current === null) return;
    const max = state.hello ? state.hello.limits.max_message_chars : 8000;
    if (Array.from(text).length > max) { // the server counts code points
      $("composer-error").textContent = `A message holds at most ${max} characters.`;
      return;
    }
    $("composer-error").textContent = "";
    const replyTo = takeReply(state.current);
    state.outbox.push({ room: state.current, text, cid: newCid(), ...(replyTo ? { reply_to: replyTo } : {}) });
    saveOutbox();
    box.value = "";
    autosize();
    list.stick = true;
    renderRoom();
    flushOutbox();
  }

  // Sends the outbox in order, each post with its own cid: a retry after a reconnect stores
  // nothing twice (the server answers `duplicate`).
  async function flushOutbox() {
    if (state.sending) return;
    state.sending = true;
    try {
      while (state.outbox.length && state.conn && state.conn.online) {
        const post = state.outbox[0];
        try {
          const reply = await request("post", { room: post.room, text: post.text, cid: post.cid, ...(post.reply_to ? { reply_to: post.reply_to } : {}) });
          dropPost(post); // by cid: its message event may have taken it out already
          const data = roomData(post.room);
          if (reply.seq > data.marker && data.marker >= reply.seq - 1) {
            data.wantMarker = reply.seq;
            sendRead(data);
          }
        } catch (err) {
          if (err.code === "disconnected" || err.code === "unavailable" || err.code === "internal") {
            break; // retried with the same cid after the reconnect
          }
          if (err.code === "rate_limited") {
            const rate = state.hello ? state.hello.limits.posts_per_user_per_s : 1;
            await new Promise((r) => setTimeout(r, Math.max(1000 / rate, 250)));
            continue;
          }
          dropPost(post);
          if (post.room === state.current) {
            showError($("composer-error"), err);
            if (!$("composer-text").value) $("composer-text").value = post.text;
          }
        }
        if (state.current === post.room) renderRoom();
      }
    } finally {
      state.sending = false;
    }
    if (state.current !== null) renderRoom();
  }

  function dropPost(post) {
    state.outbox = state.outbox.filter((p) => !(p.room === post.room && p.cid === post.cid));
    saveOutbox();
  }

  function autosize() {
    const box = $("composer-text");
    box.style.height = "auto";
    box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
  }

  return { submitPost, flushOutbox, autosize };
}
