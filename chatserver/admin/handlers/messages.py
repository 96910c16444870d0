"""Messages: clearing a room up to a date, and finding, removing or replacing messages."""

from __future__ import annotations

from typing import Any

from ...rooms.changes import MessageChange, MessagesChanged
from ...store import admin as admin_store
from ..context import Ctx
from ..models import (
    ChangedOut,
    ClearIn,
    ClearOut,
    MessageFilterIn,
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
    summary="Find messages by room, user, date range and keywords",
    body=MessageFilterIn,
    response=MessagesOut,
)
async def search_messages(ctx: Ctx) -> Any:
    found = await admin_store.find_messages(ctx.db, ctx.body.store(), ctx.body.limit)
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
