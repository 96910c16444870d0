"""The management API's password reset (an administrator's, for any user).

A reset replaces the user's password and revokes every session token of theirs, so their
connections on every node of the pool end (``bye`` ``revoked``) and only the new password signs
in. The audit entry never holds the password. (``DELETE /api/v1/users/{id}/sessions``, in
``api.py``, revokes the tokens too, without changing the password.)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from .api import Ctx, DisconnectOut, _In, _user_out
from .routes import route


class PasswordIn(_In):
    password: Annotated[str, Field(min_length=8, max_length=1024)]


@route(
    "PUT",
    "/api/v1/users/{user_id}/password",
    tag="users",
    summary="Reset a user's password; revokes all their session tokens (their connections close)",
    body=PasswordIn,
    response=DisconnectOut,
)
async def reset_password(ctx: Ctx) -> Any:
    uid = ctx.params["user_id"]
    await _user_out(ctx, uid)
    body: PasswordIn = ctx.body
    count = await ctx.node.accounts.reset_password(uid, body.password)
    await ctx.audit("user.password_reset", f"user:{uid}", None, {"disconnected": count})
    return {"disconnected": count}
