// Server events (docs/protocol.md, section 7): what each changes in the page.

export function makeEvents(ctx) {
  const {
    state, roomData, renderRooms, renderRoom, renderInvitations, loadRooms, join, queueLookups,
    sendRead, saveOutbox, saveJoined, request, list, addPoolNodes, renderMentions, renderFeeds,
    renderRoster, showRoster, onChanged, onReply,
  } = ctx;

  // -- events --------------------------------------------------------------------------------

  function onEvent(ev) {
    switch (ev.ev) {
      case "message": return onMessage(ev);
      case "read": {
        const data = roomData(ev.room);
        data.marker = Math.max(data.marker, ev.seq);
        if (data.marker >= data.lastSeq) data.mentions = 0;
        return renderRooms();
      }
      case "mention": {
        const data = roomData(ev.room);
        if (ev.seq > data.marker) data.mentions = (data.mentions || 0) + 1;
        state.mentions.unshift(ev);
        if (state.panel === "mentions") renderMentions();
        return renderRooms();
      }
      case "feed":
        state.feedHits.unshift({ ...ev.hit, feedName: ev.name });
        state.feedHits.length = Math.min(state.feedHits.length, 100);
        if (state.panel === "feeds") renderFeeds();
        return undefined;
      case "feeds":
        state.feeds = ev.feeds;
        if (state.panel === "feeds") renderFeeds();
        return undefined;
      case "invited":
        state.invitations = state.invitations.filter((i) => i.room.id !== ev.room.id);
        state.invitations.push({ room: ev.room, by: ev.by, ts: Date.now() });
        renderInvitations();
        return loadRooms();
      case "room.updated": {
        const old = state.rooms.get(ev.room.id);
        state.rooms.set(ev.room.id, { ...old, ...ev.room });
        roomData(ev.room.id).addin = ev.room.addin_info || null;
        renderRooms();
        if (state.current === ev.room.id) renderRoom();
        if (ev.room.addin && !ev.room.addin_info && !ev.retried) {
          // A new add-in reaches the server's copy within 2 s (protocol.md, 8.2): ask again then.
          setTimeout(() => request("room.get", { room: ev.room.id }).then((r) => onEvent({ ev: "room.updated", room: r.room, retried: true }), () => {}), 2500);
        }
        return undefined;
      }
      case "room.removed":
        state.joined.delete(ev.room);
        saveJoined();
        state.roomData.delete(ev.room);
        if (state.current === ev.room) state.current = null;
        return loadRooms().then(renderRoom);
      case "resync":
        state.joined.delete(ev.room);
        return join(ev.room).catch(() => {});
      case "message.changed": return onChanged(ev); // lifecycle.js
      case "room.cleared": {
        const data = roomData(ev.room);
        for (const seq of data.seqs) if (seq <= ev.through_seq) data.msgs.delete(seq);
        data.seqs = data.seqs.filter((s) => data.msgs.has(s));
        if (state.current === ev.room) renderRoom();
        return undefined;
      }
      case "joined":
      case "left":
        if (state.roster && state.roster.room === ev.room) {
          const others = state.roster.participants.filter((p) => p.id !== ev.user.id);
          if (ev.ev === "joined") others.push(ev.user);
          state.roster.count += ev.ev === "joined" ? 1 : -1;
          state.roster.participants = others.sort((a, b) => a.name.localeCompare(b.name));
          renderRoster();
        }
        return undefined;
      case "participants.updates":
        if (state.panel === "roster" && state.current === ev.room) showRoster();
        return undefined;
      case "moved":
        addPoolNodes(ev.active);
        return undefined;
      default:
        return undefined;
    }
  }

  function onMessage(msg) {
    const data = roomData(msg.room);
    if (!data.tail) {
      data.lastSeq = Math.max(data.lastSeq, msg.seq);
    } else {
      data.add(msg);
      queueLookups(msg.room, [msg]);
    }
    if (msg.reply_to) onReply(msg);
    const mine = state.me && msg.sender.id === state.me.id;
    if (mine) {
      const before = state.outbox.length;
      state.outbox = state.outbox.filter((p) => !(p.room === msg.room && p.cid === msg.cid));
      if (state.outbox.length !== before) saveOutbox();
      if (data.marker === msg.seq - 1) {
        data.wantMarker = msg.seq;
        sendRead(data);
      }
    }
    if (state.current === msg.room) renderRoom();
    renderRooms();
  }

  return { onEvent, onMessage };
}
