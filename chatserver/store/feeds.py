"""Saved topic feeds: a name and a query in the search syntax, per user (issue 17)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from .db import Database, now_ms
from .schema import feeds


@dataclass(frozen=True, slots=True)
class Feed:
    id: int
    user_id: int
    name: str
    query: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "query": self.query}


class FeedRefused(Exception):
    """Not saved: ``reason`` is "exists" (the name is taken) or "full" (too many feeds)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _feed(row: Any) -> Feed:
    return Feed(int(row.id), int(row.user_id), row.name, row.query)


async def add(db: Database, user_id: int, name: str, query: str, max_feeds: int) -> Feed:
    """Save a feed; :class:`FeedRefused` when ``user_id`` has ``max_feeds`` or ``name``."""
    async with db.write() as conn:
        rows = list(await conn.execute(select(feeds.c.name).where(feeds.c.user_id == user_id)))
        if any(r.name == name for r in rows):
            raise FeedRefused("exists")
        if len(rows) >= max_feeds:
            raise FeedRefused("full")
        result = await conn.execute(
            insert(feeds)
            .values(user_id=user_id, name=name, query=query, created_ms=now_ms())
            .returning(feeds.c.id)
        )
        return Feed(int(result.scalar_one()), user_id, name, query)


async def of_user(db: Database, user_id: int) -> list[Feed]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(feeds).where(feeds.c.user_id == user_id).order_by(feeds.c.id)
        )
        return [_feed(r) for r in rows]


async def remove(db: Database, user_id: int, feed_id: int) -> bool:
    async with db.write() as conn:
        result = await conn.execute(
            delete(feeds).where(feeds.c.id == feed_id, feeds.c.user_id == user_id)
        )
        return bool(result.rowcount)


async def count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(feeds))).scalar_one())
