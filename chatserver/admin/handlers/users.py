"""Users, their ``persistent_chat_enabled`` policy, and their connections to this node."""

from __future__ import annotations

from typing import Any

from ...store import users as user_store
from ..context import Ctx
from ..models import (
    DisconnectOut,
    PasswordGenerateIn,
    PasswordIn,
    PolicyIn,
    ResetOut,
    SessionsOut,
    UserIn,
    UserOut,
    UserQuery,
)
from ..routing import Router
from .views import user_out, user_view

router = Router()


@router.route(
    "GET",
    "/api/v1/users",
    tag="users",
    summary="List users",
    query=UserQuery,
    response=list[UserOut],
)
async def list_users(ctx: Ctx) -> Any:
    q: UserQuery = ctx.query
    return [user_view(ctx, u) for u in await user_store.list_users(ctx.db, q.query, q.limit)]


@router.route(
    "POST",
    "/api/v1/users",
    tag="users",
    summary="Add a user",
    body=UserIn,
    response=UserOut,
    status=201,
    audited_by="accounts",
)
async def create_user(ctx: Ctx) -> Any:
    body: UserIn = ctx.body
    user = await ctx.node.accounts.add_user(
        body.name,
        body.password,
        by=ctx.actor,
        is_admin=body.is_admin,
        display_name=body.display_name,
    )
    return await user_out(ctx, user.id)


@router.route("GET", "/api/v1/users/{user_id}", tag="users", summary="Get a user", response=UserOut)
async def get_user(ctx: Ctx) -> Any:
    return await user_out(ctx, ctx.params["user_id"])


@router.route(
    "PUT",
    "/api/v1/users/{user_id}/policy",
    tag="users",
    summary="Set a user's persistent_chat_enabled policy (null: the global default)",
    body=PolicyIn,
    response=UserOut,
    audited_by="governance",
)
async def set_policy(ctx: Ctx) -> Any:
    uid = ctx.params["user_id"]
    return await ctx.govern(
        load=lambda: user_out(ctx, uid),
        change=lambda _: ctx.gov.set_policy(ctx.actor, uid, ctx.body.persistent_chat_enabled),
    )


@router.route(
    "GET",
    "/api/v1/sessions",
    tag="sessions",
    summary="Users connected to this node",
    response=SessionsOut,
)
async def list_sessions(ctx: Ctx) -> Any:
    out: list[dict[str, Any]] = []
    for conn in list(ctx.node.connections):
        user = conn.session.user
        if user is None:
            continue
        out.append(
            {
                "user": user.public(),
                "transport": conn.transport_name,
                "peer": conn.peer,
                "rooms": len(conn.session.rooms),
            }
        )
    out.sort(key=lambda s: (s["user"]["name"], s["peer"]))
    return {"node": ctx.node.config.node.name, "sessions": out}


@router.route(
    "DELETE",
    "/api/v1/users/{user_id}/sessions",
    tag="sessions",
    summary="Disconnect a user's connections and revoke their session tokens",
    response=DisconnectOut,
)
async def disconnect_user(ctx: Ctx) -> Any:
    uid = ctx.params["user_id"]
    await user_out(ctx, uid)
    # Connections have no state to show before and after: the entry records how many closed.
    count = await ctx.node.accounts.revoke_tokens(uid, "disconnected")
    await ctx.audit("user.disconnect", f"user:{uid}", None, {"disconnected": count})
    return {"disconnected": count}


@router.route(
    "PUT",
    "/api/v1/users/{user_id}/password",
    tag="users",
    summary="Reset a user's password; revokes all their session tokens (their connections close)",
    body=PasswordIn,
    response=ResetOut | DisconnectOut,
)
async def reset_password(ctx: Ctx) -> Any:
    """A reset replaces the password and revokes every session token of the user, so their
    connections on every node end (``bye`` ``revoked``) and only the new password signs in. The
    audit entry never holds the password."""
    uid = ctx.params["user_id"]
    await user_out(ctx, uid)
    body = ctx.body.root
    accounts = ctx.node.accounts
    generate = isinstance(body, PasswordGenerateIn)
    new = accounts.policy.generate() if generate else body.password
    count = await accounts.reset_password(uid, new)
    await ctx.audit("user.password_reset", f"user:{uid}", None, {"disconnected": count})
    return {"disconnected": count, "password": new} if generate else {"disconnected": count}
