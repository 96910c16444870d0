"""Time-limited leases in the store: which node of a pool runs a job now.

A lease is a row (name, holder, until_ms). :func:`acquire` takes it when it is free, expired,
or already ours, and extends it; a node that stops renewing loses it once ``until_ms`` passes,
so a killed node's job moves to another node within one lease time. Both dialects: one
conditional UPDATE, or an INSERT the primary key makes race-free.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .db import Database
from .schema import leases


async def acquire(db: Database, name: str, holder: str, ttl_ms: int, now_ms: int) -> bool:
    """Take or renew the lease ``name`` for ``ttl_ms`` from ``now_ms``; False if another
    holder's lease has not expired."""
    async with db.write() as conn:
        result = await conn.execute(
            update(leases)
            .where(
                leases.c.name == name,
                (leases.c.holder == holder) | (leases.c.until_ms < now_ms),
            )
            .values(holder=holder, until_ms=now_ms + ttl_ms)
        )
        if result.rowcount:
            return True
        exists = await conn.scalar(select(leases.c.name).where(leases.c.name == name))
        if exists is not None:
            return False
    try:
        async with db.write() as conn:
            await conn.execute(
                insert(leases).values(name=name, holder=holder, until_ms=now_ms + ttl_ms)
            )
    except IntegrityError:
        return False  # another node inserted it first
    return True


async def release(db: Database, name: str, holder: str) -> None:
    async with db.write() as conn:
        await conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


async def holder(db: Database, name: str) -> tuple[str, int] | None:
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(leases.c.holder, leases.c.until_ms).where(leases.c.name == name)
            )
        ).one_or_none()
    return None if row is None else (row.holder, int(row.until_ms))
