"""The compliance outbox: chat events recorded in the same transaction as the change they record.

Callers build :class:`Event` values and pass them to :func:`record` inside their write
transaction (``async with db.write() as conn``), and only when compliance is enabled
(``config.compliance.enabled``); the compliance writer (``compliance/``) moves them to the
compliance database.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import now_ms
from .schema import compliance_outbox


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # JOIN | PART | CHAT | BACKCHAT | REMOVE | REPLACE | CLEAR | …
    room_id: int | None
    user_id: int | None
    payload: dict[str, Any]
    ts_ms: int = field(default_factory=now_ms)


async def record(conn: AsyncConnection, node: str, events: Iterable[Event]) -> None:
    """Insert ``events`` into the outbox on ``conn``, inside the caller's transaction."""
    rows = [
        {
            "event_id": str(uuid.uuid4()),
            "ts_ms": event.ts_ms,
            "kind": event.kind,
            "node": node,
            "room_id": event.room_id,
            "user_id": event.user_id,
            "payload": json.dumps(event.payload, separators=(",", ":")),
        }
        for event in events
    ]
    if rows:
        await conn.execute(insert(compliance_outbox), rows)
