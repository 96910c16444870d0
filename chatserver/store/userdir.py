"""What the directory sync reads and writes: directory users and groups, and the sync lease.

Directory users and groups are ordinary rows of ``users`` and ``groups`` with ``source =
'directory'`` and the directory's stable id in ``external_id``; their password hash is a value no
password verifies (``!directory``): their sign-in is an LDAP bind. Users are never deleted (their
messages name them); a user removed from the directory is disabled.

The lease (:func:`acquire_lease`) is a single row of ``directory_sync``, taken on the store's
clock: a node syncs only while it holds an unexpired lease, so across a pool one node syncs at a
time, and another takes over when the holder stops renewing (it died or stopped). The same row
holds the last run's outcome and counts (:func:`status`, read by any node) and a request for a
run now (:func:`request_sync`), which the holder takes (:func:`take_request`) within its poll.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

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
class SyncCounts:
    """What a run saw in the directory and changed here. ``users_disabled`` counts every user
    the run disabled, ``users_removed`` those of them no longer in the directory at all."""

    users_seen: int = 0
    groups_seen: int = 0
    users_added: int = 0
    users_updated: int = 0
    users_disabled: int = 0
    users_removed: int = 0
    users_enabled: int = 0
    groups_added: int = 0
    groups_removed: int = 0
    memberships_changed: int = 0
    conflicts: tuple[str, ...] = ()  # the first few names skipped (taken by local ones)


@dataclass(frozen=True, slots=True)
class GuardStop:
    """A run the mass-removal guard stopped: it would have taken ``leaving`` of ``total``
    directory ``kind`` (users: disabled or removed; groups: removed)."""

    kind: str
    leaving: int
    total: int
    max_share: float


@dataclass(frozen=True, slots=True)
class SyncRequest:
    requested_ms: int
    requested_by: str
    override_guard: bool


@dataclass(frozen=True, slots=True)
class SyncStatus:
    holder: str  # the node holding (or last holding) the lease; "" before any
    lease_until_ms: int
    store_now_ms: int  # the store's clock as the status was read: the lease holds until …
    started_ms: int  # the last run's start; its end is last_run_ms (0: never)
    last_run_ms: int
    outcome: str  # "ok", "failed", "stopped" (by the guard); "" before the first run
    last_result: str  # what the last run did, or why it did not
    counts: SyncCounts | None
    guard: GuardStop | None
    next_run_ms: int
    request: SyncRequest | None  # a run asked for and not yet started


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


async def _sync_row(db: Database, conn: AsyncConnection) -> None:
    """Make the one row of ``directory_sync`` if it is not there yet (in ``conn``'s
    transaction)."""
    t = directory_sync
    make = pg_insert if db.is_postgres else sqlite_insert
    await conn.execute(
        make(t)
        .values(id=1, holder="", lease_until_ms=0, last_run_ms=0, last_result="")
        .on_conflict_do_nothing(index_elements=[t.c.id])
    )


async def acquire_lease(db: Database, holder: str, ttl_ms: int) -> bool:
    """Take or renew the sync lease for ``holder`` until the store's now + ``ttl_ms``; False if
    another holder's lease has not expired."""
    t = directory_sync
    async with db.write() as conn:
        await _sync_row(db, conn)
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


async def record_start(db: Database, holder: str) -> None:
    """The holder's run started now (``running`` until :func:`record_result`)."""
    t = directory_sync
    async with db.write() as conn:
        await conn.execute(
            update(t).where(t.c.id == 1, t.c.holder == holder).values(started_ms=now_ms())
        )


async def record_result(
    db: Database,
    holder: str,
    result: str,
    *,
    outcome: str = "ok",
    counts: SyncCounts | None = None,
    guard: GuardStop | None = None,
    next_run_ms: int = 0,
) -> None:
    """The holder's run ended now with ``outcome`` (``ok``, ``failed``, ``stopped``); ``result``
    says what it did or why it did not."""
    t = directory_sync
    found: dict[str, Any] = {}
    if counts is not None:
        found["counts"] = asdict(counts)
    if guard is not None:
        found["guard"] = asdict(guard)
    async with db.write() as conn:
        await conn.execute(
            update(t)
            .where(t.c.id == 1, t.c.holder == holder)
            .values(
                last_run_ms=now_ms(),
                last_result=result[:2000],
                outcome=outcome,
                counts=json.dumps(found) if found else "",
                next_run_ms=next_run_ms,
            )
        )


async def request_sync(db: Database, by: str, override_guard: bool) -> None:
    """Ask the lease holder for a run now (it sees the request within its poll). A request
    waiting already is replaced: the newest asker's ``override_guard`` counts."""
    t = directory_sync
    async with db.write() as conn:
        await _sync_row(db, conn)
        await conn.execute(
            update(t)
            .where(t.c.id == 1)
            .values(requested_ms=now_ms(), requested_by=by[:128], request_override=override_guard)
        )


async def pending_request(db: Database) -> bool:
    async with db.read() as conn:
        found = (
            await conn.execute(
                select(directory_sync.c.requested_ms).where(directory_sync.c.id == 1)
            )
        ).scalar_one_or_none()
    return bool(found)


async def take_request(db: Database, holder: str) -> SyncRequest | None:
    """The request waiting for a run, if any, taken (cleared) by the lease holder ``holder``."""
    t = directory_sync
    async with db.write() as conn:
        r = (
            await conn.execute(
                select(t.c.requested_ms, t.c.requested_by, t.c.request_override).where(
                    t.c.id == 1, t.c.holder == holder, t.c.requested_ms > 0
                )
            )
        ).first()
        if r is None:
            return None
        await conn.execute(
            update(t)
            .where(t.c.id == 1)
            .values(requested_ms=0, requested_by="", request_override=False)
        )
    return SyncRequest(int(r.requested_ms), r.requested_by, bool(r.request_override))


async def status(db: Database) -> SyncStatus | None:
    t = directory_sync
    async with db.read() as conn:
        r = (await conn.execute(select(t, db.now_ms().label("now")).where(t.c.id == 1))).first()
    if r is None:
        return None
    found = json.loads(r.counts) if r.counts else {}
    counts = found.get("counts")
    guard = found.get("guard")
    return SyncStatus(
        holder=r.holder,
        lease_until_ms=int(r.lease_until_ms),
        store_now_ms=int(r.now),
        started_ms=int(r.started_ms),
        last_run_ms=int(r.last_run_ms),
        outcome=r.outcome,
        last_result=r.last_result,
        counts=None
        if counts is None
        else SyncCounts(**{**counts, "conflicts": tuple(counts["conflicts"])}),
        guard=None if guard is None else GuardStop(**guard),
        next_run_ms=int(r.next_run_ms),
        request=(
            SyncRequest(int(r.requested_ms), r.requested_by, bool(r.request_override))
            if r.requested_ms
            else None
        ),
    )
