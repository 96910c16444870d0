"""The post path: text the store cannot hold is refused alone, a bad row never fails a batch, and
a post gets the same answer whichever session path serves it (inline or the request worker)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest

from chatserver.client import Client
from chatserver.protocol.errors import UNAVAILABLE, ChatError
from chatserver.store import messages as message_store
from chatserver.store.messages import NewPost
from chatserver.throttle import Source
from tests.conftest import Harness
from tests.rooms.test_governance import admin_client, make_user, new_category, new_room, user


@pytest.mark.parametrize("transport", ["tcp", "websocket", "websocket-json"])
async def test_a_nul_character_is_refused_alone(harness: Harness, transport: str) -> None:
    """A post whose text has a NUL character (PostgreSQL refuses it in text) gets
    ``bad_request``; the posts sent with it in the same breath are stored. (A lone surrogate,
    the other string no store can hold, cannot be sent as MessagePack, and the JSON decoder
    refuses the frame: tests/protocol/test_codec.py.)"""
    await harness.user("ann")
    room = await harness.room()
    ann = await harness.login("ann", transport)
    await ann.call("join", room=room)
    replies = await asyncio.gather(
        ann.request("post", room=room, text="first", cid="a"),
        ann.request("post", room=room, text="before\x00after", cid="b"),
        ann.request("post", room=room, text="third", cid="c"),
    )
    assert [r["ok"] for r in replies] == [True, False, True], replies
    assert replies[1]["error"]["code"] == "bad_request"
    assert "text" in replies[1]["error"]["message"]
    stored = await message_store.latest(harness.node.db, room, 10)
    assert [m.text for m in stored] == ["first", "third"]


async def test_a_bad_row_does_not_fail_its_batch(harness: Harness) -> None:
    """Past the protocol's checks (a row the store refuses for a reason nobody foresaw), one
    bad post fails alone: the writer stores the rest of its group commit."""
    await harness.user("ann")
    here = Source("127.0.0.1", "tcp")
    ann_id = (await harness.node.accounts.login("ann", "correct horse battery", here)).user.id
    room = await harness.room()
    writer = harness.node.writer
    texts = ["one", "two", "bad \ud800", "four", "five"]
    # Submitted in one loop turn: one batch.
    futures = [
        writer.submit(NewPost(room, ann_id, "ann", f"cid-{i}", text))
        for i, text in enumerate(texts)
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    bad = results[2]
    assert isinstance(bad, ChatError) and bad.code == UNAVAILABLE
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(not isinstance(r, BaseException) and r.message is not None for r in good), good
    stored = await message_store.latest(harness.node.db, room, 10)
    assert [m.text for m in stored] == ["one", "two", "four", "five"]
    assert [m.seq for m in stored] == [1, 2, 3, 4]  # gap-free


def _frame(obj: dict[str, Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def _post_inline(client: Client, fields: dict[str, Any]) -> dict[str, Any]:
    """The post is the only request in flight: the session may answer it without its worker."""
    return await client.request("post", **fields)


async def _post_behind_worker(client: Client, fields: dict[str, Any]) -> dict[str, Any]:
    """The post arrives in the same read as a request the worker is serving: it waits its turn
    and the worker serves it."""
    queued = asyncio.ensure_future(client.request("rooms"))
    await asyncio.sleep(0)  # sent first
    reply = await client.request("post", **fields)
    await queued
    return reply


def _answer(reply: dict[str, Any]) -> Any:
    if reply["ok"]:
        return ("ok", sorted(reply))
    return ("error", reply["error"]["code"], reply["error"]["message"])


async def test_inline_and_worker_paths_answer_alike(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await admin_client(harness)
    ann_id = await make_user(harness, "ann")
    cat = await new_category(admin, "paths")
    open_room = await new_room(admin, cat, "open")
    secret = await new_room(admin, cat, "secret", "secret")
    stage = await new_room(admin, cat, "stage", type_="auditorium", presenters=[user(1)])
    closed = await new_room(admin, cat, "closed", "closed")
    ann = await harness.login("ann")
    await ann.call("post", room=open_room, text="warm the cache", cid="warm")
    limit = harness.node.settings.chat.max_message_chars

    # Count the awaited path's uses, to know each case really took the path it names.
    posting = harness.node.services.posting
    awaited = 0
    real_post = posting.post

    async def counting_post(*args: Any) -> Any:
        nonlocal awaited
        awaited += 1
        return await real_post(*args)

    monkeypatch.setattr(posting, "post", counting_post)

    cases: dict[str, dict[str, Any]] = {
        "stored": {"room": open_room, "text": "hello"},
        "too long": {"room": open_room, "text": "x" * (limit + 1)},
        "nul": {"room": open_room, "text": "a\x00b"},
        "no such room": {"room": 999_999, "text": "hello"},
        "secret room": {"room": secret, "text": "hello"},
        "closed room": {"room": closed, "text": "hello"},
        "auditorium": {"room": stage, "text": "hello"},
        "room is a string": {"room": "1", "text": "hello"},
        "no text": {"room": open_room},
    }
    for name, fields in cases.items():
        awaited_before = awaited
        inline = await _post_inline(ann, {**fields, "cid": f"{name}-1"})
        inline_awaited = awaited - awaited_before
        worker = await _post_behind_worker(ann, {**fields, "cid": f"{name}-2"})
        assert _answer(inline) == _answer(worker), name
        if name not in ("nul", "room is a string", "no text"):  # refused when parsed
            assert awaited - awaited_before - inline_awaited >= 1, f"{name}: no worker path"
    assert ann_id  # the user the answers were for


async def test_a_raw_nul_over_tcp_is_refused(harness: Harness) -> None:
    """The same through hand-made frames (no client library in between)."""
    await harness.user("ann")
    room = await harness.room()
    ann = await harness.login("ann")
    host, port = harness.node.addresses["tcp"]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        token = (await ann.call("ping")) and None
        del token
        here = Source("127.0.0.1", "tcp")
        login = await harness.node.accounts.login("ann", "correct horse battery", here)
        writer.write(
            _frame({"op": "hello", "id": 1, "protocol": 1})
            + _frame({"op": "auth", "id": 2, "token": login.token})
            + _frame({"op": "post", "id": 3, "room": room, "text": "\x00", "cid": "n"})
        )
        await writer.drain()
        answers: dict[int, dict[str, Any]] = {}
        while 3 not in answers:
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            obj = msgpack.unpackb(await reader.readexactly(size), raw=False)
            if "re" in obj:
                answers[obj["re"]] = obj
        assert answers[3]["ok"] is False
        assert answers[3]["error"]["code"] == "bad_request"
    finally:
        writer.close()


async def test_one_senders_pipelined_posts_are_stored_in_order(harness: Harness) -> None:
    """Posts one connection pipelines into a room get seqs in the order sent, even when the
    writer has two batches in flight (PostgreSQL) and others post and read meanwhile (which made
    a later batch take the room's lock first)."""
    await harness.user("ann")
    await harness.user("bob")
    room = await harness.room()
    ann = await harness.login("ann")
    bob = await harness.login("bob")
    readers = [await harness.login("bob") for _ in range(3)]

    async def read_a_lot(client: Client) -> None:
        for _ in range(20):
            await client.call("history", room=room)

    async def ann_posts() -> list[dict[str, Any]]:
        replies = []
        for burst in range(15):
            replies += await asyncio.gather(
                *(
                    ann.request("post", room=room, text=f"{burst}:{i}", cid=f"a{burst}-{i}")
                    for i in range(20)
                )
            )
            await asyncio.sleep(0.002)  # the next burst arrives while the last one commits
        return replies

    async def bob_posts() -> None:
        for i in range(150):
            await bob.request("post", room=room, text=f"bob {i}", cid=f"b{i}")

    replies, *_ = await asyncio.gather(ann_posts(), bob_posts(), *(read_a_lot(c) for c in readers))
    assert all(r["ok"] for r in replies)
    seqs = [r["seq"] for r in replies]
    assert seqs == sorted(seqs), "ann's posts were stored out of the order she sent them"


async def test_a_later_batch_that_locks_first_does_not_reorder_a_sender(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two batches in flight, the second may reach the room's lock first (its store
    connection was ready sooner). Made to happen here by holding the first batch back: a
    sender's later post must still get the later seq; another sender's may go ahead."""
    if not harness.node.db.is_postgres:
        pytest.skip("SQLite stores one batch at a time")
    from chatserver.rooms import writer as writer_module

    ann_id = (await harness.node.accounts.add_user("ann", "correct horse battery", by="test")).id
    bob_id = (await harness.node.accounts.add_user("bob", "correct horse battery", by="test")).id
    room = await harness.room()
    real = writer_module.store_batch
    calls = 0

    async def first_one_slow(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.3)
        return await real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "store_batch", first_one_slow)
    writer = harness.node.writer
    first = writer.submit(NewPost(room, ann_id, "ann", "1", "first"))
    await asyncio.sleep(0.05)  # the first batch is in flight
    second = writer.submit(NewPost(room, ann_id, "ann", "2", "second"))
    other = writer.submit(NewPost(room, bob_id, "bob", "3", "bob's"))
    stored = await asyncio.gather(first, second, other)
    seqs = [s.message.seq for s in stored if s.message is not None]
    assert seqs[0] < seqs[1], f"ann's second post got seq {seqs[1]} before her first ({seqs[0]})"
    assert seqs[2] < seqs[0], "another sender's post should not have waited"
