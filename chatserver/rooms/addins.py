"""Room add-ins as clients see them: ``{id, name, url}`` by id, for the room object of a reader.

The table is small (administrators create add-ins) and read on every join, room view and room
list page that shows one, so it is kept here whole and read again from the store when older than
:data:`TTL_S`: a changed or deleted add-in shows within that long on every node. Who may see an
add-in is the caller's business (only those who may read the room: docs/governance.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..store import admin as admin_store
from ..store.db import Database

TTL_S = 2.0
# Add-ins kept at most (the rest answer as if they had none; administrators make a handful).
MAX_ADDINS = 10_000


class Addins:
    def __init__(self, db: Database, ttl_s: float = TTL_S) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._by_id: dict[int, dict[str, Any]] = {}
        self._loaded_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None

    async def fresh(self) -> None:
        """Read the add-ins again if the copy is older than the TTL (one read for all callers)."""
        if time.monotonic() - self._loaded_at <= self._ttl_s:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        rows = await admin_store.list_addins(self._db)
        self._by_id = {
            a["id"]: {"id": a["id"], "name": a["name"], "url": a["url"]} for a in rows[:MAX_ADDINS]
        }
        self._loaded_at = time.monotonic()

    def info(self, addin_id: int | None) -> dict[str, Any] | None:
        """The add-in as of the last read (call :meth:`fresh` first), or ``None``."""
        return None if addin_id is None else self._by_id.get(addin_id)

    def forget(self) -> None:
        """An add-in changed here: read them again on next use."""
        self._loaded_at = float("-inf")

    def listing(self) -> list[dict[str, Any]]:
        """Every add-in as of the last read, by name: ``{id, name}`` (a room's managers choose
        from these; the URL is shown only with a room its caller may read)."""
        return sorted(
            ({"id": a["id"], "name": a["name"]} for a in self._by_id.values()),
            key=lambda a: (a["name"], a["id"]),
        )
