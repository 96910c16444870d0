"""Messages: clearing a room up to a date, and finding, removing or replacing messages."""

from __future__ import annotations

from typing import Any

from ...rooms.changes import MessageChange, MessagesChanged
from ...rooms.query import parse
from ...store import admin as admin_store
from ...store import search as search_store
from ..context import Ctx
from ..models import (
    ChangedOut,
    ClearIn,
    ClearOut,
    MessageFilterIn,
    MessageSearchIn,
    MessagesOut,
    RemoveIn,
    ReplaceIn,
)
from ..routing import Router
from ..types import epoch_ms
from .views import room_out

router = Router()


@router.route(
    "POST",
    "/api/v1/rooms/{room_id}/clear",
    tag="messages",
    summary="Remove every message posted on or before a date",
    body=ClearIn,
    response=ClearOut,
)
async def clear_room(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    await room_out(ctx, rid)
    until = epoch_ms(ctx.body.until, end_of_day=True)
    assert until is not None
    removed, through = await admin_store.clear_room(
        ctx.db, rid, until, compliance_node=ctx.node.compliance_node, actor=ctx.actor_label
    )
    if removed:
        ctx.gov.messages_changed(MessagesChanged(rid, (), through))
    # The entry records the request and its result: the removed messages are not copied.
    out = {"removed": removed, "through_seq": through}
    await ctx.audit("room.clear", f"room:{rid}", {"until_ms": until}, out)
    return out


@router.route(
    "POST",
    "/api/v1/messages/search",
    tag="messages",
    summary="Find messages by room, user, date range, keywords and a full-text query",
    body=MessageSearchIn,
    response=MessagesOut,
)
async def search_messages(ctx: Ctx) -> Any:
    body: MessageSearchIn = ctx.body
    if body.query is None:
        found = await admin_store.find_messages(ctx.db, body.store(), body.limit)
        return {"messages": [m.public() for m in found]}
    # The users' search index, over every room: administrators may read them all.
    flt = body.store()
    query = parse(body.query, max_chars=500, max_terms=32, allow_empty=True)
    sender = flt.user_id
    if query.sender is not None:
        named = await search_store.user_id_by_name(ctx.db, query.sender)
        if named is None or (sender is not None and named != sender):
            return {"messages": []}
        sender = named
    bounds = [b for b in (query.since_ms, flt.since_ms) if b is not None]
    ends = [e + 1 for e in (flt.until_ms,) if e is not None]
    ends += [e for e in (query.until_ms,) if e is not None]
    text_query = search_store.TextQuery(
        tuple((t.words, t.prefix) for t in query.terms),
        sender,
        max(bounds) if bounds else None,
        min(ends) if ends else None,
        query.has_file,
    )
    rooms = [flt.room_id] if flt.room_id is not None else None
    if query.room is not None:  # in: takes a room id here
        wanted = int(query.room) if query.room.isdigit() else 0
        rooms = [r for r in rooms or [wanted] if r == wanted]
    hits = await search_store.search(ctx.db, text_query, rooms=rooms, limit=body.limit)
    found = [
        admin_store.FoundMessage(m.room, m.seq, m.ts, m.sender_id, m.sender_name, m.text, m.state)
        for m in hits
        if flt.matches(m.text)
    ]
    return {"messages": [m.public() for m in found]}


async def _change(ctx: Ctx, state: str, text: str) -> Any:
    """Remove or replace the messages the body selects; the audit entry holds the filter and
    the messages as they were."""
    body: MessageFilterIn = ctx.body
    if body.room is not None:
        await room_out(ctx, body.room)
    found = await admin_store.change_messages(
        ctx.db,
        body.store(),
        state=state,
        text=text,
        limit=body.limit,
        compliance_node=ctx.node.compliance_node,
        actor=ctx.actor_label,
    )
    by_room: dict[int, list[MessageChange]] = {}
    for m in found:
        by_room.setdefault(m.room_id, []).append(MessageChange(m.seq, state, text))
    for room_id, changes in by_room.items():
        ctx.gov.messages_changed(MessagesChanged(room_id, tuple(changes), None))
    originals = [m.public() for m in found]
    action = "messages.replace" if state == "replaced" else "messages.remove"
    target = f"room:{body.room}" if body.room is not None else f"user:{body.user}"
    await ctx.audit(
        action,
        target,
        {"filter": body.model_dump(mode="json"), "messages": originals},
        {"changed": len(found), "text": text if state == "replaced" else None},
    )
    return {"changed": len(found), "messages": originals}


@router.route(
    "POST",
    "/api/v1/messages/remove",
    tag="messages",
    summary="Remove the selected messages (their seq stays, their text is gone)",
    body=RemoveIn,
    response=ChangedOut,
)
async def remove_messages(ctx: Ctx) -> Any:
    return await _change(ctx, "removed", "")


@router.route(
    "POST",
    "/api/v1/messages/replace",
    tag="messages",
    summary="Replace the text of the selected messages",
    body=ReplaceIn,
    response=ChangedOut,
)
async def replace_messages(ctx: Ctx) -> Any:
    return await _change(ctx, "replaced", ctx.body.text)
