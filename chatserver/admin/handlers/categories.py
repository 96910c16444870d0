"""Categories: their switches, and who they allow, deny, and let create rooms."""

from __future__ import annotations

from typing import Any

from ...protocol.errors import ChatError
from ...rooms import access
from ..context import Ctx, not_found
from ..models import CategoryIn, CategoryLists, CategoryOut, CategoryPatch, UserBrief
from ..routing import Router
from .views import category_out, eligible_users, principal_lists

router = Router()


@router.route(
    "GET",
    "/api/v1/categories",
    tag="categories",
    summary="List categories",
    response=list[CategoryOut],
)
async def list_categories(ctx: Ctx) -> Any:
    return await ctx.gov.list_categories(ctx.actor)


@router.route(
    "POST",
    "/api/v1/categories",
    tag="categories",
    summary="Add a category",
    body=CategoryIn,
    response=CategoryOut,
    status=201,
    audited_by="governance",
)
async def create_category(ctx: Ctx) -> Any:
    """The category, then its lists: each a governance change with its audit entry
    (``category.create``, ``category.update``); if the lists are refused, the category is
    removed again (``category.delete``)."""
    b: CategoryIn = ctx.body
    created = await ctx.gov.create_category(
        ctx.actor,
        b.name,
        description=b.description,
        invitations=b.invitations,
        file_upload=b.file_upload,
        chat_history=b.chat_history,
    )
    cid = int(created["id"])
    lists = principal_lists(CategoryLists(allowed=b.allowed, denied=b.denied, creators=b.creators))
    if lists:
        try:
            await ctx.gov.update_category(ctx.actor, cid, {}, lists, {})
        except ChatError:
            await ctx.gov.delete_category(ctx.actor, cid)  # all or nothing
            raise
    return await category_out(ctx, cid)


@router.route(
    "GET",
    "/api/v1/categories/{category_id}",
    tag="categories",
    summary="Get a category",
    response=CategoryOut,
)
async def get_category(ctx: Ctx) -> Any:
    return await category_out(ctx, ctx.params["category_id"])


@router.route(
    "PATCH",
    "/api/v1/categories/{category_id}",
    tag="categories",
    summary="Change a category: settings, and allowed / denied / creators",
    body=CategoryPatch,
    response=CategoryOut,
    audited_by="governance",
)
async def update_category(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]
    b: CategoryPatch = ctx.body
    values = b.model_dump(exclude={"add", "remove"}, exclude_none=True)
    return await ctx.govern(
        load=lambda: category_out(ctx, cid),
        change=lambda _: ctx.gov.update_category(
            ctx.actor, cid, values, principal_lists(b.add), principal_lists(b.remove)
        ),
    )


@router.route(
    "DELETE",
    "/api/v1/categories/{category_id}",
    tag="categories",
    summary="Remove an empty category",
    audited_by="governance",
)
async def delete_category(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]
    await ctx.govern(
        load=lambda: category_out(ctx, cid),
        change=lambda _: ctx.gov.delete_category(ctx.actor, cid),
        gone=True,
    )


@router.route(
    "GET",
    "/api/v1/categories/{category_id}/eligible",
    tag="categories",
    summary="Users the category allows (groups expanded, denials applied)",
    response=list[UserBrief],
)
async def category_eligible(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]
    category = await ctx.node.facts.category(cid)
    if category is None:
        raise not_found("category", cid)
    return await eligible_users(ctx, lambda _actor, p, groups: access.eligible(p, category, groups))
