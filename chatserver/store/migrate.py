"""Schema migrations (Alembic, in the top-level ``migrations`` package) and the start-up check.

Alembic's environment runs its own event loop, so these functions are synchronous: call them
before the node's loop starts, or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations

from .db import sqlite_path


class SchemaError(Exception):
    """The database schema is not the one this version of the server expects."""


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision.

    Alembic's environment runs an event loop of its own, so when this thread already runs one
    the migration runs in a worker thread (blocking this one until it is done).
    """
    path = sqlite_path(url) if url.startswith("sqlite") else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(alembic_config(url), "head")
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(command.upgrade, alembic_config(url), "head").result()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


async def current_revision(db: object) -> str | None:
    from .db import Database

    assert isinstance(db, Database)
    async with db.read() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


async def check_schema(db: object) -> None:
    """Raise :class:`SchemaError` unless the schema is at this version's head revision."""
    current = await current_revision(db)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaError("the database has no schema yet: run `chatserver migrate` first")
    script = ScriptDirectory.from_config(alembic_config(""))
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"the database schema ({current}) is newer than this server ({head});"
            " upgrade the server"
        )
    raise SchemaError(
        f"the database schema ({current}) is older than this server ({head}):"
        " run `chatserver migrate`"
    )
