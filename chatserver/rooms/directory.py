"""The room directory: the rooms a user may find, by name, a page at a time."""

from __future__ import annotations

import base64
from typing import Any

from ..protocol.errors import BAD_REQUEST, ChatError
from ..store import rooms as room_store
from ..store.db import Database
from ..store.users import User
from . import access
from .addins import Addins
from .facts import Facts

ROOM_PAGE_DEFAULT = 50
ROOM_PAGE_MAX = 500

# A cursor is the last room handed out: its id and name (names are not unique). Cursors made
# before names could repeat hold the name alone ("room:NAME"), and still work.
_CURSOR_PREFIX = "room@"
_OLD_CURSOR_PREFIX = "room:"


def _encode_cursor(name: str, room_id: int | None) -> str:
    text = _OLD_CURSOR_PREFIX + name if room_id is None else f"{_CURSOR_PREFIX}{room_id}:{name}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, int | None]:
    try:
        text = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if text.startswith(_OLD_CURSOR_PREFIX):
        return text[len(_OLD_CURSOR_PREFIX) :], None
    room_id, colon, name = text[len(_CURSOR_PREFIX) :].partition(":")
    if not text.startswith(_CURSOR_PREFIX) or not colon or not room_id.isdigit():
        raise ChatError(BAD_REQUEST, "field 'cursor' is not a cursor of this server")
    return name, int(room_id)


class Directory:
    def __init__(self, db: Database, facts: Facts, addins: Addins | None = None) -> None:
        self._db = db
        self._facts = facts
        self._addins = addins

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
        after = _decode_cursor(cursor) if cursor else None
        facts = self._facts
        actor = await facts.actor(user)
        found: list[dict[str, Any]] = []
        scanned = 0
        # Scan in pages; stop after a bounded amount of work and hand out a cursor to continue.
        while len(found) < limit and scanned < 20 * limit:
            page = await room_store.list_rooms(
                self._db, query=query, after=after, limit=limit, category_id=category
            )
            if not page:
                after = None
                break
            scanned += len(page)
            for candidate in page:
                after = (candidate.name, candidate.id)
                room = await facts.room(candidate.id)
                cat = await facts.category(room.category_id) if room else None
                if room is None or cat is None or (room.disabled and not user.is_admin):
                    continue
                if access.can_find(actor, room, cat):
                    out = candidate.public()  # the page's row: a current last_seq
                    out["addin_info"] = None
                    if self._addins is not None and room.addin_id is not None:
                        if access.can_read(actor, room, cat):  # the URL only for readers
                            await self._addins.fresh()
                            out["addin_info"] = self._addins.info(room.addin_id)
                    found.append(out)
                    if len(found) == limit:
                        break
            if len(page) < limit and len(found) < limit:
                after = None
                break
        return found, (_encode_cursor(*after) if after is not None else None)
