"""The compliance outbox: chat events recorded in the same transaction as the change they record.

Callers build :class:`Event` values and pass them to :func:`record` inside their write
transaction (``async with db.write() as conn``), and only when compliance is enabled
(``config.compliance.enabled``); the compliance writer (``compliance/``) moves them to the
compliance database and deletes them from here only after that commit (docs/compliance.md).

Capture is switched on per :class:`~chatserver.store.db.Database` with :func:`enable` (the chat
service does it when ``[compliance] enabled``); the store modules then call :func:`capture` inside
their write transactions. With capture off, :func:`capture` returns at once: no query is added.
The user on whose behalf a change is made is taken from :data:`ACTOR` (set per request by the
session, or with :func:`acting_as`).
"""

from __future__ import annotations

import json
import uuid
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database, now_ms
from .schema import compliance_outbox

# The user whose request is being served (None: the system, or a command-line tool).
ACTOR: ContextVar[int | None] = ContextVar("chatserver_compliance_actor", default=None)

_capturing: weakref.WeakKeyDictionary[Database, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # JOIN | PART | CHAT | BACKCHAT | REMOVE | REPLACE | CLEAR | …
    room_id: int | None
    user_id: int | None
    payload: dict[str, Any]
    ts_ms: int = field(default_factory=now_ms)


def _rows(node: str, events: Iterable[Event]) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "ts_ms": event.ts_ms,
            "kind": event.kind,
            "node": node,
            "room_id": event.room_id,
            "user_id": event.user_id,
            "payload": json.dumps(event.payload, separators=(",", ":"), sort_keys=True),
        }
        for event in events
    ]


async def record(conn: AsyncConnection, node: str, events: Iterable[Event]) -> None:
    """Insert ``events`` into the outbox on ``conn``, inside the caller's transaction."""
    rows = _rows(node, events)
    if rows:
        await conn.execute(insert(compliance_outbox), rows)


async def record_pg(conn: Any, node: str, events: Iterable[Event]) -> None:
    """:func:`record` on a raw asyncpg connection (the group-commit fast path), in one statement."""
    rows = _rows(node, events)
    if not rows:
        return
    await conn.execute(
        "INSERT INTO compliance_outbox (event_id, ts_ms, kind, node, room_id, user_id, payload)"
        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],"
        " $6::bigint[], $7::text[])",
        [r["event_id"] for r in rows],
        [r["ts_ms"] for r in rows],
        [r["kind"] for r in rows],
        [r["node"] for r in rows],
        [r["room_id"] for r in rows],
        [r["user_id"] for r in rows],
        [r["payload"] for r in rows],
    )


def enable(db: Database, node: str) -> None:
    """Capture events of changes made through ``db``, recorded as coming from ``node``."""
    _capturing[db] = node


def disable(db: Database) -> None:
    _capturing.pop(db, None)


def node_for(db: Database) -> str | None:
    """The node name events are recorded under, or None when capture is off for ``db``."""
    return _capturing.get(db)


def grants(add: dict[str, list[Any]], remove: dict[str, list[Any]]) -> dict[str, Any]:
    """The payload of an ACL change: ``{"add": {role: [principal]}, "remove": …}``."""
    return {
        "add": {role: [p.wire() for p in ps] for role, ps in add.items() if ps},
        "remove": {role: [p.wire() for p in ps] for role, ps in remove.items() if ps},
    }


@contextmanager
def acting_as(user_id: int | None) -> Iterator[None]:
    """Attribute the changes made inside the block to ``user_id``."""
    token = ACTOR.set(user_id)
    try:
        yield
    finally:
        ACTOR.reset(token)


async def capture(
    db: Database,
    conn: AsyncConnection,
    kind: str,
    room_id: int | None,
    payload: dict[str, Any],
) -> None:
    """Record one event of a change made on ``conn`` when capture is on for ``db``; a no-op
    (no query) otherwise."""
    node = _capturing.get(db)
    if node is not None:
        await record(conn, node, [Event(kind, room_id, ACTOR.get(), payload)])
