"""Users' changes to their messages: the edit policy of a room or a category.

The policy says whether senders may edit and delete their own messages: ``never``, ``always``,
or a number of minutes after posting; ``null`` inherits (a room from its category, a category
from the deployment's ``chat.edit_policy``, by default ``always``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from ...store import lifecycle as store
from ..context import Ctx, not_found
from ..routing import Router
from ..types import In

router = Router()


class EditPolicyIn(In):
    policy: Annotated[str, Field(max_length=16, pattern=store.POLICY_PATTERN)] | None = Field(
        description='"never", "always", or whole minutes after posting ("15"); null: inherit'
    )

    @field_validator("policy")
    @classmethod
    def _check(cls, value: str | None) -> str | None:
        return None if value is None else store.check_policy(value)


class EditPolicyOut(BaseModel):
    policy: str | None = Field(description="This scope's own policy (null: inherited)")
    effective: str = Field(description="The policy that applies")


async def _room_policy(ctx: Ctx, room_id: int) -> dict[str, Any]:
    found = await store.edit_policies(ctx.db, room_id)
    if found is None:
        raise not_found("room", room_id)
    own, category = found
    default = ctx.node.settings.chat.edit_policy
    return {"policy": own, "effective": store.effective_policy(own, category, default)}


@router.route(
    "PUT",
    "/api/v1/rooms/{room_id}/edit-policy",
    tag="rooms",
    summary="Set whether senders may edit and delete their messages in a room",
    body=EditPolicyIn,
    response=EditPolicyOut,
)
async def set_room_edit_policy(ctx: Ctx) -> Any:
    rid = ctx.params["room_id"]

    async def change(_before: Any) -> None:
        await store.set_edit_policy(ctx.db, "room", rid, ctx.body.policy)

    return await ctx.change(
        "room.edit_policy", f"room:{rid}", load=lambda: _room_policy(ctx, rid), change=change
    )


@router.route(
    "PUT",
    "/api/v1/categories/{category_id}/edit-policy",
    tag="categories",
    summary="Set whether senders may edit and delete their messages in a category's rooms",
    body=EditPolicyIn,
    response=EditPolicyOut,
)
async def set_category_edit_policy(ctx: Ctx) -> Any:
    cid = ctx.params["category_id"]

    async def load() -> dict[str, Any]:
        found = await store.category_edit_policy(ctx.db, cid)  # the store's, not a cache's
        if found is None:
            raise not_found("category", cid)
        own = found[0]
        return {
            "policy": own,
            "effective": store.effective_policy(None, own, ctx.node.settings.chat.edit_policy),
        }

    async def change(_before: Any) -> None:
        await store.set_edit_policy(ctx.db, "category", cid, ctx.body.policy)

    return await ctx.change("category.edit_policy", f"category:{cid}", load=load, change=change)
