"""The pool's store state (``normal`` / ``failed_over``) and the PostgreSQL steps of a failover.

:func:`read_state` / :func:`write_state` work on the node's :class:`Database`. The other
functions open one short connection of their own to a URL with ``target_session_attrs=any``, so
they reach a standby (or a fenced primary) too: :func:`probe` (is it a standby, its WAL
position, its recorded state), :func:`fence` (``default_transaction_read_only`` for the whole
cluster: no node writes there any more), :func:`promote` (``pg_promote()`` once the standby has
replayed what its old primary had). They need a superuser (or a role granted ``pg_promote`` and
``ALTER SYSTEM``); docs/operations.md, "Disaster recovery".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as lite_insert

from .db import Database, now_ms
from .dsn import StoreUrl, parse
from .schema import pool_state

State = Literal["normal", "failed_over"]
STATES: tuple[State, ...] = ("normal", "failed_over")
CONNECT_TIMEOUT_S = 3.0
# What an unreachable (or starting, or shutting down) server raises on connecting: an OSError,
# a timeout, or one of asyncpg's errors (imported lazily, as db.py does).
_UNREACHABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError)
try:
    import asyncpg as _asyncpg

    _UNREACHABLE += (_asyncpg.PostgresError, _asyncpg.InterfaceError)
except ImportError:  # pragma: no cover - SQLite-only installations
    pass


class FailoverError(Exception):
    """A failover step that cannot be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PoolState:
    state: State = "normal"
    since_ms: int = 0  # 0: never changed
    by: str = ""
    reason: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since_ms": self.since_ms,
            "by": self.by,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Probe:
    reachable: bool
    in_recovery: bool = False
    lsn: int = 0  # a primary's current WAL position; a standby's replayed position
    pool_state: PoolState | None = None  # None: reachable but no schema yet
    error: str = ""


async def _store_ms(conn: Any) -> int:
    if conn.dialect.name == "postgresql":
        sql = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        return int((await conn.execute(text(sql))).scalar_one())
    return now_ms()


def _row(row: Any) -> PoolState:
    if row is None:
        return PoolState()
    return PoolState(row.state, int(row.since_ms), row.by, row.reason)


async def read_state(db: Database) -> PoolState:
    async with db.read() as conn:
        return _row((await conn.execute(select(pool_state).where(pool_state.c.id == 1))).first())


async def write_state(db: Database, state: State, by: str, reason: str) -> PoolState:
    """Record ``state`` at the store's clock (so the two stores' records compare)."""
    async with db.write() as conn:
        values = {"state": state, "since_ms": await _store_ms(conn), "by": by, "reason": reason}
        insert = pg_insert if db.is_postgres else lite_insert
        stmt = insert(pool_state).values(id=1, **values)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))
    return PoolState(state, values["since_ms"], by, reason)  # type: ignore[arg-type]


async def _connect(target: StoreUrl) -> Any:
    import asyncpg

    args = target.asyncpg_args()
    args.setdefault("timeout", CONNECT_TIMEOUT_S)
    return await asyncpg.connect(**args)


async def probe(url: str) -> Probe:
    """What the store at ``url`` is now: never raises (an unreachable store says so)."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            conn = await _connect(replace(parse(url), target_session_attrs="any"))
            try:
                in_recovery = bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
                lsn_sql = (
                    "pg_last_wal_replay_lsn()" if in_recovery else "pg_current_wal_lsn()"
                ) + " - '0/0'::pg_lsn"
                lsn = int(await conn.fetchval(f"SELECT ({lsn_sql})::bigint") or 0)
                state: PoolState | None = None
                if await conn.fetchval("SELECT to_regclass('pool_state') IS NOT NULL"):
                    row = await conn.fetchrow("SELECT * FROM pool_state WHERE id = 1")
                    state = PoolState()
                    if row is not None:
                        state = PoolState(
                            row["state"], int(row["since_ms"]), row["by"], row["reason"]
                        )
            finally:
                await conn.close()
    except (OSError, TimeoutError) as exc:
        return Probe(False, error=str(exc) or type(exc).__name__)
    except Exception as exc:  # asyncpg's errors: a refused login, a database that is not there
        return Probe(False, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return Probe(True, in_recovery, lsn, state)


def _hosts(url: str) -> list[StoreUrl]:
    """One URL per host of ``url`` (``any``: a standby or a fenced primary answers too)."""
    target = replace(parse(url), target_session_attrs="any")
    return [target.with_hosts((host,)) for host in target.hosts] or [target]


async def fence(url: str) -> int | None:
    """Make every primary among ``url``'s hosts read-only for every new transaction, and end
    its client sessions (a transaction they had open rolls back): no node writes there again.
    Returns the highest WAL position of the primaries fenced (final, since nothing can write
    after), or None when none could be reached (a crashed primary needs no fence)."""
    fenced: int | None = None
    for target in _hosts(url):
        try:
            conn = await _connect(target)
        except _UNREACHABLE:
            continue
        try:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                continue
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await conn.execute("SELECT pg_reload_conf()")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            lsn = int(await conn.fetchval("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"))
            fenced = max(fenced or 0, lsn)
        finally:
            await conn.close()
    return fenced


async def unfence(url: str) -> None:
    """Undo :func:`fence` on every primary among ``url``'s hosts (the store becomes the
    pool's again)."""
    for target in _hosts(url):
        try:
            conn = await _connect(target)
        except _UNREACHABLE:
            continue
        try:
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()


async def promote(url: str, *, caught_up_to: int = 0, timeout: float = 30.0) -> None:
    """Promote the standby at ``url`` once it has replayed WAL up to ``caught_up_to`` (the old
    primary's last position, when it could still be read); already a primary: nothing to do."""
    conn = await _connect(replace(parse(url), target_session_attrs="any"))
    try:
        if not await conn.fetchval("SELECT pg_is_in_recovery()"):
            return
        try:
            async with asyncio.timeout(timeout):
                while caught_up_to:
                    replayed = await conn.fetchval(
                        "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
                    )
                    if int(replayed or 0) >= caught_up_to:
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise FailoverError(
                f"the standby has not replayed the old primary's WAL after {timeout:.0f} s;"
                " not promoted (promote it by hand if that primary is lost for good)"
            ) from None
        if not await conn.fetchval("SELECT pg_promote(true, 60)"):
            raise FailoverError("pg_promote() did not finish within 60 s")
    finally:
        await conn.close()
