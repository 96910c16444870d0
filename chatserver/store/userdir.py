"""What the directory sync reads and writes: directory users and groups, and the sync lease.

Directory users and groups are ordinary rows of ``users`` and ``groups`` with ``source =
'directory'`` and the directory's stable id in ``external_id``; their password hash is a value no
password verifies (``!directory``): their sign-in is an LDAP bind. Users are never deleted (their
messages name them); a user removed from the directory is disabled.

The lease (:func:`acquire_lease`) is a single row of ``directory_sync``, taken on the store's
clock: a node syncs only while it holds an unexpired lease, so across a pool one node syncs at a
time, and another takes over when the holder stops renewing (it died or stopped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from .db import Database, now_ms
from .schema import directory_sync, group_members, groups, users
from .users import UserExists

DIRECTORY = "directory"
NO_PASSWORD = "!directory"  # never a valid scrypt hash: verify_password refuses it


@dataclass(frozen=True, slots=True)
class StoredUser:
    id: int
    external_id: str
    name: str
    display_name: str
    email: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class StoredGroup:
    id: int
    external_id: str
    name: str


@dataclass(frozen=True, slots=True)
class SyncStatus:
    holder: str
    lease_until_ms: int
    last_run_ms: int
    last_result: str

    def public(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "lease_until_ms": self.lease_until_ms,
            "last_run_ms": self.last_run_ms,
            "last_result": self.last_result,
        }


async def directory_users(db: Database) -> dict[str, StoredUser]:
    """Every directory user, by external id."""
    async with db.read() as conn:
        rows = await conn.execute(select(users).where(users.c.source == DIRECTORY))
        return {
            r.external_id: StoredUser(
                r.id, r.external_id, r.name, r.display_name, r.email or "", bool(r.disabled)
            )
            for r in rows
        }


async def find_user(db: Database, external_id: str, source: str = DIRECTORY) -> StoredUser | None:
    async with db.read() as conn:
        r = (
            await conn.execute(
                select(users).where(users.c.source == source, users.c.external_id == external_id)
            )
        ).first()
    if r is None:
        return None
    return StoredUser(r.id, r.external_id, r.name, r.display_name, r.email or "", bool(r.disabled))


async def put_user(
    db: Database,
    external_id: str,
    name: str,
    display_name: str,
    email: str,
    disabled: bool,
    source: str = DIRECTORY,
) -> tuple[int, bool]:
    """Create or update the user ``external_id`` of ``source`` (``directory``, or ``oidc`` with
    the issuer and subject as id); returns (its id, whether it was created).
    :class:`UserExists` if another user (a local one) has the name."""
    values = {"name": name, "display_name": display_name or name, "email": email or None}
    try:
        async with db.write() as conn:
            found = (
                await conn.execute(
                    select(users.c.id).where(
                        users.c.source == source, users.c.external_id == external_id
                    )
                )
            ).scalar_one_or_none()
            if found is not None:
                await conn.execute(
                    update(users).where(users.c.id == found).values(disabled=disabled, **values)
                )
                return int(found), False
            result = await conn.execute(
                insert(users)
                .values(
                    password_hash=NO_PASSWORD,
                    is_admin=False,
                    created_ms=now_ms(),
                    source=source,
                    external_id=external_id,
                    disabled=disabled,
                    **values,
                )
                .returning(users.c.id)
            )
            return int(result.scalar_one()), True
    except IntegrityError:
        raise UserExists(name) from None


async def directory_groups(db: Database, source: str = DIRECTORY) -> dict[str, StoredGroup]:
    """Every group of ``source`` (the directory's, or single sign-on's), by external id."""
    async with db.read() as conn:
        rows = await conn.execute(select(groups).where(groups.c.source == source))
        return {r.external_id: StoredGroup(r.id, r.external_id, r.name) for r in rows}


async def rename_group(db: Database, group_id: int, name: str) -> bool:
    """False if another group has the name."""
    try:
        async with db.write() as conn:
            await conn.execute(update(groups).where(groups.c.id == group_id).values(name=name))
    except IntegrityError:
        return False
    return True


async def user_members(
    db: Database, source: str = DIRECTORY, user_id: int | None = None
) -> dict[int, set[int]]:
    """The direct user members of every group of ``source`` (the sync stores them flattened),
    or only ``user_id``'s memberships."""
    out: dict[int, set[int]] = {}
    stmt = (
        select(group_members.c.group_id, group_members.c.member_id)
        .join(groups, groups.c.id == group_members.c.group_id)
        .where(groups.c.source == source, group_members.c.member_kind == "user")
    )
    if user_id is not None:
        stmt = stmt.where(group_members.c.member_id == user_id)
    async with db.read() as conn:
        rows = await conn.execute(stmt)
        for r in rows:
            out.setdefault(int(r.group_id), set()).add(int(r.member_id))
    return out


# -- the lease ----------------------------------------------------------------------------------


async def acquire_lease(db: Database, holder: str, ttl_ms: int) -> bool:
    """Take or renew the sync lease for ``holder`` until the store's now + ``ttl_ms``; False if
    another holder's lease has not expired."""
    t = directory_sync
    async with db.write() as conn:
        make = pg_insert if db.is_postgres else sqlite_insert
        await conn.execute(
            make(t)
            .values(id=1, holder="", lease_until_ms=0, last_run_ms=0, last_result="")
            .on_conflict_do_nothing(index_elements=[t.c.id])
        )
        now = db.now_ms()
        result = await conn.execute(
            update(t)
            .where(and_(t.c.id == 1, or_(t.c.holder == holder, t.c.lease_until_ms < now)))
            .values(holder=holder, lease_until_ms=now + ttl_ms)
        )
        return bool(result.rowcount)


async def release_lease(db: Database, holder: str) -> None:
    t = directory_sync
    async with db.write() as conn:
        await conn.execute(
            update(t).where(t.c.id == 1, t.c.holder == holder).values(lease_until_ms=0)
        )


async def record_result(db: Database, holder: str, result: str) -> None:
    t = directory_sync
    async with db.write() as conn:
        await conn.execute(
            update(t)
            .where(t.c.id == 1, t.c.holder == holder)
            .values(last_run_ms=now_ms(), last_result=result[:2000])
        )


async def status(db: Database) -> SyncStatus | None:
    async with db.read() as conn:
        r = (await conn.execute(select(directory_sync).where(directory_sync.c.id == 1))).first()
    if r is None:
        return None
    return SyncStatus(r.holder, int(r.lease_until_ms), int(r.last_run_ms), r.last_result)
