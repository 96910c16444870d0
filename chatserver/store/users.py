"""Users and their session tokens."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from .db import Database, now_ms
from .schema import sessions, users


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    display_name: str
    is_admin: bool
    persistent_chat_enabled: bool | None = None  # None: the global default

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "display_name": self.display_name}


class UserExists(Exception):
    pass


def _user(row: object) -> User:
    r: Any = row
    enabled = None if r.persistent_chat_enabled is None else bool(r.persistent_chat_enabled)
    return User(r.id, r.name, r.display_name, bool(r.is_admin), enabled)


async def create_user(
    db: Database,
    name: str,
    password_hash: str,
    *,
    display_name: str | None = None,
    is_admin: bool = False,
) -> User:
    try:
        async with db.write() as conn:
            result = await conn.execute(
                insert(users)
                .values(
                    name=name,
                    display_name=display_name or name,
                    password_hash=password_hash,
                    is_admin=is_admin,
                    created_ms=now_ms(),
                )
                .returning(users.c.id)
            )
            user_id = result.scalar_one()
    except IntegrityError:
        raise UserExists(name) from None
    return User(user_id, name, display_name or name, is_admin)


async def get_user(db: Database, user_id: int) -> User | None:
    async with db.read() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
    return _user(row) if row else None


async def get_users(db: Database, user_ids: list[int]) -> dict[int, User]:
    """The users among ``user_ids`` that exist, by id (in chunks: a node may ask for 20,000)."""
    found: dict[int, User] = {}
    async with db.read() as conn:
        for start in range(0, len(user_ids), 1000):
            chunk = user_ids[start : start + 1000]
            for row in await conn.execute(select(users).where(users.c.id.in_(chunk))):
                found[row.id] = _user(row)
    return found


async def credentials(db: Database, name: str) -> tuple[User, str] | None:
    """The user called ``name`` and their password hash."""
    async with db.read() as conn:
        row = (await conn.execute(select(users).where(users.c.name == name))).first()
    return (_user(row), row.password_hash) if row else None


async def list_users(db: Database, query: str | None = None, limit: int = 100) -> list[User]:
    stmt = select(users).order_by(users.c.name).limit(limit)
    if query:
        stmt = stmt.where(users.c.name.ilike("%" + query.replace("%", "") + "%"))
    async with db.read() as conn:
        return [_user(row) for row in await conn.execute(stmt)]


async def count_admins(db: Database) -> int:
    async with db.read() as conn:
        result = await conn.execute(select(func.count()).where(users.c.is_admin.is_(True)))
        return int(result.scalar_one())


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_session(db: Database, user_id: int, ttl_s: int) -> str:
    """A new random session token for ``user_id``; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    created = now_ms()
    async with db.write() as conn:
        # Expired sessions of this user go when a new one is made, so the table stays bounded.
        await conn.execute(
            delete(sessions).where(sessions.c.user_id == user_id, sessions.c.expires_ms < created)
        )
        await conn.execute(
            insert(sessions).values(
                token_hash=_token_hash(token),
                user_id=user_id,
                created_ms=created,
                expires_ms=created + ttl_s * 1000,
            )
        )
    return token


async def user_for_token(db: Database, token: str) -> User | None:
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(users)
                .join(sessions, sessions.c.user_id == users.c.id)
                .where(
                    sessions.c.token_hash == _token_hash(token), sessions.c.expires_ms > now_ms()
                )
            )
        ).first()
    return _user(row) if row else None
