"""The request context a handler gets, and the one way a handler changes something.

:meth:`Ctx.change` and :meth:`Ctx.create` hold the shape every change of the management API
shares: read the state before, make the change, turn a store's refusal into its answer (``409
conflict`` unless said otherwise), read the state after, and record both in the audit log. A
handler that does not fit them (a change with no state to show, such as a disconnect) calls
:meth:`Ctx.audit` itself; the server logs an error for a change that recorded nothing.

A change made through governance (or a user created through accounts) is recorded there, as it
is when the client protocol or the command line makes it (:mod:`chatserver.rooms.audit`): its
route says ``audited_by="governance"`` and its handler uses :meth:`Ctx.govern`, which writes no
entry of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..protocol.errors import CONFLICT, NOT_FOUND, ChatError

if TYPE_CHECKING:
    from ..rooms.governance import Governance
    from ..store.db import Database
    from ..store.users import User
    from .node import NodeControl

T = TypeVar("T")

# How a store's exception is answered: a message (409 conflict), or a function making the error.
Refusals = Mapping[type[Exception], str | Callable[[Exception], ChatError]]


def not_found(what: str, ident: int) -> ChatError:
    return ChatError(NOT_FOUND, f"no {what} {ident}")


async def _refusing(step: Callable[[], Awaitable[T]], refusals: Refusals | None) -> T:
    """``step()``, an exception ``refusals`` names answered as it says."""
    refusals = refusals or {}
    try:
        return await step()
    except tuple(refusals) as exc:
        answer = next(a for kind, a in refusals.items() if isinstance(exc, kind))
        raise (ChatError(CONFLICT, answer) if isinstance(answer, str) else answer(exc)) from None


@dataclass
class Ctx:
    node: NodeControl
    actor: User
    actor_label: str  # the user name, or "token"
    params: dict[str, Any]  # path parameters: ints for ``…_id``, else names
    body: Any  # the route's body model, validated
    query: Any  # the route's query model, validated
    audited: bool = False

    @property
    def gov(self) -> Governance:
        return self.node.governance

    @property
    def db(self) -> Database:
        return self.node.db

    async def audit(self, action: str, target: str, before: Any, after: Any) -> None:
        await self.node.audit.record(self.actor, action, target, before, after)
        self.audited = True

    async def govern(
        self,
        *,
        load: Callable[[], Awaitable[Any]],
        change: Callable[[Any], Awaitable[object]],
        gone: bool = False,
    ) -> Any:
        """A change governance makes and audits: ``load`` first (so a missing target is
        answered before anything changes), ``change(before)``, then the state after (None when
        ``gone``). Governance writes one entry per change it makes; this writes none."""
        before = await load()
        await change(before)
        return None if gone else await load()

    async def change(
        self,
        action: str,
        target: str,
        *,
        load: Callable[[], Awaitable[Any]],
        change: Callable[[Any], Awaitable[object]],
        refusals: Refusals | None = None,
        gone: bool = False,
    ) -> Any:
        """Change ``target`` and audit it; returns its state after (None when ``gone``).

        ``load`` reads the target's state (raising ``not_found`` when it does not exist, so a
        missing target is answered before anything changes); ``change(before)`` makes the
        change; ``refusals`` answers the exceptions it may raise; ``gone``: the change deletes
        the target.
        """
        before = await load()
        await _refusing(lambda: change(before), refusals)
        after = None if gone else await load()
        await self.audit(action, target, before, after)
        return after

    async def create(
        self,
        action: str,
        *,
        create: Callable[[], Awaitable[int]],
        load: Callable[[int], Awaitable[Any]],
        refusals: Refusals | None = None,
    ) -> Any:
        """Create something and audit it; returns its state.

        ``create`` makes it and returns its id; ``load`` reads it by id. The audit target is
        ``KIND:ID``, KIND being the action's first word (``room.create`` → ``room:12``).
        """
        ident = await _refusing(create, refusals)
        after = await load(ident)
        await self.audit(action, f"{action.partition('.')[0]}:{ident}", None, after)
        return after
