"""The room directory: the rooms a user may find, by name, a page at a time."""

from __future__ import annotations

import base64
from typing import Any

from ..protocol.errors import BAD_REQUEST, ChatError
from ..store import rooms as room_store
from ..store.db import Database
from ..store.users import User
from . import access
from .facts import Facts

ROOM_PAGE_DEFAULT = 50
ROOM_PAGE_MAX = 500

_CURSOR_PREFIX = "room:"


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + name).encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        text = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX):
        raise ChatError(BAD_REQUEST, "field 'cursor' is not a cursor of this server")
    return text[len(_CURSOR_PREFIX) :]


class Directory:
    def __init__(self, db: Database, facts: Facts) -> None:
        self._db = db
        self._facts = facts

    async def list_rooms(
        self,
        user: User,
        query: str | None,
        limit: int | None,
        cursor: str | None,
        category: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The rooms ``user`` may find (disabled ones only for administrators), by name."""
        limit = min(limit or ROOM_PAGE_DEFAULT, ROOM_PAGE_MAX)
        after_name = _decode_cursor(cursor) if cursor else None
        facts = self._facts
        actor = await facts.actor(user)
        found: list[dict[str, Any]] = []
        scanned = 0
        # Scan in pages; stop after a bounded amount of work and hand out a cursor to continue.
        while len(found) < limit and scanned < 20 * limit:
            page = await room_store.list_rooms(
                self._db, query=query, after_name=after_name, limit=limit, category_id=category
            )
            if not page:
                after_name = None
                break
            scanned += len(page)
            for candidate in page:
                after_name = candidate.name
                room = await facts.room(candidate.id)
                cat = await facts.category(room.category_id) if room else None
                if room is None or cat is None or (room.disabled and not user.is_admin):
                    continue
                if access.can_find(actor, room, cat):
                    found.append(candidate.public())  # the page's row: a current last_seq
                    if len(found) == limit:
                        break
            if len(page) < limit and len(found) < limit:
                after_name = None
                break
        return found, (_encode_cursor(after_name) if after_name is not None else None)
