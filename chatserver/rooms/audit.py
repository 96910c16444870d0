"""The audit log's one writer: who changed what, when, and the state before and after.

Every way of administering writes through :class:`Audit`, so a change is recorded the same
whichever front end made it::

    client protocol (governance ops) ─┐
    management API ───────────────────┼─► Governance / Accounts ─► Audit.record ─► audit_log
    command line (user add, room add) ┘    (one entry per change)

- :class:`~chatserver.rooms.governance.Governance` records each governance change it commits
  (categories, groups, user policy, rooms: create, settings, roles, moves, disabling, deletion),
  by anyone who may make it — an administrator, a room's manager changing their room, a
  category's creator making a room — named by their user name. The action is the client
  protocol's op (``room.update``, ``room.members``, ``category.create``, …).
- :class:`~chatserver.accounts.Accounts` records the users it creates (``user.create``).
- The management API records what only it does (add-ins, run-time settings, message
  moderation, password resets, disconnects, tokens) through :meth:`Audit.record` too; the
  command line records its changes as ``cli:`` and the operating-system user who ran it.

An entry's states are what :func:`room_state`, :func:`category_state`, :func:`group_state` and
:func:`user_state` make of the resource: its settings and principal lists, never a password,
never what changes by itself (a room's ``last_seq``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import admin as admin_store

if TYPE_CHECKING:
    from ..store.categories import Category
    from ..store.db import Database
    from ..store.principals import Group, Principal
    from ..store.rooms import Room
    from ..store.users import User

# The actor of changes the node makes by itself (the first administrator, a login lockout).
SYSTEM = "system"


class Audit:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, by: User | str, action: str, target: str, before: Any, after: Any
    ) -> None:
        """One entry: ``by`` is the user who made the change (the static management token is
        the user ``token``, with no id), or a label (``system``, ``cli:NAME``)."""
        if isinstance(by, str):
            actor, actor_id = by, None
        else:
            actor, actor_id = by.name, by.id or None
        await admin_store.audit(self._db, actor, actor_id, action, target, before, after)


def room_state(room: Room) -> dict[str, Any]:
    state = room.public(with_roles=True)
    del state["last_seq"]
    return state


def category_state(category: Category) -> dict[str, Any]:
    return category.public(with_principals=True)


def group_state(group: Group, members: list[Principal]) -> dict[str, Any]:
    return {**group.public(), "members": [p.wire() for p in members]}


def user_state(user: User) -> dict[str, Any]:
    """The user as an entry shows them: ``policy`` is their own persistent-chat setting (None:
    the configured default)."""
    return {**user.public(), "is_admin": user.is_admin, "policy": user.persistent_chat_enabled}
