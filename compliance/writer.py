"""The compliance writer: moves events from the content store's outbox to the compliance database.

::

    content store                          compliance database
    compliance_outbox ──claim a batch──►  append under the chain lock (skip event ids already
         ▲   (FOR UPDATE SKIP LOCKED)      there), hash each row, commit
         └──────── delete the batch ◄──── only after that commit

Killed at any point, nothing is lost (the outbox rows stay until the compliance commit) and
nothing is duplicated (an event id already stored is skipped, then its outbox row deleted).
Several writers may run: on PostgreSQL each claims rows the others have not locked; on SQLite
(a single node) they would only repeat each other's work, which the event ids make harmless.

Every use of a PostgreSQL connection, to either database, is bounded by
``compliance.timeout_s`` (the node's mechanism, :mod:`chatserver.store.health`: the connection
is dropped when its use outlives the bound, and every connection has TCP keepalive), so a frozen
database fails the round instead of hanging it. A failed round is retried after a pause (twice
as long each time, up to :data:`RETRY_MAX_S`); the log says so once when rounds start failing
and once when one succeeds again (:class:`Pause`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from chatserver.config import Config
from chatserver.pool.failover import StoreFailover
from chatserver.store.db import Database, now_ms
from chatserver.store.health import Deadline, StoreUnavailable, describe
from chatserver.store.schema import compliance_outbox

from . import schema
from .endpoint import WriterStats
from .schema import add_counts, chain, event_hash, events

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500
RETRY_MAX_S = 30.0  # the longest pause before a failed round is retried

# What a round that could not use a database raises: a refused or broken connection, a bound
# exceeded (StoreUnavailable, a ChatError ``unavailable``).
UNAVAILABLE_ERRORS = (OSError, SQLAlchemyError, StoreUnavailable, TimeoutError)


class Pause:
    """The writer's failed rounds, logged once per change of state."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the first failed round, while failing
        self.rounds = 0  # failed rounds since then

    def failed(self, exc: BaseException, retry_s: float) -> None:
        self.rounds += 1
        if self.since is None:
            self.since = time.monotonic()
            self.rounds = 1
            log.warning(
                "compliance writer paused: %s; events wait in the outbox, retried every %.1f s"
                " or more (up to %g s) until it works",
                _reason(exc),
                retry_s,
                RETRY_MAX_S,
            )

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning(
                "compliance writer resumed after %.1f s; %d rounds failed meanwhile",
                time.monotonic() - self.since,
                self.rounds,
            )
            self.since = None


@dataclass(slots=True)
class Moved:
    claimed: int = 0  # outbox rows taken
    stored: int = 0  # new events appended to the compliance database


async def append(comp: Database, rows: list[dict[str, Any]]) -> int:
    """Append outbox ``rows`` to the chain in one compliance transaction; returns how many
    were new (rows whose event id is already stored are skipped)."""
    async with comp.write() as conn:
        head = (await conn.execute(select(chain).where(chain.c.id == 1).with_for_update())).one()
        ids = [r["event_id"] for r in rows]
        known = {
            r.event_id
            for r in await conn.execute(select(events.c.event_id).where(events.c.event_id.in_(ids)))
        }
        seq, prev = int(head.head_seq), str(head.head_hash)
        stored_ms = now_ms()
        new: list[dict[str, Any]] = []
        for r in rows:
            if r["event_id"] in known:
                continue
            known.add(r["event_id"])
            seq += 1
            row = {
                "seq": seq,
                "event_id": r["event_id"],
                "ts_ms": r["ts_ms"],
                "kind": r["kind"],
                "node": r["node"],
                "room_id": r["room_id"],
                "user_id": r["user_id"],
                "payload": r["payload"],
                "stored_ms": stored_ms,
                "prev_hash": prev,
            }
            row["hash"] = prev = event_hash(row, prev)
            new.append(row)
        if not new:
            return 0
        await conn.execute(insert(events), new)
        await conn.execute(
            update(chain).where(chain.c.id == 1).values(head_seq=seq, head_hash=prev)
        )
        await add_counts(conn, Counter(r["kind"] for r in new), "stored")
    return len(new)


def _outbox_row(row: Any) -> dict[str, Any]:
    return {
        k: getattr(row, k)
        for k in ("id", "event_id", "ts_ms", "kind", "node", "room_id", "user_id", "payload")
    }


class _Elsewhere(Exception):
    """The compliance database failed while a content store connection was in use: the content
    store is not to blame (its connection is rolled back and kept, its health unchanged)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@asynccontextmanager
async def _bounded(conn: AsyncConnection, seconds: float | None) -> AsyncIterator[None]:
    """Bound the statements of the block as :class:`Database` bounds a whole use: the
    connection is terminated when they outlive ``seconds`` (a cancelled statement would wait
    for its cancel request, and the rollback, on the same dead network)."""
    if seconds is None:
        yield
        return
    assert conn.sync_connection is not None
    driver: Any = conn.sync_connection.connection.driver_connection
    deadline = Deadline(seconds, driver.terminate)
    try:
        yield
    except Exception as exc:
        if deadline.expired:
            raise TimeoutError(f"no answer within {seconds:g} s") from exc
        raise
    finally:
        deadline.cancel()


async def move_batch(content: Database, comp: Database, batch: int = DEFAULT_BATCH) -> Moved:
    """Claim up to ``batch`` outbox rows, store them, then delete them from the outbox."""
    try:
        return await _move_batch(content, comp, batch)
    except _Elsewhere as exc:
        raise exc.error from None


async def _move_batch(content: Database, comp: Database, batch: int) -> Moved:
    stmt = select(compliance_outbox).order_by(compliance_outbox.c.id).limit(batch)
    if content.is_postgres:
        # Hold the claimed rows locked until they are deleted; other writers skip them. The
        # content store's use spans the compliance append (bounded by the compliance database's
        # own timeout), so its two statements are bounded one by one, and the whole use by
        # their bounds and the append's. Cut short after the append committed, the rows stay
        # and the next round deletes them without storing them again.
        step = content.timeout_s
        hold = None if step is None else 2 * step + (comp.use_bound_s or 2 * step)
        async with content.write(hold_s=hold) as conn:
            async with _bounded(conn, step):
                claimed = [
                    _outbox_row(r)
                    for r in await conn.execute(stmt.with_for_update(skip_locked=True))
                ]
            if not claimed:
                return Moved()
            try:
                stored = await append(comp, claimed)
            except Exception as exc:  # not the content store's failure: roll back, keep it up
                raise _Elsewhere(exc) from None
            async with _bounded(conn, step):
                await conn.execute(
                    delete(compliance_outbox).where(
                        compliance_outbox.c.id.in_([r["id"] for r in claimed])
                    )
                )
        return Moved(len(claimed), stored)
    async with content.read() as conn:
        claimed = [_outbox_row(r) for r in await conn.execute(stmt)]
    if not claimed:
        return Moved()
    stored = await append(comp, claimed)
    async with content.write() as conn:
        await conn.execute(
            delete(compliance_outbox).where(compliance_outbox.c.id.in_([r["id"] for r in claimed]))
        )
    return Moved(len(claimed), stored)


async def drain(content: Database, comp: Database, batch: int = DEFAULT_BATCH) -> Moved:
    """Move batches until the outbox is empty (as seen by this writer)."""
    total = Moved()
    while True:
        moved = await move_batch(content, comp, batch)
        total.claimed += moved.claimed
        total.stored += moved.stored
        if moved.claimed < batch:
            return total


async def run(
    config: Config,
    stop: asyncio.Event,
    *,
    poll_s: float = 1.0,
    batch: int = DEFAULT_BATCH,
    export: bool = True,
    once: bool = False,
    stats: WriterStats | None = None,
) -> None:
    """The writer process: drain the outbox every ``poll_s`` and, with ``export``, run the
    configured adapter every ``run_interval_s``. A database that cannot be reached is retried
    (with a growing pause, up to 30 s) until it returns, each use of a connection bounded by
    ``compliance.timeout_s``; nothing is lost meanwhile. ``stats``
    counts what it did (served on ``/metrics`` by compliance/endpoint.py)."""
    from .adapters import export_once

    stats = stats if stats is not None else WriterStats()

    bound = {"timeout_s": config.compliance.timeout_s, "keepalive_s": config.database.keepalive_s}
    content = Database(config.database.url, pool_size=2, **bound)
    comp = Database(config.compliance.database_url, pool_size=2, **bound)
    content.health.label = "content store"
    comp.health.label = "compliance database"
    paused = Pause()
    # The outbox is in the store the pool is on: follow `pool failover` as the nodes do.
    failover = StoreFailover(
        content,
        config.database.url,
        config.database.backup_url,
        config.database.failover_check_s,
    )
    pause = poll_s
    prepared = False
    last_export = 0.0
    try:
        await failover.choose()
        failover.start()
        while not stop.is_set():
            try:
                if not prepared:
                    await schema.prepare(comp, (config.compliance.adapter,))
                    prepared = True
                moved = await drain(content, comp, batch)
                stats.claimed += moved.claimed
                stats.stored += moved.stored
                if moved.claimed:
                    log.info("stored %d events (%d new)", moved.claimed, moved.stored)
                due = time.monotonic() - last_export >= config.compliance.run_interval_s
                if export and (due or once):
                    await export_once(config, comp, content)
                    last_export = time.monotonic()
                    stats.exports += 1
                pause = poll_s
                stats.last_ok, stats.failing = time.monotonic(), False
                paused.succeeded()
                if once:
                    return
            except UNAVAILABLE_ERRORS as exc:
                if once:
                    log.warning("compliance writer: %s", _reason(exc))
                    raise
                paused.failed(exc, pause)
                stats.failures += 1
                stats.failing = True
                pause = min(pause * 2, RETRY_MAX_S)
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
    finally:
        await failover.stop()
        await content.close()
        await comp.close()


def _reason(exc: BaseException) -> str:
    return describe(getattr(exc, "orig", None) or exc)
