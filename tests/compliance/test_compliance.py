"""Compliance: capture into the outbox, the writer, verify, the XML adapter, metrics.

Every test runs on both dialects (the compliance database follows the content store's: SQLite
next to a SQLite store, a database on a second PostgreSQL cluster next to a PostgreSQL store).
The writer, export and verify run as real ``chatserver compliance …`` processes where the test is
about them, in process where it only needs their effect.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, func, select, update

from chatserver.client import Client
from chatserver.config import Config
from chatserver.store import outbox
from chatserver.store.db import Database
from chatserver.store.schema import compliance_outbox, rooms
from chatserver.testing import PostgresCluster
from compliance import schema as comp_schema
from compliance.metrics import ComplianceMetrics
from compliance.schema import events
from compliance.verify import verify
from compliance.writer import drain
from compliance.xml_adapter import export
from tests.conftest import DIALECTS, PASSWORD, Harness, node_config, scaled, start_node

XSD = Path(__file__).resolve().parents[2] / "compliance" / "conversations.xsd"
EVERYONE = {"kind": "everyone", "id": 0}

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def comp_cluster() -> Iterator[PostgresCluster]:
    """A second PostgreSQL cluster: compliance databases live apart from the content store."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def comp_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/compliance.db"
    cluster: PostgresCluster = request.getfixturevalue("comp_cluster")
    return await cluster.create_database(f"compliance_{next(_numbers)}")


def comp_config(db_url: str, comp_url: str, tmp_path: Path, **options: Any) -> Config:
    values = {"enabled": True, "database_url": comp_url, "output_dir": str(tmp_path / "out")}
    values.update(options)
    return node_config(db_url, compliance=values)


def comp_env(config: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env["CHATSERVER_DATABASE_URL"] = config.database.url
    env["CHATSERVER_NODE_NAME"] = config.node.name
    for key, value in config.compliance.model_dump().items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"CHATSERVER_COMPLIANCE_{key.upper()}"] = text
    return env


async def compliance_cmd(
    config: Config, *args: str, timeout: float = 60, command: tuple[str, ...] = ("compliance",)
) -> tuple[int, str]:
    """``python -m compliance ARGS`` (= ``chatserver compliance ARGS``); its status and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *command,
        *args,
        env=comp_env(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), scaled(timeout))
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class Stores:
    """The content store and the compliance database, opened by the test itself."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.content = Database(config.database.url, pool_size=2)
        self.comp = Database(config.compliance.database_url, pool_size=2)

    async def prepare(self) -> None:
        await comp_schema.prepare(self.comp)

    async def drain(self) -> None:
        await self.prepare()
        await drain(self.content, self.comp)

    async def events(self, kind: str | None = None) -> list[Any]:
        stmt = select(events).order_by(events.c.seq)
        if kind is not None:
            stmt = stmt.where(events.c.kind == kind)
        async with self.comp.read() as conn:
            return list(await conn.execute(stmt))

    async def outbox_depth(self) -> int:
        async with self.content.read() as conn:
            stmt = select(func.count()).select_from(compliance_outbox)
            return int((await conn.execute(stmt)).scalar_one())

    async def close(self) -> None:
        await self.content.close()
        await self.comp.close()


@pytest.fixture
async def setup(
    db_url: str, comp_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Harness, Stores]]:
    config = comp_config(db_url, comp_url, tmp_path)
    node = await start_node(config)
    h = Harness(node)
    stores = Stores(config)
    try:
        yield h, stores
    finally:
        await h.close()
        await stores.close()


async def admin(h: Harness) -> tuple[Client, int]:
    uid = (await h.node.accounts.add_user("root", PASSWORD, by="test", is_admin=True)).id
    return await h.login("root"), uid


async def outbox_kinds(stores: Stores, user_id: int) -> list[str]:
    stmt = (
        select(compliance_outbox.c.kind)
        .where(compliance_outbox.c.user_id == user_id)
        .order_by(compliance_outbox.c.id)
    )
    async with stores.content.read() as conn:
        return [r.kind for r in await conn.execute(stmt)]


def payload(row: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(row.payload)
    return value


def exported_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.glob("chat-*.xml") if not p.name.endswith("-attachments.xml")
    )


def parse_valid(path: Path) -> Any:
    """The file's tree, after validating it against the shipped XSD."""
    xsd = etree.XMLSchema(etree.parse(str(XSD)))
    tree = etree.parse(str(path))
    assert xsd.validate(tree), f"{path.name}: {xsd.error_log}"
    return tree


def exported_ids(directory: Path) -> list[str]:
    """The event id of every exported Message, across every file, with repeats."""
    out = []
    for path in exported_files(directory):
        out += parse_valid(path).xpath("//Messages/Message/@eventId")
    return out


# -- capture -------------------------------------------------------------------------------


async def test_every_event_type_is_captured_with_its_fields(
    setup: tuple[Harness, Stores], tmp_path: Path
) -> None:
    h, stores = setup
    root, root_id = await admin(h)
    bob_id = (await h.node.accounts.add_user("bob", PASSWORD, by="test")).id
    # Governance: a category (history off), its ACL, a room, its roles, a group, the policy.
    cat = (await root.call("category.create", name="quiet", chat_history=False))["category"]["id"]
    await root.call("category.update", category=cat, add={"allowed": [EVERYONE]})
    await root.call("category.update", category=cat, description="no history")
    room = (await root.call("room.create", category=1, name="kept", privacy="open"))["room"]["id"]
    quiet = (await root.call("room.create", category=cat, name="quiet", privacy="open"))["room"]
    await root.call("room.update", room=room, description="the kept room")
    await root.call("room.members", room=room, add={"managers": [{"kind": "user", "id": bob_id}]})
    gid = (await root.call("group.create", name="g"))["group"]["id"]
    await root.call("group.members", group=gid, add=[{"kind": "user", "id": bob_id}])
    await root.call("group.members", group=gid, remove=[{"kind": "user", "id": bob_id}])
    await root.call("group.delete", group=gid)
    await root.call("user.policy", user=bob_id, persistent_chat_enabled=True)
    # Chat: posts in both rooms (the quiet room keeps no history: captured all the same).
    for i in range(3):
        await root.call("post", room=room, text=f"hello {i}", cid=f"c{i}")
    await root.call("post", room=quiet["id"], text="not kept", cid="q")
    bob = await h.login("bob")
    joined = await bob.call("join", room=room)
    assert [m["seq"] for m in joined["messages"]] == [1, 2, 3]
    # Reads are committed to the outbox before their reply is sent.
    assert await outbox_kinds(stores, bob_id) == ["JOIN", "BACKCHAT"]
    await bob.call("history", room=room, before=3, limit=1)
    assert await outbox_kinds(stores, bob_id) == ["JOIN", "BACKCHAT", "BACKCHAT"]
    await bob.call("post", room=room, text="from bob", cid="b1")
    await bob.call("leave", room=room)
    await bob.call("join", room=quiet["id"])
    await bob.close()  # PART on disconnect
    await root.call("room.disable", room=quiet["id"])
    await root.call("room.enable", room=quiet["id"])
    await root.call("room.delete", room=quiet["id"])
    await root.call("category.delete", category=cat)
    await asyncio.sleep(0.2)  # the disconnect's PART commits in the background

    code, out = await compliance_cmd(stores.config, "run", "--once")
    assert code == 0, out
    assert await stores.outbox_depth() == 0
    rows = await stores.events()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    by_kind: dict[str, list[Any]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)

    chat = [(r.room_id, r.user_id, payload(r)) for r in by_kind["CHAT"]]
    assert [(rid, uid, p["seq"], p["text"], p["kept"]) for rid, uid, p in chat] == [
        (room, root_id, 1, "hello 0", True),
        (room, root_id, 2, "hello 1", True),
        (room, root_id, 3, "hello 2", True),
        (quiet["id"], root_id, 1, "not kept", False),
        (room, bob_id, 4, "from bob", True),
    ]
    assert [(r.room_id, r.user_id) for r in by_kind["JOIN"]] == [
        (room, bob_id),
        (quiet["id"], bob_id),
    ]
    assert [(r.room_id, r.user_id) for r in by_kind["PART"]] == [
        (room, bob_id),
        (quiet["id"], bob_id),
    ]
    reads = [(r.room_id, r.user_id, payload(r)) for r in by_kind["BACKCHAT"]]
    assert [
        (rid, uid, p["source"], p["from_seq"], p["to_seq"], p["count"]) for rid, uid, p in reads
    ] == [
        (room, bob_id, "join", 1, 3, 3),
        (room, bob_id, "history", 2, 2, 1),
    ]
    # Governance changes name the administrator who made them.
    governance = [r for r in rows if r.kind not in ("CHAT", "JOIN", "PART", "BACKCHAT")]
    assert {r.user_id for r in governance} == {root_id}
    assert Counter(r.kind for r in governance) == {
        "CATEGORY_CREATE": 1,
        "CATEGORY_ACL": 1,
        "CATEGORY_UPDATE": 1,
        "CATEGORY_DELETE": 1,
        "ROOM_CREATE": 2,
        "ROOM_UPDATE": 1,
        "ROOM_ROLES": 1,
        "ROOM_DISABLE": 1,
        "ROOM_ENABLE": 1,
        "ROOM_DELETE": 1,
        "GROUP_CREATE": 1,
        "GROUP_MEMBERS": 2,
        "GROUP_DELETE": 1,
        "USER_POLICY": 1,
    }
    roles = payload(by_kind["ROOM_ROLES"][0])
    assert roles == {"add": {"manager": [{"kind": "user", "id": bob_id}]}, "remove": {}}
    assert payload(by_kind["ROOM_DELETE"][0]) == {"name": "quiet"}
    assert payload(by_kind["ROOM_UPDATE"][0]) == {"values": {"description": "the kept room"}}
    assert all(r.node == "test-node" for r in rows)

    code, out = await compliance_cmd(stores.config, "verify", command=("chatserver", "compliance"))
    assert code == 0, out
    assert "result: OK" in out

    code, out = await compliance_cmd(stores.config, "export")
    assert code == 0, out
    directory = tmp_path / "out"
    assert sorted(exported_ids(directory)) == sorted(r.event_id for r in rows)
    tree = parse_valid(exported_files(directory)[0])
    channel = tree.xpath(f"//Conversation[Channel/@uri='ma-chan://chatserver/room/{room}']")[0]
    texts = channel.xpath("Messages/Message[@type='CHAT']/@content")
    assert texts == ["hello 0", "hello 1", "hello 2", "from bob"]
    assert channel.xpath("Channel/@name") == ["kept"] and channel.xpath("Channel/@islogged") == [
        "true"
    ]
    first = channel.xpath("FirstMessage")[0]
    assert first.get("id") == channel.xpath("Messages/Message")[0].get("id")
    sender = channel.xpath("Messages/Message[@content='from bob']/Sender")[0]
    assert (sender.get("UserName"), sender.get("id"), sender.get("uri")) == (
        "bob",
        str(bob_id),
        "user:bob",
    )
    # The deleted room keeps its name from its own events.
    assert tree.xpath(f"//Channel[@uri='ma-chan://chatserver/room/{quiet['id']}']/@name") == [
        "quiet"
    ]


async def test_compliance_off_writes_nothing(harness: Harness) -> None:
    await harness.user("ann", admin=True)
    room = await harness.room()
    ann = await harness.login("ann")
    await ann.call("join", room=room)
    await ann.call("post", room=room, text="x", cid="1")
    await ann.call("history", room=room)
    await ann.call("leave", room=room)
    await ann.call("room.create", category=1, name="more")
    stmt = select(compliance_outbox.c.kind).order_by(compliance_outbox.c.id)
    async with harness.node.db.read() as conn:
        assert list(await conn.execute(stmt)) == []
    assert not harness.node.capture.on
    # Switched on at run time (the management API's [compliance] enabled), then off again.
    harness.node.capture.enable(True)
    await ann.call("post", room=room, text="y", cid="2")
    await ann.call("room.update", room=room, description="d")
    harness.node.capture.enable(False)
    await ann.call("post", room=room, text="z", cid="3")
    async with harness.node.db.read() as conn:
        assert [r.kind for r in await conn.execute(stmt)] == ["CHAT", "ROOM_UPDATE"]


async def test_counts_equal_the_source_after_a_mixed_workload(
    setup: tuple[Harness, Stores],
) -> None:
    h, stores = setup
    rng = random.Random(6)
    room_ids = [await h.room(f"r{i}") for i in range(3)]
    names = [f"u{i}" for i in range(4)]
    for name in names:
        await h.user(name)
    clients = {name: await h.login(name) for name in names}
    uid = {name: c.user["id"] for name, c in clients.items()}
    joined: set[tuple[str, int]] = set()
    expected: Counter[tuple[str, int | None, int | None]] = Counter()
    posts: Counter[int] = Counter()
    for step in range(150):
        name = rng.choice(names)
        client, room = clients[name], rng.choice(room_ids)
        action = rng.random()
        if action < 0.5:
            await client.call("post", room=room, text=f"m{step}", cid=f"s{step}")
            posts[room] += 1
        elif action < 0.7 and (name, room) not in joined:
            await client.call("join", room=room)
            joined.add((name, room))
            expected["JOIN", room, uid[name]] += 1
        elif action < 0.85 and (name, room) in joined:
            await client.call("leave", room=room)
            joined.discard((name, room))
            expected["PART", room, uid[name]] += 1
        else:
            await client.call("history", room=room, limit=5)
            expected["READ", room, uid[name]] += 1
    for name, room in sorted(joined):  # disconnect: the rest are parted
        expected["PART", room, uid[name]] += 1
    for client in clients.values():
        await client.close()
    await asyncio.sleep(0.3)
    await stores.drain()
    got: Counter[tuple[str, int | None, int | None]] = Counter()
    chat: Counter[int] = Counter()
    for row in await stores.events():
        if row.kind == "CHAT":
            chat[row.room_id] += 1
        elif row.kind in ("JOIN", "PART"):
            got[row.kind, row.room_id, row.user_id] += 1
        elif row.kind == "BACKCHAT" and payload(row)["source"] == "history":
            got["READ", row.room_id, row.user_id] += 1
    assert got == expected
    assert chat == posts
    async with stores.content.read() as conn:
        stored = dict(list(await conn.execute(select(rooms.c.id, rooms.c.last_seq))))
    assert {r: stored[r] for r in room_ids if stored[r]} == dict(chat)


# -- verify --------------------------------------------------------------------------------


async def post_some(h: Harness, n: int, *, room_name: str = "lobby") -> int:
    await h.user("poster")
    room = await h.room(room_name)
    client = await h.login("poster")
    for i in range(n):
        await client.call("post", room=room, text=f"p{i}", cid=f"p{i}")
    return room


async def test_verify_finds_a_changed_a_deleted_and_a_missing_event(
    setup: tuple[Harness, Stores],
) -> None:
    h, stores = setup
    room = await post_some(h, 6)
    await stores.drain()
    code, out = await compliance_cmd(stores.config, "verify")
    assert code == 0 and "chain: intact" in out, out

    # Somebody edits a stored message's text.
    async with stores.comp.write() as conn:
        row = (await conn.execute(select(events).where(events.c.seq == 4))).one()
        changed = payload(row) | {"text": "edited"}
        await conn.execute(
            update(events).where(events.c.seq == 4).values(payload=json.dumps(changed))
        )
    code, out = await compliance_cmd(stores.config, "verify")
    assert code == 1
    assert "BROKEN at seq 4" in out and "was changed" in out, out
    async with stores.comp.write() as conn:
        await conn.execute(update(events).where(events.c.seq == 4).values(payload=row.payload))

    # Somebody deletes the last event (a message vanishes from the archive).
    last = (await stores.events())[-1]
    assert payload(last)["seq"] == 6
    async with stores.comp.write() as conn:
        await conn.execute(delete(events).where(events.c.seq == last.seq))
    code, out = await compliance_cmd(stores.config, "verify", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["broken"]["seq"] == last.seq and "chain head" in report["broken"]["problem"]
    assert report["missing"] == [[room, 6]]


async def test_verify_finds_a_message_whose_capture_was_lost(
    setup: tuple[Harness, Stores],
) -> None:
    h, stores = setup
    room = await post_some(h, 4)
    async with stores.content.write() as conn:  # an outbox row lost before the writer ran
        rows = list(await conn.execute(select(compliance_outbox).order_by(compliance_outbox.c.id)))
        lost = next(r for r in rows if r.kind == "CHAT" and payload(r)["seq"] == 3)
        await conn.execute(delete(compliance_outbox).where(compliance_outbox.c.id == lost.id))
    await stores.prepare()
    code, out = await compliance_cmd(stores.config, "verify")  # before the writer: pending
    assert code == 1 and f"MISSING message room {room} seq 3" in out, out
    assert "outbox: 4 events pending" in out  # the room's creation and 3 posts
    await stores.drain()
    code, out = await compliance_cmd(stores.config, "verify")
    assert code == 1 and "chain: intact" in out and "1 missing" in out, out


# -- the XML adapter -----------------------------------------------------------------------


async def test_each_event_is_exported_exactly_once_across_runs_and_processes(
    setup: tuple[Harness, Stores], tmp_path: Path
) -> None:
    h, stores = setup
    directory = tmp_path / "out"
    await h.user("w")
    room = await h.room()
    client = await h.login("w")
    await client.call("join", room=room)
    await stores.prepare()
    for round_ in range(3):
        for i in range(5):
            await client.call("post", room=room, text=f"r{round_} m{i}", cid=f"{round_}.{i}")
        await client.call("history", room=room, limit=3)
        await stores.drain()
        if round_ == 1:
            # A pass that wrote its file but died before its commit leaves a temporary file.
            (directory / ".chat-999999999990-999999999999.xml.tmp").write_text("<partial")
        # Two adapter processes at once: each event goes to exactly one of them.
        results = await asyncio.gather(
            compliance_cmd(stores.config, "export"), compliance_cmd(stores.config, "export")
        )
        for code, out in results:
            assert code == 0, out
    assert not (directory / ".chat-999999999990-999999999999.xml.tmp").exists()
    ids = exported_ids(directory)
    assert len(ids) == len(set(ids))
    assert set(ids) == {r.event_id for r in await stores.events()}
    assert len(ids) == 2 + 3 * 6  # ROOM_CREATE, JOIN, then per round 5 CHAT and a BACKCHAT
    # Nothing new: no new file.
    before = exported_files(directory)
    code, out = await compliance_cmd(stores.config, "export")
    assert code == 0 and "exported 0 events to 0 files" in out
    assert exported_files(directory) == before


async def test_one_room_per_file_and_details_change_the_output(
    db_url: str, comp_url: str, tmp_path: Path
) -> None:
    config = comp_config(db_url, comp_url, tmp_path)
    node = await start_node(config)
    h = Harness(node)
    stores = Stores(config)
    try:
        root, _ = await admin(h)
        rooms_ = [await h.room(name) for name in ("alpha", "beta")]
        for r in rooms_:
            await root.call("post", room=r, text="hi", cid="1")
        await root.call("group.create", name="g")  # an event without a room
        await stores.drain()
        plain = tmp_path / "plain"
        await export(
            comp_config(db_url, comp_url, tmp_path, output_dir=str(plain)),
            stores.comp,
            stores.content,
        )
        (only,) = exported_files(plain)
        tree = parse_valid(only)
        assert len(tree.xpath("//Conversation")) == 3
        assert tree.xpath("//Channel/@description") == []
        assert tree.xpath("//Sender/@login") == []
        assert list(plain.glob("*-attachments.xml")) == []

        # A second adapter configuration starts from its own cursor: reset it to export again.
        async with stores.comp.write() as conn:
            await conn.execute(update(comp_schema.cursors).values(last_seq=0))
        detailed = tmp_path / "detailed"
        await export(
            comp_config(
                db_url,
                comp_url,
                tmp_path,
                output_dir=str(detailed),
                one_room_per_file=True,
                add_room_details=True,
                add_user_details=True,
                attachments_manifest=True,
            ),
            stores.comp,
            stores.content,
        )
        files = exported_files(detailed)
        assert [p.name.split("-", 3)[3] for p in files] == [
            "admin.xml",
            f"room-{rooms_[0]}.xml",
            f"room-{rooms_[1]}.xml",
        ]
        for path in files:
            tree = parse_valid(path)
            assert len(tree.xpath("//Conversation")) == 1
            assert set(tree.xpath("//Sender[@id!='0']/@login")) == {"root"}
            manifest = path.with_name(path.stem + "-attachments.xml")
            assert etree.XMLSchema(etree.parse(str(XSD))).validate(etree.parse(str(manifest)))
        alpha = parse_valid(files[1])
        channel = alpha.xpath("//Channel")[0]
        assert (channel.get("name"), channel.get("categoryName"), channel.get("privacy")) == (
            "alpha",
            "General",
            "open",
        )
    finally:
        await h.close()
        await stores.close()


# -- metrics -------------------------------------------------------------------------------


async def test_metrics_show_depth_lag_stored_and_exported(setup: tuple[Harness, Stores]) -> None:
    h, stores = setup
    await post_some(h, 5)
    metrics = ComplianceMetrics(stores.config, stores.content)
    registry = CollectorRegistry()
    registry.register(metrics)
    try:
        await metrics.refresh()  # no compliance database yet
        assert registry.get_sample_value("chatserver_compliance_outbox_depth") == 6  # + the room
        assert registry.get_sample_value("chatserver_compliance_database_up") == 0
        await asyncio.sleep(0.05)
        await metrics.refresh()
        assert registry.get_sample_value("chatserver_compliance_lag_seconds") > 0  # type: ignore[operator]
        await stores.drain()
        await metrics.refresh()
        value = registry.get_sample_value
        assert value("chatserver_compliance_outbox_depth") == 0
        assert value("chatserver_compliance_lag_seconds") == 0
        assert value("chatserver_compliance_database_up") == 1
        assert value("chatserver_compliance_events_stored_total", {"kind": "CHAT"}) == 5
        assert value("chatserver_compliance_events_exported_total", {"kind": "CHAT"}) == 0
        assert value("chatserver_compliance_last_export_timestamp_seconds") == 0
        await export(stores.config, stores.comp, stores.content)
        await metrics.refresh()
        assert value("chatserver_compliance_events_exported_total", {"kind": "CHAT"}) == 5
        assert value("chatserver_compliance_last_export_timestamp_seconds") > 0  # type: ignore[operator]
        assert value("chatserver_compliance_enabled") == 1
    finally:
        await metrics.close()


# -- the compliance database unreachable ---------------------------------------------------


def pause_cluster(cluster: PostgresCluster) -> None:
    cluster._run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "stop")


def resume_cluster(cluster: PostgresCluster) -> None:
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={cluster.port}"
        f" -c unix_socket_directories={cluster.root} -c max_connections=100"
        " -c log_min_messages=warning"
    )
    log = str(cluster.root / "log")
    cluster._run("pg_ctl", "-D", str(cluster.data), "-o", options, "-l", log, "-w", "start")


class WriterProcess:
    """``chatserver compliance run`` in the background."""

    def __init__(self, config: Config, *args: str) -> None:
        self.config = config
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> WriterProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "compliance",
            "run",
            *self.args,
            env=comp_env(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), scaled(30))


async def wait_until(check: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.skipif("postgresql" not in DIALECTS, reason="PostgreSQL tests are off")
async def test_chat_goes_on_while_the_compliance_database_is_down(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    db_url = await pg_cluster.create_database(f"test_down_{next(_numbers)}", template="postgres")
    comp_cluster = PostgresCluster().start()
    config = comp_config(db_url, comp_cluster.url(), tmp_path)
    node = await start_node(config)
    h = Harness(node)
    stores = Stores(config)
    metrics = ComplianceMetrics(config, stores.content)
    registry = CollectorRegistry()
    registry.register(metrics)
    value = registry.get_sample_value
    writer = await WriterProcess(config, "--no-export", "--poll-s", "0.1").start()
    try:
        await h.user("talker")
        room = await h.room()
        client = await h.login("talker")

        async def drained() -> bool:
            return await stores.outbox_depth() == 0

        for i in range(10):
            await client.call("post", room=room, text=f"up {i}", cid=f"u{i}")
        await wait_until(drained)

        await asyncio.to_thread(pause_cluster, comp_cluster)
        for i in range(40):  # every post is acknowledged: chat does not wait for compliance
            reply = await client.call("post", room=room, text=f"down {i}", cid=f"d{i}")
            assert reply["seq"] == 11 + i
        await asyncio.sleep(1.0)
        await metrics.refresh()
        assert value("chatserver_compliance_outbox_depth") == 40
        assert value("chatserver_compliance_database_up") == 0
        assert value("chatserver_compliance_lag_seconds") >= 1.0  # type: ignore[operator]

        await asyncio.to_thread(resume_cluster, comp_cluster)
        await wait_until(drained)
        await metrics.refresh()
        assert value("chatserver_compliance_outbox_depth") == 0
        assert value("chatserver_compliance_lag_seconds") == 0
        assert value("chatserver_compliance_database_up") == 1
        assert value("chatserver_compliance_events_stored_total", {"kind": "CHAT"}) == 50
        texts = [payload(r)["text"] for r in await stores.events("CHAT")]
        assert texts == [f"up {i}" for i in range(10)] + [f"down {i}" for i in range(40)]
    finally:
        await writer.stop()
        await metrics.close()
        await h.close()
        await stores.close()
        comp_cluster.stop()


# -- faults: kill -9 the writer and the adapter (slow) -------------------------------------

DURATION_S = float(os.environ.get("CHATSERVER_COMPLIANCE_SOAK_S", "20"))


async def chatter(h: Harness, name: str, room_ids: list[int], stop: asyncio.Event) -> int:
    """Post, join, leave and read until ``stop``; returns how many posts were acknowledged."""
    rng = random.Random(name)
    client = await h.login(name)
    joined: set[int] = set()
    posts = 0
    while not stop.is_set():
        room = rng.choice(room_ids)
        roll = rng.random()
        if roll < 0.8:
            await client.call("post", room=room, text=f"{name} {posts}", cid=f"{name}.{posts}")
            posts += 1
        elif roll < 0.88 and room not in joined:
            await client.call("join", room=room)
            joined.add(room)
        elif roll < 0.95 and room in joined:
            await client.call("leave", room=room)
            joined.discard(room)
        else:
            await client.call("history", room=room, limit=10)
    await client.close()
    return posts


@pytest.mark.slow
async def test_killing_the_writer_and_the_adapter_loses_and_duplicates_nothing(
    db_url: str, comp_url: str, tmp_path: Path
) -> None:
    config = comp_config(db_url, comp_url, tmp_path)
    node = await start_node(config)
    h = Harness(node)
    stores = Stores(config)
    rng = random.Random(9)
    # On PostgreSQL two writers claim batches side by side; SQLite has one.
    writers = 2 if db_url.startswith("postgresql") else 1
    kills = Counter[str]()
    try:
        room_ids = [await h.room(f"soak{i}") for i in range(4)]
        names = [f"s{i}" for i in range(4)]
        for name in names:
            await h.user(name)
        stop = asyncio.Event()
        load = [asyncio.create_task(chatter(h, name, room_ids, stop)) for name in names]

        async def kill_writers() -> None:
            while not stop.is_set():
                procs = [
                    await WriterProcess(
                        config, "--no-export", "--batch", "20", "--poll-s", "0.05"
                    ).start()
                    for _ in range(writers)
                ]
                await asyncio.sleep(rng.uniform(0.2, 1.2))
                for proc in procs:
                    proc.kill()
                    assert proc.proc is not None
                    await proc.proc.wait()
                    kills["writer"] += 1

        async def kill_exports() -> None:
            while not stop.is_set():
                export = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "compliance",
                    "export",
                    env=comp_env(config),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                if export.returncode is None:
                    export.kill()
                    kills["export"] += 1
                await export.wait()

        faults = [asyncio.create_task(kill_writers()), asyncio.create_task(kill_exports())]
        await asyncio.sleep(DURATION_S)
        stop.set()
        posted = sum(await asyncio.gather(*load))
        await asyncio.gather(*faults)
        await asyncio.sleep(0.5)  # the last PARTs commit in the background

        code, out = await compliance_cmd(config, "run", "--once")
        assert code == 0, out
        assert await stores.outbox_depth() == 0
        assert kills["writer"] >= DURATION_S / 3, kills

        chat = await stores.events("CHAT")
        async with stores.content.read() as conn:
            last = dict(list(await conn.execute(select(rooms.c.id, rooms.c.last_seq))))
        seqs = Counter((r.room_id, payload(r)["seq"]) for r in chat)
        assert max(seqs.values()) == 1  # no message twice
        assert set(seqs) == {(room, s) for room in room_ids for s in range(1, last[room] + 1)}
        assert len(chat) == posted

        every = await stores.events()
        report = await verify(stores.comp, stores.content)
        assert report.ok, report.lines()
        assert report.events == len(every)
        ids = exported_ids(tmp_path / "out")
        assert len(ids) == len(set(ids)) == len(every)
        print(f"posted {posted}, events {len(every)}, kills {dict(kills)}")
    finally:
        await h.close()
        await stores.close()


async def test_admin_message_changes_are_exported_with_the_original_text(
    setup: tuple[Harness, Stores], tmp_path: Path
) -> None:
    """REPLACE / REMOVE / CLEAR as the management port records them (``outbox.record``)."""
    h, stores = setup
    room = await post_some(h, 2)
    async with stores.content.write() as conn:
        await outbox.record(
            conn,
            "test-node",
            [
                outbox.Event(
                    "REPLACE",
                    room,
                    None,
                    {"seq": 1, "original_text": "p0", "new_text": "[redacted]", "by": "root"},
                ),
                outbox.Event(
                    "REMOVE",
                    room,
                    None,
                    {"seq": 2, "original_text": "p1", "new_text": None, "by": "root"},
                ),
                outbox.Event(
                    "CLEAR", room, None, {"until_ms": 1, "removed": 2, "through_seq": 2, "by": "x"}
                ),
            ],
        )
    await stores.drain()
    result = await export(stores.config, stores.comp, stores.content)
    (path,) = result.files
    tree = parse_valid(path)
    replace, remove = tree.xpath("//Messages/Message[@type='REPLACE' or @type='REMOVE']")
    assert (replace.get("content"), replace.get("roomSeq")) == ("[redacted]", "1")
    assert json.loads(replace.get("details"))["original_text"] == "p0"
    assert (remove.get("content"), remove.get("roomSeq")) == ("", "2")
    assert json.loads(remove.get("details"))["original_text"] == "p1"
    (clear,) = tree.xpath("//Messages/Message[@type='CLEAR']")
    assert json.loads(clear.get("details"))["through_seq"] == 2


async def test_subscriptions_open_at_stop_are_parted(
    db_url: str, comp_url: str, tmp_path: Path
) -> None:
    config = comp_config(db_url, comp_url, tmp_path)
    node = await start_node(config)
    h = Harness(node)
    stores = Stores(config)
    try:
        await h.user("stayer")
        room = await h.room()
        client = await h.login("stayer")
        await client.call("join", room=room)
        await node.stop()  # the client is still connected
        await stores.drain()
        kinds = [(r.kind, r.room_id) for r in await stores.events() if r.kind in ("JOIN", "PART")]
        assert kinds == [("JOIN", room), ("PART", room)]
    finally:
        await h.close()
        await stores.close()


async def test_management_api_changes_are_captured_in_the_same_store_with_their_actor(
    setup: tuple[Harness, Stores],
) -> None:
    """Through the real management port: a governance change names the administrator who made
    it; replacing a message records its original text; clearing a room records the clear."""
    import base64

    import aiohttp

    h, stores = setup
    room = await post_some(h, 2)
    _client, root_id = await admin(h)
    assert h.node.management is not None and h.node.management.address is not None
    host, port = h.node.management.address
    base = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as http:
        basic = "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()
        async with http.post(base + "/api/v1/tokens", headers={"Authorization": basic}) as r:
            assert r.status == 201
            headers = {"Authorization": "Bearer " + (await r.json())["token"]}

        async def call(method: str, path: str, body: Any) -> Any:
            async with http.request(method, base + path, json=body, headers=headers) as r:
                assert r.status in (200, 201), await r.text()
                return await r.json()

        await call("POST", "/api/v1/categories", {"name": "Audited"})
        await call("POST", "/api/v1/messages/replace", {"room": room, "keywords": ["p0"]})
        await call("POST", f"/api/v1/rooms/{room}/clear", {"until": "2999-01-01"})

    async with stores.content.read() as conn:
        rows = list(
            await conn.execute(
                select(compliance_outbox).where(
                    compliance_outbox.c.kind.in_(["CATEGORY_CREATE", "REPLACE", "CLEAR"])
                )
            )
        )
    by_kind = {row.kind: row for row in rows}
    assert set(by_kind) == {"CATEGORY_CREATE", "REPLACE", "CLEAR"}
    assert by_kind["CATEGORY_CREATE"].user_id == root_id
    replaced = payload(by_kind["REPLACE"])
    assert replaced["original_text"] == "p0" and replaced["by"] == "root"
    assert replaced["new_text"] == "This message was replaced by the administrator."
    cleared = payload(by_kind["CLEAR"])
    assert (cleared["removed"], cleared["through_seq"], cleared["by"]) == (2, 2, "root")
