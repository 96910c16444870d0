"""Each resource as the management API shows it, read for a handler (a read changes nothing:
rooms come from the store, not from a cache that reading would refill or drop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...rooms.access import Actor
from ...store import admin as admin_store
from ...store import principals as principal_store
from ...store import rooms as room_store
from ...store import users as user_store
from ...store.principals import Principal as StorePrincipal
from ..context import Ctx, not_found

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ...store.users import User


def user_view(ctx: Ctx, user: User) -> dict[str, Any]:
    return {
        **user.public(),
        "is_admin": user.is_admin,
        "persistent_chat_enabled": ctx.node.auth.policy_enabled(user),
        "policy": user.persistent_chat_enabled,
        "source": user.source,
        "disabled": user.disabled,
    }


async def user_out(ctx: Ctx, user_id: int) -> dict[str, Any]:
    user = await user_store.get_user(ctx.db, user_id)
    if user is None:
        raise not_found("user", user_id)
    return user_view(ctx, user)


async def group_out(ctx: Ctx, group_id: int) -> dict[str, Any]:
    group = await principal_store.get_group(ctx.db, group_id)
    if group is None:
        raise not_found("group", group_id)
    members = await principal_store.group_members_of(ctx.db, group_id)
    return {**group.public(), "members": [p.wire() for p in members]}


async def category_out(ctx: Ctx, category_id: int) -> dict[str, Any]:
    category = await ctx.node.facts.category(category_id)
    if category is None:
        raise not_found("category", category_id)
    return category.public(with_principals=True)  # type: ignore[no-any-return]


async def room_out(ctx: Ctx, room_id: int) -> dict[str, Any]:
    # Read the store, not a cache another node may have changed; a read changes nothing.
    room = await room_store.get_room(ctx.db, room_id)
    if room is None:
        raise not_found("room", room_id)
    out = room.public(with_roles=True)
    out["last_seq"] = await ctx.node.enforcement.last_seq(room_id)
    return out  # type: ignore[no-any-return]


async def addin_out(ctx: Ctx, addin_id: int) -> dict[str, Any]:
    found = await admin_store.get_addin(ctx.db, addin_id)
    if found is None:
        raise not_found("add-in", addin_id)
    return found


def principal_lists(lists: BaseModel) -> dict[str, list[StorePrincipal]]:
    """A model of principal lists (allowed / denied / creators, or member / manager / presenter)
    as governance takes them: only the lists given, by governance's names."""
    out = {}
    for name in type(lists).model_fields:
        principals = [p.store() for p in getattr(lists, name)]
        if principals:
            out["creator" if name == "creators" else name] = principals
    return out


async def eligible_users(
    ctx: Ctx, allowed: Callable[[Actor, StorePrincipal, frozenset[int]], bool]
) -> list[dict[str, Any]]:
    """Every user ``allowed(actor, principal, groups)`` admits."""
    out = []
    for user in await user_store.list_users(ctx.db, None, limit=100_000):
        groups = await ctx.node.facts.groups_of("user", user.id)
        if allowed(Actor(user.id, False, groups), StorePrincipal("user", user.id), groups):
            out.append(user.public())
    return out
