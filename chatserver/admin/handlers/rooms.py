"""Rooms: listing with filters, settings, category, add-in, roles, disabling, deleting."""

from __future__ import annotations

import logging
from typing import Any

from ...protocol.errors import BAD_REQUEST, ChatError
from ...rooms import access
from ...store import admin as admin_store
from ...store import rooms as room_store
from ..context import Ctx, not_found
from ..models import RoleLists, RoomIn, RoomOut, RoomPage, RoomPatch, RoomQuery, UserBrief
from ..routing import Router
from .views import eligible_users, principal_lists, room_out

log = logging.getLogger("chatserver.admin")

router = Router()

# The room settings a PATCH may give, by their name in RoomPatch and in governance.
SETTINGS = ("name", "description", "privacy", "type", "invitations")


async def _check_addin(ctx: Ctx, addin_id: int | None) -> None:
    if addin_id is not None and await admin_store.get_addin(ctx.db, addin_id) is None:
        raise not_found("add-in", addin_id)


@router.route(
    "GET",
    "/api/v1/rooms",
    tag="rooms",
    summary="List rooms, filtered",
    query=RoomQuery,
    response=RoomPage,
)
async def list_rooms(ctx: Ctx) -> Any:
    q: RoomQuery = ctx.query

    def principal(text: str | None) -> tuple[str, int] | None:
        if text is None:
            return None
        kind, _, ident = text.partition(":")
        return kind, int(ident)

    ids = await admin_store.query_rooms(
        ctx.db,
        admin_store.RoomQuery(
            category_id=q.category,
            privacy=q.privacy,
            type=q.type,
            disabled=q.disabled,
            member=principal(q.member),
            manager=principal(q.manager),
            addin_id=q.addin,
            contains=q.contains,
            content_exceeds_mb=q.content_exceeds_mb,
        ),
        after_id=q.after,
        limit=q.limit,
    )
    rooms = []
    for rid in ids:
        try:
            rooms.append(await room_out(ctx, rid))
        except ChatError:  # removed meanwhile
            continue
    return {"rooms": rooms, "next": ids[-1] if len(ids) == q.limit else None}


@router.route(
    "POST",
    "/api/v1/rooms",
    tag="rooms",
    summary="Add a room",
    body=RoomIn,
    response=RoomOut,
    status=201,
    audited_by="governance",
)
async def create_room(ctx: Ctx) -> Any:
    """The room, then its roles and add-in: each a governance change with its audit entry
    (``room.create``, ``room.members``, ``room.update``); if a later step is refused, the room
    is deleted again (``room.delete``)."""
    b: RoomIn = ctx.body
    await _check_addin(ctx, b.addin)
    room = await ctx.gov.create_room(
        ctx.actor, b.category, b.name, b.description, b.privacy, b.type, b.invitations
    )
    roles = principal_lists(RoleLists(member=b.members, manager=b.managers, presenter=b.presenters))
    try:
        if roles:
            await ctx.gov.change_roles(ctx.actor, room.id, roles, {})
        if b.addin is not None:
            await ctx.gov.update_room(ctx.actor, room.id, {"addin_id": b.addin})
    except ChatError:
        await ctx.gov.delete_room(ctx.actor, room.id)  # all or nothing
        raise
    return await room_out(ctx, room.id)


@router.route("GET", "/api/v1/rooms/{room_id}", tag="rooms", summary="Get a room", response=RoomOut)
async def get_room(ctx: Ctx) -> Any:
    return await room_out(ctx, ctx.params["room_id"])


@router.route(
    "PATCH",
    "/api/v1/rooms/{room_id}",
    tag="rooms",
    summary="Change a room: settings, category, add-in, members / managers / presenters",
    body=RoomPatch,
    response=RoomOut,
    audited_by="governance",
)
async def update_room(ctx: Ctx) -> Any:
    """A move, the settings, the roles: each a governance change with its audit entry
    (``room.move``, ``room.update``, ``room.members``); if a step is refused, the steps made
    are undone (and audited as changes too)."""
    rid = ctx.params["room_id"]
    b: RoomPatch = ctx.body

    async def change(before: dict[str, Any]) -> None:
        await _check_addin(ctx, b.addin)
        if b.addin is not None and b.detach_addin:
            raise ChatError(BAD_REQUEST, "give either addin or detach_addin")
        values = b.model_dump(include=set(SETTINGS), exclude_none=True)
        if b.addin is not None:
            values["addin_id"] = b.addin
        if b.detach_addin:
            values["addin_id"] = None
        add, remove = principal_lists(b.add), principal_lists(b.remove)
        try:
            if b.category is not None and b.category != before["category"]:
                await ctx.gov.move_room(ctx.actor, rid, b.category)
            if values:
                await ctx.gov.update_room(ctx.actor, rid, values)
            if add or remove:
                await ctx.gov.change_roles(ctx.actor, rid, add, remove)
        except ChatError:
            await _restore_room(ctx, rid, before)  # all or nothing
            raise

    return await ctx.govern(load=lambda: room_out(ctx, rid), change=change)


async def _restore_room(ctx: Ctx, rid: int, before: dict[str, Any]) -> None:
    """Undo the steps of a room update that failed part way (governance audits each)."""
    try:
        now = await room_out(ctx, rid)
        if now == before:
            return
        if now["category"] != before["category"]:
            await ctx.gov.move_room(ctx.actor, rid, before["category"])
        values = {key: before[key] for key in SETTINGS if now[key] != before[key]}
        if now["addin"] != before["addin"]:
            values["addin_id"] = before["addin"]
        if values:
            await ctx.gov.update_room(ctx.actor, rid, values)
    except ChatError:
        log.exception("room %d: undoing a failed update failed", rid)


async def _set_disabled(ctx: Ctx, disabled: bool) -> Any:
    rid = ctx.params["room_id"]
    return await ctx.govern(
        load=lambda: room_out(ctx, rid),
        change=lambda _: ctx.gov.set_disabled(ctx.actor, rid, disabled),
    )


@router.route(
    "POST",
    "/api/v1/rooms/{room_id}/disable",
    tag="rooms",
    summary="Disable a room (members are removed from it; nothing is deleted)",
    response=RoomOut,
    audited_by="governance",
)
async def disable_room(ctx: Ctx) -> Any:
    return await _set_disabled(ctx, True)


@router.route(
    "POST",
    "/api/v1/rooms/{room_id}/enable",
    tag="rooms",
    summary="Enable a room",
    response=RoomOut,
    audited_by="governance",
)
async def enable_room(ctx: Ctx) -> Any:
    return await _set_disabled(ctx, False)


@router.route(
    "DELETE",
    "/api/v1/rooms/{room_id}",
    tag="rooms",
    summary="Delete a room and its history",
    audited_by="governance",
)
async def delete_room(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    await ctx.govern(
        load=lambda: room_out(ctx, rid),
        change=lambda _: ctx.gov.delete_room(ctx.actor, rid),
        gone=True,
    )


@router.route(
    "GET",
    "/api/v1/rooms/{room_id}/eligible",
    tag="rooms",
    summary="Users who may read the room (groups expanded, category denials applied)",
    response=list[UserBrief],
)
async def room_eligible(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]
    room = await room_store.get_room(ctx.db, rid)
    category = await ctx.node.facts.category(room.category_id) if room else None
    if room is None or category is None:
        raise not_found("room", rid)
    return await eligible_users(
        ctx, lambda actor, _p, _groups: access.can_read(actor, room, category)
    )
