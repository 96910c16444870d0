"""Groups and their members (users and groups)."""

from __future__ import annotations

from typing import Any

from ...store import admin as admin_store
from ..context import Ctx
from ..models import GroupIn, GroupOut, MembersIn
from ..routing import Router
from .views import group_out

router = Router()


@router.route("GET", "/api/v1/groups", tag="groups", summary="List groups", response=list[GroupOut])
async def list_groups(ctx: Ctx) -> Any:
    return await admin_store.list_groups(ctx.db)


@router.route(
    "POST",
    "/api/v1/groups",
    tag="groups",
    summary="Add a group",
    body=GroupIn,
    response=GroupOut,
    status=201,
    audited_by="governance",
)
async def create_group(ctx: Ctx) -> Any:
    created = await ctx.gov.create_group(ctx.actor, ctx.body.name, ctx.body.description)
    return await group_out(ctx, int(created["id"]))


@router.route(
    "GET",
    "/api/v1/groups/{group_id}",
    tag="groups",
    summary="Get a group and its members",
    response=GroupOut,
)
async def get_group(ctx: Ctx) -> Any:
    return await group_out(ctx, ctx.params["group_id"])


@router.route(
    "PATCH",
    "/api/v1/groups/{group_id}/members",
    tag="groups",
    summary="Add and remove members (users and groups)",
    body=MembersIn,
    response=GroupOut,
    audited_by="governance",
)
async def change_group_members(ctx: Ctx) -> Any:
    gid = ctx.params["group_id"]
    b: MembersIn = ctx.body
    return await ctx.govern(
        load=lambda: group_out(ctx, gid),
        change=lambda _: ctx.gov.change_group(
            ctx.actor, gid, [p.store() for p in b.add], [p.store() for p in b.remove]
        ),
    )


@router.route(
    "DELETE",
    "/api/v1/groups/{group_id}",
    tag="groups",
    summary="Remove a group",
    audited_by="governance",
)
async def delete_group(ctx: Ctx) -> Any:
    gid = ctx.params["group_id"]
    await ctx.govern(
        load=lambda: group_out(ctx, gid),
        change=lambda _: ctx.gov.delete_group(ctx.actor, gid),
        gone=True,
    )
