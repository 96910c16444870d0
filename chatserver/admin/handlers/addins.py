"""Add-ins: web pages a client shows beside the rooms they are attached to."""

from __future__ import annotations

from typing import Any

from ...store import admin as admin_store
from ..context import Ctx
from ..models import AddinIn, AddinOut, AddinPatch
from ..routing import Router
from .views import addin_out

router = Router()


def _name_taken(name: str) -> dict[type[Exception], str]:
    return {admin_store.AddinExists: f"an add-in named {name!r} exists"}


@router.route(
    "GET", "/api/v1/addins", tag="addins", summary="List add-ins", response=list[AddinOut]
)
async def list_addins(ctx: Ctx) -> Any:
    return await admin_store.list_addins(ctx.db)


@router.route(
    "POST",
    "/api/v1/addins",
    tag="addins",
    summary="Add an add-in (a web page for rooms)",
    body=AddinIn,
    response=AddinOut,
    status=201,
)
async def create_addin(ctx: Ctx) -> Any:
    b: AddinIn = ctx.body

    async def create() -> int:
        return int((await admin_store.create_addin(ctx.db, b.name, b.url))["id"])

    return await ctx.create(
        "addin.create",
        create=create,
        load=lambda aid: addin_out(ctx, aid),
        refusals=_name_taken(b.name),
    )


@router.route(
    "GET", "/api/v1/addins/{addin_id}", tag="addins", summary="Get an add-in", response=AddinOut
)
async def get_addin(ctx: Ctx) -> Any:
    return await addin_out(ctx, ctx.params["addin_id"])


@router.route(
    "PATCH",
    "/api/v1/addins/{addin_id}",
    tag="addins",
    summary="Change an add-in",
    body=AddinPatch,
    response=AddinOut,
)
async def update_addin(ctx: Ctx) -> Any:
    aid = ctx.params["addin_id"]
    values = ctx.body.model_dump(exclude_none=True)

    async def change(_before: Any) -> None:
        if values:
            await admin_store.update_addin(ctx.db, aid, **values)

    return await ctx.change(
        "addin.update",
        f"addin:{aid}",
        load=lambda: addin_out(ctx, aid),
        change=change,
        refusals=_name_taken(values.get("name", "")),
    )


@router.route(
    "DELETE",
    "/api/v1/addins/{addin_id}",
    tag="addins",
    summary="Remove an add-in that no room uses",
)
async def delete_addin(ctx: Ctx) -> Any:
    aid = ctx.params["addin_id"]
    await ctx.change(
        "addin.delete",
        f"addin:{aid}",
        load=lambda: addin_out(ctx, aid),
        change=lambda _: admin_store.delete_addin(ctx.db, aid),
        refusals={admin_store.AddinInUse: "rooms still use this add-in; detach it first"},
        gone=True,
    )
