"""Users, their password hashes, their session tokens, and failed sign-ins (the throttle's state).

Only the SHA-256 of a session token is stored (:func:`token_hash`); revoking a token deletes its
row, so a revoked token stops working on every node that shares the store at once.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from .db import LIKE_ESCAPE, Database, contains_pattern, now_ms
from .schema import (
    category_principals,
    group_members,
    login_failures,
    messages,
    room_principals,
    sessions,
    users,
)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    display_name: str
    is_admin: bool
    persistent_chat_enabled: bool | None = None  # None: the global default
    source: str = "local"  # or "directory" (LDAP: its password is the directory's)
    disabled: bool = False  # refused at sign-in

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "display_name": self.display_name}


class UserExists(Exception):
    pass


def _user(row: object) -> User:
    r: Any = row
    enabled = None if r.persistent_chat_enabled is None else bool(r.persistent_chat_enabled)
    return User(r.id, r.name, r.display_name, bool(r.is_admin), enabled, r.source, bool(r.disabled))


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


async def senders_in_room(db: Database, room_id: int, user_ids: list[int]) -> list[User]:
    """The users among ``user_ids`` (at most a few hundred) who have a message in the room."""
    sent = exists().where(messages.c.room_id == room_id, messages.c.sender_id == users.c.id)
    query = select(users).where(users.c.id.in_(user_ids), sent).order_by(users.c.id)
    async with db.read() as conn:
        return [_user(row) for row in await conn.execute(query)]


async def credentials(db: Database, name: str) -> tuple[User, str] | None:
    """The user called ``name`` and their password hash."""
    async with db.read() as conn:
        row = (await conn.execute(select(users).where(users.c.name == name))).first()
    return (_user(row), row.password_hash) if row else None


async def list_users(db: Database, query: str | None = None, limit: int = 100) -> list[User]:
    stmt = select(users).order_by(users.c.name).limit(limit)
    if query:
        stmt = stmt.where(users.c.name.ilike(contains_pattern(query), escape=LIKE_ESCAPE))
    async with db.read() as conn:
        return [_user(row) for row in await conn.execute(stmt)]


async def count_admins(db: Database) -> int:
    async with db.read() as conn:
        result = await conn.execute(select(func.count()).where(users.c.is_admin.is_(True)))
        return int(result.scalar_one())


async def replace_password(
    db: Database, user_id: int, password_hash: str, *, keep: str | None
) -> bool:
    """Replace the user's password hash and revoke every session token of theirs but the one
    hashing to ``keep``, in one transaction; False if there is no such user."""
    async with db.write() as conn:
        result = await conn.execute(
            update(users).where(users.c.id == user_id).values(password_hash=password_hash)
        )
        if not result.rowcount:
            return False
        stmt = delete(sessions).where(sessions.c.user_id == user_id)
        if keep is not None:
            stmt = stmt.where(sessions.c.token_hash != keep)
        await conn.execute(stmt)
    return True


async def set_disabled(db: Database, user_ids: list[int], disabled: bool) -> None:
    """Disable (refused at sign-in and token resumption) or enable users."""
    if not user_ids:
        return
    async with db.write() as conn:
        await conn.execute(update(users).where(users.c.id.in_(user_ids)).values(disabled=disabled))


async def delete_user(db: Database, user_id: int) -> bool:
    """Delete a user who never posted or uploaded (their sessions, grants and memberships go
    with them); False if there is no such user. :class:`UserInUse` if they did: disable them."""
    try:
        async with db.write() as conn:
            for table, kind, column in (
                (group_members, "member_kind", "member_id"),
                (category_principals, "principal_kind", "principal_id"),
                (room_principals, "principal_kind", "principal_id"),
            ):
                await conn.execute(
                    delete(table).where(table.c[kind] == "user", table.c[column] == user_id)
                )
            result = await conn.execute(delete(users).where(users.c.id == user_id))
    except IntegrityError:
        raise UserInUse(user_id) from None
    return bool(result.rowcount)


class UserInUse(Exception):
    """The user's messages or files name them: they cannot be deleted."""


async def get_password_hash(db: Database, user_id: int) -> str | None:
    async with db.read() as conn:
        result = await conn.execute(select(users.c.password_hash).where(users.c.id == user_id))
        value = result.scalar_one_or_none()
    return str(value) if value is not None else None


# -- session tokens ---------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """What the store keeps of a session token (and what a revocation names)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_session(db: Database, user_id: int, ttl_s: int) -> str:
    """A new random session token for ``user_id``; only its hash is stored.

    Its creation and expiry are on the store's clock, as is the check of :func:`user_for_token`:
    a token lasts ``ttl_s`` on every node, whatever their clocks say.
    """
    token = secrets.token_urlsafe(32)
    created = db.now_ms()
    async with db.write() as conn:
        # Expired sessions of this user go when a new one is made, so the table stays bounded.
        await conn.execute(
            delete(sessions).where(sessions.c.user_id == user_id, sessions.c.expires_ms < created)
        )
        await conn.execute(
            insert(sessions).values(
                token_hash=token_hash(token),
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
                    sessions.c.token_hash == token_hash(token),
                    sessions.c.expires_ms > db.now_ms(),
                    users.c.disabled.is_(False),
                )
            )
        ).first()
    return _user(row) if row else None


async def revoke_token(db: Database, hashed: str) -> int | None:
    """Delete the session whose token hashes to ``hashed``; returns its user, or None."""
    async with db.write() as conn:
        result = await conn.execute(
            delete(sessions).where(sessions.c.token_hash == hashed).returning(sessions.c.user_id)
        )
        user_id = result.scalar_one_or_none()
    return int(user_id) if user_id is not None else None


async def revoke_user_tokens(db: Database, user_id: int, keep: str | None = None) -> int:
    """Delete every session of the user but the one whose token hashes to ``keep``; returns how
    many were deleted."""
    stmt = delete(sessions).where(sessions.c.user_id == user_id)
    if keep is not None:
        stmt = stmt.where(sessions.c.token_hash != keep)
    async with db.write() as conn:
        result = await conn.execute(stmt)
    return int(result.rowcount)


async def live_token_hashes(db: Database, hashes: Iterable[str]) -> set[str]:
    """Those of ``hashes`` that still name a session (not revoked; expired ones included until
    they are cleaned up)."""
    wanted = list(hashes)
    found: set[str] = set()
    async with db.read() as conn:
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            result = await conn.execute(
                select(sessions.c.token_hash).where(sessions.c.token_hash.in_(chunk))
            )
            found.update(str(h) for h in result.scalars())
    return found


# -- failed sign-ins ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failures:
    """The failed sign-ins of one account name or one source address."""

    failures: int
    last_ms: int
    locked_until_ms: int


Key = tuple[str, str]  # (scope, key): ("account", name) or ("address", address)


async def get_login_failures(
    db: Database, keys: Iterable[Key], since_ms: int
) -> dict[Key, Failures]:
    """The failures recorded for ``keys`` whose last failure is at or after ``since_ms`` (older
    ones are forgotten), or that are locked out."""
    wanted = list(keys)
    if not wanted:
        return {}
    t = login_failures
    condition = None
    for scope, key in wanted:
        one = (t.c.scope == scope) & (t.c.key == key)
        condition = one if condition is None else condition | one
    assert condition is not None
    async with db.read() as conn:
        rows = await conn.execute(select(t).where(condition))
        return {
            (r.scope, r.key): Failures(r.failures, r.last_ms, r.locked_until_ms)
            for r in rows
            if r.last_ms >= since_ms or r.locked_until_ms > since_ms
        }


async def record_login_failure(
    db: Database, keys: Iterable[tuple[Key, int]], now: int, forget_before_ms: int, lock_ms: int
) -> dict[Key, tuple[Failures, bool]]:
    """Count one failure for each key, in one transaction; ``keys`` pairs each key with the
    number of failures that locks it out (0: never). A key that reaches it while not locked is
    locked until ``now + lock_ms``. Returns each key's state and whether this call locked it.

    The count starts again from one when the last failure is older than ``forget_before_ms`` and
    the key is not locked.
    """
    t = login_failures
    make = pg_insert if db.is_postgres else sqlite_insert
    out: dict[Key, tuple[Failures, bool]] = {}
    async with db.write() as conn:
        for (scope, key), lock_at in keys:
            new = make(t).values(scope=scope, key=key, failures=1, last_ms=now, locked_until_ms=0)
            stale = (t.c.last_ms < forget_before_ms) & (t.c.locked_until_ms <= now)
            stmt = new.on_conflict_do_update(
                index_elements=[t.c.scope, t.c.key],
                set_={
                    "failures": case((stale, 1), else_=t.c.failures + 1),
                    "last_ms": now,
                },
            ).returning(t.c.failures, t.c.locked_until_ms)
            row = (await conn.execute(stmt)).one()
            failures, locked_until = int(row.failures), int(row.locked_until_ms)
            locked_now = False
            if lock_at and failures >= lock_at and locked_until <= now:
                locked_until = now + lock_ms
                await conn.execute(
                    update(t)
                    .where(t.c.scope == scope, t.c.key == key)
                    .values(locked_until_ms=locked_until)
                )
                locked_now = True
            out[(scope, key)] = (Failures(failures, now, locked_until), locked_now)
    return out


async def clear_login_failures(db: Database, key: Key) -> None:
    async with db.write() as conn:
        await conn.execute(
            delete(login_failures).where(
                login_failures.c.scope == key[0], login_failures.c.key == key[1]
            )
        )


async def prune_login_failures(db: Database, before_ms: int, now: int) -> int:
    """Forget the failures whose last one is older than ``before_ms`` (unless still locked)."""
    t = login_failures
    async with db.write() as conn:
        result = await conn.execute(
            delete(t).where(t.c.last_ms < before_ms, t.c.locked_until_ms <= now)
        )
    return int(result.rowcount)
