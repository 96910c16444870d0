"""Session tokens for administrators: how the command line logs in."""

from __future__ import annotations

from typing import Any

from ...protocol.errors import FORBIDDEN, ChatError
from ...store import users as user_store
from ..context import Ctx
from ..models import TokenOut
from ..routing import Router

router = Router()


@router.route(
    "POST",
    "/api/v1/tokens",
    tag="auth",
    summary="Create a session token for the calling administrator (log in with Basic auth)",
    response=TokenOut,
    status=201,
)
async def create_token(ctx: Ctx) -> Any:
    if not ctx.actor.id:
        raise ChatError(FORBIDDEN, "the static token has no user to make a session for")
    token = await user_store.create_session(
        ctx.db, ctx.actor.id, ctx.node.config.chat.session_ttl_s
    )
    # The token itself is never recorded.
    await ctx.audit("token.create", f"user:{ctx.actor.id}", None, None)
    return {"token": token, "user": ctx.actor.public()}
