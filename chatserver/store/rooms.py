"""Rooms: the directory of rooms and each room's last sequence number."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from .db import Database, now_ms
from .schema import rooms


@dataclass(frozen=True, slots=True)
class Room:
    id: int
    name: str
    description: str
    last_seq: int

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "last_seq": self.last_seq,
        }


class RoomExists(Exception):
    pass


def _room(row: object) -> Room:
    return Room(row.id, row.name, row.description, row.last_seq)  # type: ignore[attr-defined]


async def create_room(db: Database, name: str, description: str = "") -> Room:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(rooms)
                .values(name=name, description=description, last_seq=0, created_ms=now_ms())
                .returning(rooms.c.id)
            )
            room_id = result.scalar_one()
    except IntegrityError:
        raise RoomExists(name) from None
    return Room(room_id, name, description, 0)


async def get_room(db: Database, room_id: int) -> Room | None:
    async with db.read() as conn:
        row = (await conn.execute(select(rooms).where(rooms.c.id == room_id))).first()
    return _room(row) if row else None


async def list_rooms(
    db: Database, *, query: str | None, after_name: str | None, limit: int
) -> list[Room]:
    """Rooms ordered by name, those whose name or description contains ``query`` (any case)."""
    stmt = select(rooms).order_by(rooms.c.name).limit(limit)
    if query:
        pattern = (
            "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        stmt = stmt.where(
            rooms.c.name.ilike(pattern, escape="\\")
            | rooms.c.description.ilike(pattern, escape="\\")
        )
    if after_name is not None:
        stmt = stmt.where(rooms.c.name > after_name)
    async with db.read() as conn:
        return [_room(row) for row in await conn.execute(stmt)]
