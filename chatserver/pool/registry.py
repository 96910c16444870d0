"""The pool's membership in the store: the ``pool_nodes`` table.

Each node upserts its own row (addresses, state, heartbeat) every ``heartbeat_s`` and reads every
row back; a row whose heartbeat is older than ``dead_after_s`` is a node that is gone, and the
first node to notice deletes it — unless that node still hears the other over a live peer link
(its store is cut or stalled; it is not dead: see ``Pool._hears``). ``state`` is ``active``,
``standby`` or ``draining``; the management API changes it and the node concerned reads it at its
next heartbeat.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..store.db import Database
from ..store.schema import pool_nodes

ACTIVE = "active"
STANDBY = "standby"
DRAINING = "draining"
STATES = (ACTIVE, STANDBY, DRAINING)
# Serializes the "how many are active?" decision of nodes joining at the same moment.
_JOIN_LOCK = 80110001


async def db_now(conn: Any) -> int:
    """The database's clock in ms: heartbeats are compared on one clock, whatever the nodes'."""
    result = await conn.execute(
        text("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    )
    return int(result.scalar_one())


@dataclass(frozen=True)
class NodeRow:
    name: str
    tcp: str
    websocket: str
    peer: str
    management: str
    state: str
    started_ms: int
    heartbeat_ms: int

    def public(self, now: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "tcp": self.tcp,
            "websocket": self.websocket,
            "peer": self.peer,
            "management": self.management,
            "state": self.state,
            "started_ms": self.started_ms,
            "heartbeat_ms": self.heartbeat_ms,
        }
        if now is not None:
            out["heartbeat_age_s"] = round((now - self.heartbeat_ms) / 1000, 3)
        return out


def _row(row: Any) -> NodeRow:
    return NodeRow(
        row.name,
        row.tcp,
        row.websocket,
        row.peer,
        row.management,
        row.state,
        row.started_ms,
        row.heartbeat_ms,
    )


async def list_nodes(db: Database) -> list[NodeRow]:
    return (await list_nodes_at(db))[0]


async def list_nodes_at(db: Database) -> tuple[list[NodeRow], int]:
    """Every row, and the database's clock (to tell heartbeat ages)."""
    async with db.read() as conn:
        now = await db_now(conn)
        result = await conn.execute(select(pool_nodes).order_by(pool_nodes.c.name))
        return [_row(r) for r in result], now


class NameTaken(Exception):
    """Another live node registered under this name."""


async def join(
    db: Database,
    name: str,
    addresses: dict[str, str],
    *,
    started_ms: int,
    max_active: int,
    dead_after_ms: int,
    takeover: bool = False,
) -> str:
    """Register this node; returns its state (``standby`` when ``max_active`` are active).

    A live row with this name belongs to another process, unless ``takeover`` (the caller found
    that row's peer port dead: a restart after a crash) replaces it.
    """
    async with db.write() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _JOIN_LOCK})
        now = await db_now(conn)
        rows = [_row(r) for r in await conn.execute(select(pool_nodes))]
        live = [r for r in rows if now - r.heartbeat_ms <= dead_after_ms]
        for r in live:
            if r.name == name and r.started_ms != started_ms and not takeover:
                raise NameTaken(
                    f"node name {name!r} is in use by a live node (heartbeat"
                    f" {(now - r.heartbeat_ms) / 1000:.1f} s ago); give this node another"
                    " [node] name, or wait pool.dead_after_s for the old one to expire"
                )
        active = sum(1 for r in live if r.state == ACTIVE and r.name != name)
        state = ACTIVE if active < max_active else STANDBY
        await conn.execute(delete(pool_nodes).where(pool_nodes.c.name == name))
        await conn.execute(
            pool_nodes.insert().values(
                name=name, state=state, started_ms=started_ms, heartbeat_ms=now, **addresses
            )
        )
    return state


async def heartbeat(
    db: Database,
    name: str,
    addresses: dict[str, str],
    *,
    state: str,
    started_ms: int,
    max_active: int,
    dead_after_ms: int,
) -> tuple[str, list[NodeRow], int]:
    """Refresh this node's row, or re-create it if another node expired it meanwhile (a node
    stopped or cut off longer than ``dead_after_s``): then, like :func:`join`, it comes back
    active only if fewer than ``max_active`` live nodes are (a standby may have taken its place).

    Returns the state the registry holds for this node (the management API may have changed it),
    every row, and the database's clock.
    """
    async with db.write() as conn:
        now = await db_now(conn)
        current = (
            await conn.execute(
                update(pool_nodes)
                .where(pool_nodes.c.name == name)
                .values(heartbeat_ms=now, started_ms=started_ms, **addresses)
                .returning(pool_nodes.c.state)
            )
        ).scalar_one_or_none()
        if current is None:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _JOIN_LOCK})
            now = await db_now(conn)
            rows = [_row(r) for r in await conn.execute(select(pool_nodes))]
            active = sum(
                1
                for r in rows
                if r.state == ACTIVE and r.name != name and now - r.heartbeat_ms <= dead_after_ms
            )
            current = STANDBY if state == ACTIVE and active >= max_active else state
            statement = (
                pg_insert(pool_nodes)
                .values(
                    name=name, state=current, started_ms=started_ms, heartbeat_ms=now, **addresses
                )
                .on_conflict_do_update(
                    index_elements=[pool_nodes.c.name],
                    set_={"heartbeat_ms": now, "started_ms": started_ms, **addresses},
                )
                .returning(pool_nodes.c.state)
            )
            current = (await conn.execute(statement)).scalar_one()
        rows = [_row(r) for r in await conn.execute(select(pool_nodes).order_by(pool_nodes.c.name))]
    return current, rows, now


@dataclass(frozen=True)
class Expired:
    """What :func:`expire` did: the rows it deleted, the standbys it made active, and every
    node's state before and after (for the audit log)."""

    gone: list[str]
    promoted: list[str]
    before: dict[str, str]
    after: dict[str, str]


async def expire(
    db: Database,
    dead_after_ms: int,
    names: list[str],
    *,
    promote_up_to: int = 0,
    heard: Collection[str] = (),
) -> Expired:
    """Delete the rows of the nodes ``names`` whose heartbeat is older than ``dead_after_ms``
    (checked again here: a node may have beaten since the caller read its row).

    With ``promote_up_to`` (``pool.max_active`` when ``pool.auto_promote`` is on), each active
    node deleted here is replaced by a live standby (by name order) while fewer than that many
    live nodes are active (live: a fresh heartbeat, or named in ``heard``: nodes the caller
    hears over a peer link, whose heartbeat a store outage held back). The transaction takes the
    join lock and deletes before it counts: of several nodes noticing the same death at once,
    only the one whose delete found the row promotes, so exactly one standby takes each place.
    """
    async with db.write() as conn:
        if promote_up_to:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _JOIN_LOCK})
        cutoff = await db_now(conn) - dead_after_ms
        rows = [_row(r) for r in await conn.execute(select(pool_nodes))]
        result = await conn.execute(
            delete(pool_nodes)
            .where(pool_nodes.c.heartbeat_ms < cutoff, pool_nodes.c.name.in_(names))
            .returning(pool_nodes.c.name, pool_nodes.c.state)
        )
        deleted = {r.name: r.state for r in result}
        before = {r.name: r.state for r in rows}
        after = {name: state for name, state in before.items() if name not in deleted}
        promoted: list[str] = []
        places = sum(1 for state in deleted.values() if state == ACTIVE)
        if promote_up_to and places:
            live = [
                r
                for r in rows
                if r.name not in deleted and (r.heartbeat_ms >= cutoff or r.name in heard)
            ]
            active = sum(1 for r in live if r.state == ACTIVE)
            free = min(places, promote_up_to - active)
            standbys = sorted(
                r.name for r in live if r.state == STANDBY and r.heartbeat_ms >= cutoff
            )
            promoted = standbys[: max(free, 0)]
            if promoted:
                await conn.execute(
                    update(pool_nodes)
                    .where(pool_nodes.c.name.in_(promoted), pool_nodes.c.state == STANDBY)
                    .values(state=ACTIVE)
                )
                after.update(dict.fromkeys(promoted, ACTIVE))
        return Expired(sorted(deleted), promoted, before, after)


async def leave(db: Database, name: str, started_ms: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            delete(pool_nodes).where(
                pool_nodes.c.name == name, pool_nodes.c.started_ms == started_ms
            )
        )


async def set_states(db: Database, states: dict[str, str]) -> list[str]:
    """Set several nodes' states in one transaction; returns the names that exist."""
    found = []
    async with db.write() as conn:
        for name, state in states.items():
            assert state in STATES
            result = await conn.execute(
                update(pool_nodes)
                .where(pool_nodes.c.name == name)
                .values(state=state)
                .returning(pool_nodes.c.name)
            )
            if result.scalar_one_or_none() is not None:
                found.append(name)
    return found


async def room_seqs(db: Database, room_ids: list[int]) -> dict[int, int]:
    """The committed ``last_seq`` of each room (for catch-up polling)."""
    from ..store.schema import rooms

    if not room_ids:
        return {}
    if db.is_postgres:
        # Every loaded room, every catch-up interval: one array parameter, not one bound
        # parameter per room rendered into the statement.
        pool = await db.pg_pool()
        rows = await pool.fetch(
            "SELECT id, last_seq FROM rooms WHERE id = ANY($1::bigint[])", room_ids
        )
        return {r["id"]: r["last_seq"] for r in rows}
    async with db.read() as conn:
        result = await conn.execute(
            select(rooms.c.id, rooms.c.last_seq).where(rooms.c.id.in_(room_ids))
        )
        return {r.id: r.last_seq for r in result}
