"""The Alembic migrations build exactly the schema that ``chatserver/store/schema.py`` declares.

The store's queries are written against ``schema.metadata``; the database they run on was built
by ``migrations/``. Autogenerate's comparison of the two, on a fresh database of each dialect
migrated to head, must find nothing to change: a column, index, constraint or type added to one
and not the other fails here.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from chatserver.store.dsn import parse
from chatserver.store.migrate import head_revision, upgrade
from chatserver.store.schema import metadata
from chatserver.testing import PostgresCluster
from tests.conftest import DIALECTS

_numbers = itertools.count(1)


async def _fresh_database(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (not the suite's migrated template), migrated to head here."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/fresh.db"
    else:
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        url = await cluster.create_database(f"migrations_{next(_numbers)}", template="template0")
    await asyncio.to_thread(upgrade, url)
    return url


# Differences that are known and do not matter, each with the reason. A diff is
# ("modify_default", schema, table, column, existing, database's default, schema.py's default).
ROOMS_BACKFILL_DEFAULTS = {"category_id", "privacy", "type", "disabled", "invitations"}


def _known_benign(diff: tuple[Any, ...], dialect: str) -> bool:
    kind, table, column = (
        diff[0],
        diff[2] if len(diff) > 2 else None,
        diff[3] if len(diff) > 3 else None,
    )
    if kind == "remove_table" and dialect == "sqlite" and diff[1].name.startswith("messages_fts"):
        # The FTS5 index of messages (migration 0012) and its shadow tables: SQLAlchemy has no
        # words for a virtual table, so schema.py names it in a comment.
        return True
    if kind == "remove_index" and diff[1].name in ("ix_messages_search", "ix_messages_tsv"):
        # The GIN index of search (migration 0012's on SQLite's side, 0014's on PostgreSQL's),
        # likewise only in a comment.
        return True
    if (
        kind == "remove_column"
        and dialect == "postgresql"
        and (diff[2], diff[3].name)
        == (
            "messages",
            "tsv",
        )
    ):
        # Migration 0014's generated tsvector column, on PostgreSQL only (SQLite has FTS5):
        # schema.py cannot declare a column for one dialect; no statement of the store names it
        # except chatserver/store/search.py's.
        return True
    if kind == "remove_index" and dialect == "postgresql" and diff[1].name == "ix_users_lower_name":
        # Migration 0011's expression index (the case-insensitive lookup of mentioned names) on
        # PostgreSQL only: schema.py cannot declare it for one dialect, and SQLAlchemy does not
        # reflect expression indexes on SQLite.
        return True
    if kind != "modify_default":
        return False
    if table == "rooms" and column in ROOMS_BACKFILL_DEFAULTS and diff[6] is None:
        # Migration 0002 added these NOT NULL columns to a table that may hold rows, so it gave
        # them server defaults to fill those rows, and never dropped the defaults; schema.py
        # declares only Python-side defaults. Every insert the server makes goes through
        # schema.py and so names each column, and the database default is never used. But note
        # the database says privacy 'open' where schema.py says 'closed': a migration dropping
        # these defaults (or schema.py declaring them) would remove the trap.
        return True
    if dialect == "sqlite" and diff[6] is not None and diff[6].arg == "":
        # messages.state, directory_sync.outcome, …: both sides say DEFAULT '' (see the table's
        # SQL); Alembic's SQLite comparison strips the quotes only from a non-empty literal, so
        # it compares "''" with "" and reports it.
        reflected = str(diff[5].arg.text).strip("()")
        return diff[6] is not None and diff[6].arg == "" and reflected == "''"
    return False


def _flatten(diffs: list[Any]) -> list[tuple[Any, ...]]:
    """compare_metadata groups a table's column changes in a list; one tuple per change."""
    out: list[tuple[Any, ...]] = []
    for diff in diffs:
        out.extend(diff if isinstance(diff, list) else [diff])
    return out


def _compare(sync_conn: Any) -> tuple[str | None, list[Any]]:
    context = MigrationContext.configure(
        sync_conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return context.get_current_revision(), compare_metadata(context, metadata)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_migrations_produce_schema_py(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await _fresh_database(dialect, request, tmp_path)
    target = parse(url)
    engine = create_async_engine(target.engine_url(), connect_args=target.connect_args())
    try:
        async with engine.connect() as conn:
            revision, diffs = await conn.run_sync(_compare)
    finally:
        await engine.dispose()
    assert revision == head_revision()
    unexpected = [d for d in _flatten(diffs) if not _known_benign(d, dialect)]
    assert unexpected == [], "migrations/ and schema.py differ:\n" + "\n".join(
        map(repr, unexpected)
    )
