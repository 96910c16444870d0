"""Categories: one level of grouping for rooms, with the principals they allow, deny and let
create rooms, and the switches for invitations, file upload and chat history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import outbox
from .db import Database, now_ms
from .principals import Principal, change_grants, principal
from .schema import categories, category_principals, rooms

ROLES = ("allowed", "denied", "creator")


@dataclass(frozen=True, slots=True)
class Category:
    id: int
    name: str
    description: str
    invitations: bool
    file_upload: bool
    chat_history: bool
    allowed: frozenset[Principal] = field(default_factory=frozenset)
    denied: frozenset[Principal] = field(default_factory=frozenset)
    creators: frozenset[Principal] = field(default_factory=frozenset)

    def public(self, *, with_principals: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "invitations": self.invitations,
            "file_upload": self.file_upload,
            "chat_history": self.chat_history,
        }
        if with_principals:
            for name in ("allowed", "denied", "creators"):
                out[name] = [p.wire() for p in sorted(getattr(self, name))]
        return out


class CategoryExists(Exception):
    pass


class CategoryNotEmpty(Exception):
    pass


async def create_category(
    db: Database,
    name: str,
    description: str = "",
    *,
    invitations: bool = True,
    file_upload: bool = True,
    chat_history: bool = True,
) -> int:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(categories)
                .values(
                    name=name,
                    description=description,
                    invitations=invitations,
                    file_upload=file_upload,
                    chat_history=chat_history,
                    created_ms=now_ms(),
                )
                .returning(categories.c.id)
            )
            category_id = int(result.scalar_one())
            await outbox.capture(
                db,
                conn,
                "CATEGORY_CREATE",
                None,
                {
                    "category": category_id,
                    "name": name,
                    "description": description,
                    "invitations": invitations,
                    "file_upload": file_upload,
                    "chat_history": chat_history,
                },
            )
            return category_id
    except IntegrityError:
        raise CategoryExists(name) from None


async def update_category(db: Database, category_id: int, **values: Any) -> bool:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                update(categories).where(categories.c.id == category_id).values(**values)
            )
            if result.rowcount:
                payload = {"category": category_id, "values": values}
                await outbox.capture(db, conn, "CATEGORY_UPDATE", None, payload)
    except IntegrityError:
        raise CategoryExists(values.get("name", "")) from None
    return bool(result.rowcount)


async def delete_category(db: Database, category_id: int) -> bool:
    async with db.write() as conn:
        count = (
            await conn.execute(select(func.count()).where(rooms.c.category_id == category_id))
        ).scalar_one()
        if count:
            raise CategoryNotEmpty(category_id)
        result = await conn.execute(delete(categories).where(categories.c.id == category_id))
        if result.rowcount:
            await outbox.capture(db, conn, "CATEGORY_DELETE", None, {"category": category_id})
    return bool(result.rowcount)


async def change_principals(
    db: Database,
    category_id: int,
    add: dict[str, list[Principal]],
    remove: dict[str, list[Principal]],
) -> None:
    """Change the lists (roles ``allowed``, ``denied``, ``creator``) in one transaction."""
    assert set(add) | set(remove) <= set(ROLES)
    async with db.write() as conn:
        await change_grants(conn, category_principals, "category_id", category_id, add, remove)
        if any(add.values()) or any(remove.values()):
            payload = {"category": category_id, **outbox.grants(add, remove)}
            await outbox.capture(db, conn, "CATEGORY_ACL", None, payload)


async def load_categories(db: Database) -> dict[int, Category]:
    """Every category with its principal lists (categories are few; the service caches them)."""
    lists: dict[tuple[int, str], set[Principal]] = {}
    async with db.read() as conn:
        for row in await conn.execute(select(category_principals)):
            lists.setdefault((row.category_id, row.role), set()).add(
                principal(row.principal_kind, row.principal_id)
            )
        out = {}
        for row in await conn.execute(select(categories)):
            out[row.id] = Category(
                row.id,
                row.name,
                row.description,
                bool(row.invitations),
                bool(row.file_upload),
                bool(row.chat_history),
                frozenset(lists.get((row.id, "allowed"), ())),
                frozenset(lists.get((row.id, "denied"), ())),
                frozenset(lists.get((row.id, "creator"), ())),
            )
    return out
