"""``chatserver export`` / ``chatserver import`` as real processes, end to end.

The migration path: a SQLite node's deployment exported, imported into a PostgreSQL store, a node
started on it, and the history, seq, client ids and files checked through the client protocol.
Then re-runs (idempotent), conflicts (skip, rename, fail), scopes and hostile files.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
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
from chatserver.transfer import format as fmt
from chatserver.transfer.importer import import_file
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
@pytest.mark.timeout(600)
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


async def small(url: str) -> dict[str, int]:
    """Two users, a room with 5 messages and a closed room with 2."""
    h = Harness(await start_node(node_config(url)))
    try:
        await h.user("alice")
        await h.user("bob")
        lobby, desk = await h.room("lobby"), await h.room("desk")
        alice = await h.login("alice")
        for i in range(5):
            await alice.call("post", room=lobby, text=f"m{i}", cid=f"c{i}")
        for i in range(2):
            await alice.call("post", room=desk, text=f"d{i}", cid=f"d{i}")
        return {"lobby": lobby, "desk": desk}
    finally:
        await h.close()


async def room_rows(url: str) -> list[tuple[str, int, int]]:
    """(name, last_seq, messages) of every room, by name."""
    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            stmt = (
                select(rooms.c.name, rooms.c.last_seq, func.count(messages.c.seq))
                .outerjoin(messages, messages.c.room_id == rooms.c.id)
                .group_by(rooms.c.id, rooms.c.name, rooms.c.last_seq)
                .order_by(rooms.c.name)
            )
            return [(r[0], int(r[1]), int(r[2])) for r in await conn.execute(stmt)]
    finally:
        await db.close()


@pytest.mark.timeout(600)
async def test_conflicts_fail_skip_or_rename_and_reruns_change_nothing(
    db_url: str, tmp_path: Path
) -> None:
    source = await sqlite_store(tmp_path, "source")
    await small(source)
    out = tmp_path / "x.jsonl.gz"
    code, text = await cli("export", "--database", source, "--out", str(out))
    assert code == 0, text
    # The target already has a user "alice" and a room "lobby" with a message of its own.
    h = Harness(await start_node(node_config(db_url)))
    try:
        await h.user("alice")
        lobby = await h.room("lobby")
        await (await h.login("alice")).call("post", room=lobby, text="mine", cid="x")
    finally:
        await h.close()
    before = await room_rows(db_url)

    code, text = await cli("import", str(out), "--database", db_url)  # default: fail
    assert code == 1, text
    assert "conflict: user 'alice' exists" in text and "conflict: room 'lobby' exists" in text
    assert await room_rows(db_url) == before  # nothing changed

    code, text = await cli("import", str(out), "--database", db_url, "--on-conflict", "rename")
    assert code == 0 and "imported as 'lobby (import 1)'" in text, text
    renamed = await room_rows(db_url)
    assert ("lobby (import 1)", 5, 5) in renamed and ("desk", 2, 2) in renamed
    assert ("lobby", 1, 1) in renamed  # the target's own room is untouched
    code, text = await cli("import", str(out), "--database", db_url, "--on-conflict", "rename")
    assert code == 0 and "rooms: 0 created, 2 already here" in text, text
    assert await room_rows(db_url) == renamed  # a re-run renames nothing twice

    # skip, into another copy of the original target: the existing lobby is not touched.
    other = await sqlite_store(tmp_path, "other")
    h = Harness(await start_node(node_config(other)))
    try:
        await h.user("alice")
        await h.room("lobby")
    finally:
        await h.close()
    code, text = await cli("import", str(out), "--database", other, "--on-conflict", "skip")
    assert code == 0 and "room 'lobby' exists: not imported" in text, text
    assert await room_rows(other) == [("desk", 2, 2), ("lobby", 0, 0)]


async def test_a_room_scope_and_a_date_range(tmp_path: Path) -> None:
    source = await sqlite_store(tmp_path, "source")
    await small(source)
    db = Database(source, pool_size=1)
    async with db.read() as conn:
        stamps = sorted(int(t) for t in (await conn.execute(select(messages.c.ts))).scalars())
    await db.close()
    out = tmp_path / "room.jsonl.gz"
    code, text = await cli(
        "export", "--database", source, "--out", str(out), "--room", "lobby",
        "--since", str(stamps[2]),
    )  # fmt: skip
    assert code == 0, text
    lines = [json.loads(line) for line in gzip.open(out)]
    assert lines[0]["t"] == "header" and lines[0]["scope"] == "room"
    assert lines[-1]["t"] == "end"
    assert {r["name"] for r in lines if r["t"] == "room"} == {"lobby"}
    assert all(r["ts"] >= stamps[2] for r in lines if r["t"] == "message")
    assert all(
        "password_hash" in r and r["password_hash"] is None for r in lines if r["t"] == "user"
    )
    target = await sqlite_store(tmp_path, "target")
    code, text = await cli("import", str(out), "--database", target)
    assert code == 0, text
    [(name, last_seq, count)] = await room_rows(target)
    assert name == "lobby" and last_seq == 5 and 0 < count < 5
    # Imported without their hashes, users cannot sign in until a password is set.
    h = Harness(await start_node(node_config(target)))
    try:
        with pytest.raises(Exception, match=r"(?i)password|credentials|login"):
            await h.login("alice")
    finally:
        await h.close()


def write_export(path: Path, lines: list[dict[str, Any]] | list[str]) -> None:
    with gzip.open(path, "wt") as out:
        for line in lines:
            out.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


@pytest.mark.timeout(600)  # a dozen `chatserver` processes on a shared machine
async def test_hostile_files_are_refused_with_the_line_and_the_reason(tmp_path: Path) -> None:
    source = await sqlite_store(tmp_path, "source")
    await small(source)
    out = tmp_path / "good.jsonl.gz"
    code, text = await cli("export", "--database", source, "--out", str(out))
    assert code == 0, text
    good = [json.loads(line) for line in gzip.open(out)]
    room = next(r for r in good if r["t"] == "room")
    message = next(r for r in good if r["t"] == "message")
    user = next(r for r in good if r["t"] == "user")
    cases = {
        "not JSON": [good[0], "{nope"],
        "unknown record type": [good[0], {"t": "evil"}],
        "unknown fields": [good[0], {**user, "extra": 1}],
        "has the wrong type": [good[0], {**user, "is_admin": "yes"}],
        "is not allowed": [good[0], {**room, "privacy": "public"}],
        "longer than": [good[0], {**user, "name": "x" * 300}],
        "not a scrypt hash": [good[0], {**user, "password_hash": "plain"}],
        "beyond the room's last_seq": [
            *[r for r in good if r["t"] != "message" and r["t"] != "end"],
            {**message, "seq": room["last_seq"] + 1},
        ],
        "not a chatserver export": [{"t": "user", **{k: v for k, v in user.items() if k != "t"}}],
    }
    target = await sqlite_store(tmp_path, "target")
    db = Database(target, pool_size=1)
    try:
        for reason, lines in cases.items():
            bad = tmp_path / "bad.jsonl.gz"
            write_export(bad, lines)  # type: ignore[arg-type]
            with pytest.raises(fmt.FormatError, match=reason):
                await import_file(db, io.BytesIO(bad.read_bytes()), on_conflict="rename")
        # A line longer than the format allows is refused before it is parsed.
        huge = tmp_path / "huge.jsonl.gz"
        write_export(huge, [good[0], " " * (fmt.MAX_LINE + 10)])
        with pytest.raises(fmt.FormatError, match="longer than"):
            await import_file(db, io.BytesIO(huge.read_bytes()), on_conflict="rename")
    finally:
        await db.close()
    # The command line says why, with the line, and exits 1.
    code, text = await cli("import", str(bad), "--database", target)
    assert code == 1 and "not a chatserver export" in text, text
    # A truncated file imports what it holds and says so (status 1).
    cut = tmp_path / "cut.jsonl.gz"
    half = [r for r in good if r["t"] != "message"][:-1] + [r for r in good if r["t"] == "message"][
        :3
    ]
    write_export(cut, half)
    resumed = await sqlite_store(tmp_path, "c")
    code, text = await cli("import", str(cut), "--database", resumed)
    assert code == 1 and "INCOMPLETE" in text, text
    # The whole file then completes it, creating nothing twice.
    code, text = await cli("import", str(out), "--database", resumed)
    assert code == 0 and "result: complete" in text and "rooms: 0 created" in text, text
    direct = await sqlite_store(tmp_path, "d")
    code, text = await cli("import", str(out), "--database", direct)
    assert code == 0, text
    assert await room_rows(resumed) == await room_rows(direct) == [("desk", 2, 2), ("lobby", 5, 5)]
    assert await table_counts(resumed) == await table_counts(direct)
