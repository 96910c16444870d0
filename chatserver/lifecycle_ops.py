"""The message lifecycle ops of the client protocol: edit, delete, reactions, threads.

A part of :class:`~chatserver.sessions.Session` (which dispatches ``op_<name>`` to these); each
calls the :class:`~chatserver.rooms.lifecycle.Lifecycle` method of the same purpose.
"""

from __future__ import annotations

from typing import Any

from .protocol import commands as cmd
from .protocol.errors import UNAVAILABLE, ChatError
from .protocol.events import reply
from .rooms.lifecycle import Lifecycle
from .services import Services
from .store.users import User


class LifecycleOps:
    __slots__ = ()
    services: Services
    user: User | None

    @property
    def _life(self) -> Lifecycle:
        if self.services.lifecycle is None:
            raise ChatError(UNAVAILABLE, "message changes are not served on this node")
        return self.services.lifecycle

    async def op_message_edit(self, request: cmd.MessageEdit) -> dict[str, Any]:
        assert self.user is not None
        out = await self._life.edit(self.user, request.room, request.seq, request.text, request.cid)
        return reply(request.id, **out)

    async def op_message_delete(self, request: cmd.MessageDelete) -> dict[str, Any]:
        assert self.user is not None
        out = await self._life.delete(self.user, request.room, request.seq, request.cid)
        return reply(request.id, **out)

    async def op_reaction_add(self, request: cmd.ReactionAdd) -> dict[str, Any]:
        assert self.user is not None
        out = await self._life.react(
            self.user, request.room, request.seq, request.emoji, request.cid, add=True
        )
        return reply(request.id, **out)

    async def op_reaction_remove(self, request: cmd.ReactionRemove) -> dict[str, Any]:
        assert self.user is not None
        out = await self._life.react(
            self.user, request.room, request.seq, request.emoji, request.cid, add=False
        )
        return reply(request.id, **out)

    async def op_thread(self, request: cmd.Thread) -> dict[str, Any]:
        assert self.user is not None
        out = await self._life.thread(
            self.user, request.room, request.seq, request.after, request.limit
        )
        return reply(request.id, **out)
