"""A store that cannot be written (issue 14, item 10): a password login answered ``internal``
while the disk was full; it answers ``unavailable``, like a post, and nothing half-happens.

The write failure is made the way an operator would meet it, for new store connections:
SQLite opens the database read-only (``PRAGMA query_only``: as root, ``chmod`` would not stop
the writes), PostgreSQL makes every transaction read-only (``ALTER DATABASE … SET
default_transaction_read_only``). Reads keep working, so a token still resumes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from chatserver.client import Client
from chatserver.store.db import Database
from tests.conftest import PASSWORD, Harness

STATIC = "static-token-for-the-full-disk-tests"


@asynccontextmanager
async def writes_fail(db: Database) -> AsyncIterator[None]:
    """Every store connection made inside the block cannot write; existing ones are dropped."""
    if db.is_postgres:
        name = make_url(db.url).database
        async with db.engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            await conn.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            )
        await db.engine.dispose()
        try:
            yield
        finally:
            async with db.engine.connect() as conn:
                await conn.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"))
                await conn.execute(text("COMMIT"))
                await conn.execute(
                    text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
                )
                await conn.execute(text("COMMIT"))
            await db.engine.dispose()
        return

    def read_only(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only = ON")
        cursor.close()

    sync_engine = db.engine.sync_engine
    event.listen(sync_engine, "connect", read_only)
    await db.engine.dispose()
    try:
        yield
    finally:
        event.remove(sync_engine, "connect", read_only)
        await db.engine.dispose()


async def greeted(h: Harness, transport: str = "tcp") -> Client:
    client = await h.connect(transport)
    await client.call("hello", protocol=1)
    return client


async def test_a_login_while_the_store_cannot_write_answers_unavailable(
    harness: Harness,
) -> None:
    await harness.user("alice")
    holder = await harness.login("alice")
    assert holder.token is not None
    async with writes_fail(harness.node.db):
        client = await greeted(harness)
        # the right password: the new session cannot be stored
        reply = await client.request("auth", user="alice", password=PASSWORD)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "unavailable", reply
        # a wrong password: its failure cannot be counted, so it is not answered either way
        wrong = await client.request("auth", user="alice", password="wrong")
        assert wrong["error"]["code"] == "unavailable", wrong
        # what only reads still works: a token resumes
        resumed = await (await greeted(harness, "websocket")).request("auth", token=holder.token)
        assert resumed["ok"] is True
        # logout and a password change cannot be stored either
        logout = await holder.request("logout")
        assert logout["error"]["code"] == "unavailable", logout
        change = await holder.request(
            "password.change", password=PASSWORD, new_password="another password"
        )
        assert change["error"]["code"] == "unavailable", change
    # the store writable again: everything works, nothing was half done
    client = await greeted(harness)
    assert (await client.request("auth", user="alice", password=PASSWORD))["ok"] is True
    assert (await holder.request("logout"))["ok"] is True
