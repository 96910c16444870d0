"""``chatserver export`` / ``chatserver import`` as real processes, end to end.

The migration path: a SQLite node's deployment exported, imported into a PostgreSQL store, a node
started on it, and the history, seq, client ids and files checked through the client protocol.
Then re-runs (idempotent), conflicts (skip, rename, fail), scopes and hostile files.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from chatserver.store.categories import change_principals, create_category
from chatserver.store.db import Database
from chatserver.store.migrate import upgrade
from chatserver.store.principals import add_group_members, create_group, principal
from chatserver.store.rooms import change_roles, create_room
from chatserver.store.schema import file_chunks, files, messages, rooms, users
from chatserver.testing import PostgresCluster
from tests.conftest import DIALECTS, PASSWORD, Harness, node_config, scaled, start_node


async def cli(*args: str, timeout: float = 120) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatserver",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), scaled(timeout))
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def sqlite_store(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path}/{name}.db"
    await asyncio.to_thread(upgrade, url)
    return url


async def seed(url: str) -> dict[str, Any]:
    """A small deployment with every kind of object, through a running node."""
    h = Harness(await start_node(node_config(url)))
    try:
        accounts = h.node.accounts
        alice_id = (await accounts.add_user("alice", PASSWORD, by="test", is_admin=True)).id
        await h.user("bob")
        db = h.node.db
        group = await create_group(db, "traders", "the desk")
        await add_group_members(db, group.id, [principal("user", alice_id)])
        ops = await create_category(db, "Ops", description="operations")
        await change_principals(db, ops, {"allowed": [principal("group", group.id)]}, {})
        lobby = (await create_room(db, "lobby")).id
        desk = (await create_room(db, "desk", category_id=ops, privacy="closed")).id
        await change_roles(db, desk, {"manager": [principal("user", alice_id)]}, {})
        alice = await h.login("alice")
        bob = await h.login("bob")
        for i in range(30):
            await alice.call("post", room=lobby, text=f"hello {i} ünï", cid=f"a-{i}")
            await bob.call("post", room=lobby, text=f"reply {i}", cid=f"b-{i}")
        await alice.call("post", room=desk, text="desk only", cid="d-1")
        data = os.urandom(20_000)
        uploaded = await alice.upload(h.http, lobby, data, name="report.bin", text="numbers")
        history = (await alice.call("history", room=lobby, limit=200))["messages"]
        return {"lobby": lobby, "desk": desk, "history": history, "data": data, "file": uploaded}
    finally:
        await h.close()


def strip(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the client sees it, without the ids a store assigns (room, file id)."""
    out = {k: v for k, v in message.items() if k not in ("room", "file")}
    if message.get("file"):
        out["file"] = {k: v for k, v in message["file"].items() if k != "id"}
    return out


async def table_counts(url: str) -> dict[str, int]:
    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            return {
                t.name: int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
                for t in (users, rooms, messages, files, file_chunks)
            }
    finally:
        await db.close()


@pytest.mark.postgres
@pytest.mark.skipif("postgresql" not in DIALECTS, reason="PostgreSQL tests are off")
async def test_sqlite_to_postgresql_keeps_history_seq_cids_and_files(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    source = await sqlite_store(tmp_path, "source")
    seeded = await seed(source)
    out = tmp_path / "all.jsonl.gz"
    code, text = await cli(
        "export", "--database", source, "--out", str(out), "--files", "--with-password-hashes"
    )
    assert code == 0, text
    target = await pg_cluster.create_database("transfer_target", template="postgres")
    code, text = await cli("import", str(out), "--database", target)
    assert code == 0 and "result: complete" in text, text
    assert "rooms: 2 created" in text and "messages: 62 read" in text, text
    before = await table_counts(target)
    code, text = await cli("import", str(out), "--database", target)  # idempotent
    assert code == 0 and "rooms: 0 created, 2 already here" in text, text
    assert await table_counts(target) == before

    h = Harness(await start_node(node_config(target)))
    try:
        alice = await h.login("alice")  # her password hash came along
        rooms_here = {r["name"]: r["id"] for r in (await alice.call("rooms"))["rooms"]}
        assert set(rooms_here) >= {"lobby", "desk"}, rooms_here
        lobby = rooms_here["lobby"]
        history = (await alice.call("history", room=lobby, limit=200))["messages"]
        assert [strip(m) for m in history] == [strip(m) for m in seeded["history"]]
        assert [m["seq"] for m in history] == list(range(1, 62))
        # A client retrying a post it made before the migration gets its original seq back.
        again = await alice.call("post", room=lobby, text="hello 3 ünï", cid="a-3")
        assert again["seq"] == next(m["seq"] for m in history if m["cid"] == "a-3")
        new = await alice.call("post", room=lobby, text="after the move", cid="new-1")
        assert new["seq"] == 62
        file_id = history[-1]["file"]["id"]
        assert await alice.download(h.http, file_id) == seeded["data"]
        desk = rooms_here["desk"]
        assert (await alice.call("history", room=desk))["messages"][0]["cid"] == "d-1"
        bob = await h.login("bob")  # bob may not see the closed desk room: its roles came along
        assert "desk" not in {r["name"] for r in (await bob.call("rooms"))["rooms"]}
    finally:
        await h.close()
