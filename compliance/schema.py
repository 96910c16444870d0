"""The compliance database: its own schema, created by the writer at start (not Alembic).

::

    events   one row per captured event, in chain order: seq 1, 2, 3, … (no gaps), the
             event's fields as captured, stored_ms, and hash = H(prev_hash, the row's fields)
    chain    one row: the head of the hash chain (seq and hash of the last event)
    counts   per event kind: how many are stored, how many exported (for metrics)
    cursors  per adapter: the last exported seq, when, and how many files were written
    meta     key/value: schema_version

Every writer appends under the ``chain`` row's lock, so appends are serialized, ``seq`` is
gap-free and commit order equals ``seq`` order (an adapter that exported up to ``n`` never
misses a later commit below ``n``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, ProgrammingError

from chatserver.store.db import Database, now_ms

SCHEMA_VERSION = "1"
GENESIS = "0" * 64

metadata = MetaData()

events = Table(
    "compliance_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("node", String(128), nullable=False),
    Column("room_id", BigInteger, nullable=True),
    Column("user_id", BigInteger, nullable=True),
    Column("payload", Text, nullable=False),  # JSON, as captured
    Column("stored_ms", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_compliance_events_room_kind", "room_id", "kind"),
)

chain = Table(
    "compliance_chain",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("head_seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
)

counts = Table(
    "compliance_counts",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("stored", BigInteger, nullable=False),
    Column("exported", BigInteger, nullable=False),
)

cursors = Table(
    "compliance_cursors",
    metadata,
    Column("adapter", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),  # the last successful export (0: never)
    Column("files", BigInteger, nullable=False),
)

meta = Table(
    "compliance_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


class ComplianceSchemaError(Exception):
    """The compliance database belongs to another version of this software."""


def event_hash(row: dict[str, Any] | Any, prev_hash: str) -> str:
    """The chain hash of one stored event: SHA-256 over the previous hash and every field."""
    get = row.get if isinstance(row, dict) else row._mapping.get
    fields = [
        prev_hash,
        get("seq"),
        get("event_id"),
        get("ts_ms"),
        get("kind"),
        get("node"),
        get("room_id"),
        get("user_id"),
        get("payload"),
        get("stored_ms"),
    ]
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


async def prepare(db: Database, adapters: tuple[str, ...] = ("xml",)) -> None:
    """Create the schema if it is missing and check its version; idempotent and safe to run
    from several processes at once."""
    for attempt in range(3):
        try:
            async with db.write() as conn:
                await conn.run_sync(metadata.create_all)
            break
        except (IntegrityError, ProgrammingError):
            # Another process created the same tables at the same moment (PostgreSQL).
            if attempt == 2:
                raise
    async with db.write() as conn:
        found = (
            await conn.execute(select(meta.c.value).where(meta.c.key == "schema_version"))
        ).scalar_one_or_none()
        if found is not None and found != SCHEMA_VERSION:
            raise ComplianceSchemaError(
                f"the compliance database has schema version {found}; this chatserver uses"
                f" version {SCHEMA_VERSION}"
            )
    rows: list[tuple[Table, dict[str, Any]]] = [
        (meta, {"key": "schema_version", "value": SCHEMA_VERSION}),
        (meta, {"key": "created_ms", "value": str(now_ms())}),
        (chain, {"id": 1, "head_seq": 0, "head_hash": GENESIS}),
    ]
    rows += [
        (cursors, {"adapter": name, "last_seq": 0, "updated_ms": 0, "files": 0})
        for name in adapters
    ]
    for table, values in rows:
        try:
            async with db.write() as conn:
                await conn.execute(insert(table).values(**values))
        except IntegrityError:
            pass  # already there


async def add_counts(conn: Any, by_kind: Counter[str], column: str) -> None:
    """Add to ``counts.<column>`` per kind (the caller holds the chain or a cursor lock)."""
    existing = {
        r.kind
        for r in await conn.execute(select(counts.c.kind).where(counts.c.kind.in_(list(by_kind))))
    }
    for kind, n in sorted(by_kind.items()):
        if kind in existing:
            await conn.execute(
                update(counts).where(counts.c.kind == kind).values({column: counts.c[column] + n})
            )
        else:
            values = {"kind": kind, "stored": 0, "exported": 0, column: n}
            await conn.execute(insert(counts).values(**values))
