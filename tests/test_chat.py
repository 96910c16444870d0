"""End-to-end chat over real sockets, on both dialects and both transports."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Harness, scaled

TRANSPORTS = ["tcp", "websocket", "websocket-json"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_two_users_chat_live(harness: Harness, transport: str) -> None:
    await harness.user("alice")
    await harness.user("bob")
    room = await harness.room()
    alice = await harness.login("alice", transport)
    bob = await harness.login("bob", transport)
    await alice.call("join", room=room)
    await bob.call("join", room=room)

    ack = await alice.call("post", room=room, text="hello bob", cid="a1")
    assert ack["seq"] == 1 and ack["duplicate"] is False and isinstance(ack["ts"], int)
    for client in (alice, bob):
        event = await client.next_event("message", timeout=scaled(5))
        assert event["room"] == room and event["seq"] == 1
        assert event["text"] == "hello bob" and event["cid"] == "a1"
        assert event["sender"]["name"] == "alice"

    await bob.call("post", room=room, text="hi alice", cid="b1")
    event = await alice.next_event("message", timeout=scaled(5))
    assert (event["seq"], event["text"], event["sender"]["name"]) == (2, "hi alice", "bob")


async def _post_many(client, room: int, count: int, prefix: str = "m") -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        await client.call("post", room=room, text=f"{prefix}{i}", cid=f"{prefix}{i}")
        for i in range(count)
    ]


async def test_join_gets_backchat_from_cache(harness: Harness) -> None:
    await harness.user("alice")
    await harness.user("bob")
    room = await harness.room()
    alice = await harness.login("alice")
    await _post_many(alice, room, 40)

    bob = await harness.login("bob")
    joined = await bob.call("join", room=room)
    assert joined["last_seq"] == 40 and joined["gap"] is False
    assert [m["seq"] for m in joined["messages"]] == list(range(11, 41))  # default 30
    assert joined["messages"][-1]["text"] == "m39"
    assert joined["messages"][0]["sender"] == {"id": alice.user["id"], "name": "alice"}


async def test_history_pages_both_ways(harness: Harness) -> None:
    await harness.user("alice")
    room = await harness.room()
    alice = await harness.login("alice")
    await _post_many(alice, room, 25)

    newest = await alice.call("history", room=room, limit=10)
    assert [m["seq"] for m in newest["messages"]] == list(range(16, 26)) and newest["more"]
    older = await alice.call("history", room=room, before=16, limit=10)
    assert [m["seq"] for m in older["messages"]] == list(range(6, 16)) and older["more"]
    oldest = await alice.call("history", room=room, before=6, limit=10)
    assert [m["seq"] for m in oldest["messages"]] == list(range(1, 6)) and not oldest["more"]

    first = await alice.call("history", room=room, after=0, limit=10)
    assert [m["seq"] for m in first["messages"]] == list(range(1, 11)) and first["more"]
    last = await alice.call("history", room=room, after=20, limit=10)
    assert [m["seq"] for m in last["messages"]] == list(range(21, 26)) and not last["more"]

    too_many = await alice.request("history", room=room, limit=501)
    assert too_many["error"]["code"] == "too_large"
    both = await alice.request("history", room=room, before=3, after=1)
    assert both["error"]["code"] == "bad_request"


@pytest.mark.parametrize("missed", [5, 45])  # inside the 30-message cache, and beyond it
async def test_resume_with_since_yields_exactly_the_missed_messages(
    harness: Harness, missed: int
) -> None:
    await harness.user("alice")
    await harness.user("bob")
    room = await harness.room()
    alice = await harness.login("alice")
    bob = await harness.login("bob", "websocket")
    await _post_many(alice, room, 10, "before")
    joined = await bob.call("join", room=room)
    last_seen = joined["last_seq"]
    token = bob.token
    await bob.close()

    await _post_many(alice, room, missed, "missed")

    bob = await harness.connect("websocket")
    await bob.resume(token)
    rejoined = await bob.call("join", room=room, since=last_seen)
    assert rejoined["gap"] is False
    assert [m["text"] for m in rejoined["messages"]] == [f"missed{i}" for i in range(missed)]
    assert [m["seq"] for m in rejoined["messages"]] == list(range(11, 11 + missed))
    assert rejoined["last_seq"] == 10 + missed

    await alice.call("post", room=room, text="live", cid="live")
    event = await bob.next_event("message", timeout=scaled(5))
    assert (event["seq"], event["text"]) == (11 + missed, "live")


async def test_resume_beyond_page_max_reports_gap(db_url: str) -> None:
    from tests.conftest import node_config, start_node

    node = await start_node(node_config(db_url, chat={"history_page_max": 20}))
    h = Harness(node)
    try:
        await h.user("alice")
        room = await h.room()
        alice = await h.login("alice")
        await _post_many(alice, room, 70)
        joined = await alice.call("join", room=room, since=5)
        assert joined["gap"] is True and joined["last_seq"] == 70
        assert [m["seq"] for m in joined["messages"]] == list(range(51, 71))
        hole = await alice.call("history", room=room, before=51, limit=20)
        assert [m["seq"] for m in hole["messages"]] == list(range(31, 51)) and hole["more"]
    finally:
        await h.close()


async def test_cid_retry_stores_one_message(harness: Harness) -> None:
    await harness.user("alice")
    await harness.user("bob")
    room = await harness.room()
    alice = await harness.login("alice")
    bob = await harness.login("bob")
    first = await alice.call("post", room=room, text="once", cid="same")
    again = await alice.call("post", room=room, text="once", cid="same")
    assert again["seq"] == first["seq"] and again["duplicate"] is True
    assert again["ts"] == first["ts"]
    # Pipelined duplicates land in one group-commit batch: still one row.
    replies = await asyncio.gather(
        *(alice.call("post", room=room, text="burst", cid="burst") for _ in range(5))
    )
    assert len({r["seq"] for r in replies}) == 1
    assert sorted(r["duplicate"] for r in replies) == [False, True, True, True, True]
    # The same cid from another sender is another message.
    other = await bob.call("post", room=room, text="mine", cid="same")
    assert other["duplicate"] is False and other["seq"] != first["seq"]
    history = await alice.call("history", room=room)
    assert [m["text"] for m in history["messages"]] == ["once", "burst", "mine"]


async def test_restart_keeps_everything(db_url: str) -> None:
    from tests.conftest import node_config, start_node

    config = node_config(db_url)
    node = await start_node(config)
    h = Harness(node)
    await h.user("alice")
    room = await h.room("kept")
    alice = await h.login("alice")
    await _post_many(alice, room, 35)
    token = alice.token
    await h.close()

    node = await start_node(config)
    h = Harness(node)
    try:
        alice = await h.connect()
        await alice.resume(token)  # the session token survives too
        rooms = await alice.call("rooms")
        assert [(r["name"], r["last_seq"]) for r in rooms["rooms"]] == [("kept", 35)]
        joined = await alice.call("join", room=room)
        assert [m["seq"] for m in joined["messages"]] == list(range(6, 36))
        ack = await alice.call("post", room=room, text="after restart", cid="new")
        assert ack["seq"] == 36
    finally:
        await h.close()


async def test_concurrent_posters_leave_gap_free_sequence(harness: Harness) -> None:
    posters, each = 50, 8
    room = await harness.room()
    await harness.user("listener")
    listener = await harness.login("listener")
    await listener.call("join", room=room)
    clients = []
    for i in range(posters):
        await harness.user(f"u{i}")
        clients.append(await harness.login(f"u{i}", "tcp" if i % 2 else "websocket"))

    async def post_all(i: int, client) -> list[int]:  # type: ignore[no-untyped-def]
        replies = await asyncio.gather(
            *(client.call("post", room=room, text=f"{i}-{k}", cid=f"c{k}") for k in range(each))
        )
        return [r["seq"] for r in replies]

    acked = [
        seq
        for seqs in await asyncio.gather(*(post_all(i, c) for i, c in enumerate(clients)))
        for seq in seqs
    ]
    total = posters * each
    assert sorted(acked) == list(range(1, total + 1))

    received = [
        (await listener.next_event("message", timeout=scaled(10)))["seq"] for _ in range(total)
    ]
    assert received == list(range(1, total + 1))  # in order, no gap, no duplicate

    stored = await listener.call("history", room=room, after=0, limit=500)
    assert [m["seq"] for m in stored["messages"]] == list(range(1, total + 1))
    # Each poster's messages are stored in the order it sent them.
    for i in range(posters):
        mine = [m for m in stored["messages"] if m["text"].startswith(f"{i}-")]
        assert [m["text"] for m in mine] == [f"{i}-{k}" for k in range(each)]


async def test_joiners_during_traffic_see_no_gap_and_no_duplicate(harness: Harness) -> None:
    """A join racing with commits: the reply plus live events form one contiguous run."""
    room = await harness.room()
    await harness.user("poster")
    poster = await harness.login("poster")
    total = 300
    joiners = []
    for i in range(6):
        await harness.user(f"j{i}")
        joiners.append(await harness.login(f"j{i}", "tcp" if i % 2 else "websocket"))

    async def post() -> None:
        await asyncio.gather(
            *(poster.call("post", room=room, text=str(k), cid=str(k)) for k in range(total))
        )

    async def join(i: int, client) -> list[int]:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.002 * i)
        since = 1 if i % 3 == 0 else None
        reply = await client.call("join", room=room, since=since)
        seqs = [m["seq"] for m in reply["messages"]]
        while (seqs[-1] if seqs else reply["last_seq"]) < total:
            seqs.append((await client.next_event("message", timeout=scaled(10)))["seq"])
        return seqs

    results = await asyncio.gather(post(), *(join(i, c) for i, c in enumerate(joiners)))
    for seqs in results[1:]:
        assert seqs == list(range(seqs[0], total + 1))


async def test_slow_reader_gets_resync_while_fast_reader_keeps_pace(db_url: str) -> None:
    from tests.conftest import node_config, start_node

    node = await start_node(
        node_config(db_url, limits={"output_buffer_bytes": 65536, "posts_per_user_per_s": 100000})
    )
    h = Harness(node)
    try:
        room = await h.room()
        for name in ("poster", "fast", "slow"):
            await h.user(name)
        poster = await h.login("poster")
        fast = await h.login("fast")
        slow = await h.login("slow")
        await fast.call("join", room=room)
        await slow.call("join", room=room)
        slow._reader.cancel()  # stop reading: the server's output to it backs up  # type: ignore[union-attr]
        slow_transport = slow._w.transport  # type: ignore[attr-defined]
        slow_transport.pause_reading()

        text = "x" * 8000
        posted = 0
        while node.metrics.resyncs == 0 and posted < 6000:  # at most 48 MB
            await asyncio.gather(
                *(poster.call("post", room=room, text=text, cid=f"{posted + j}") for j in range(20))
            )
            posted += 20
        assert node.metrics.resyncs == 1, "the slow reader never fell behind"
        slow_session = next(
            c.session for c in node.connections if c.session.user and c.session.user.name == "slow"
        )
        assert not node.hub.is_subscribed(room, slow_session)
        assert slow_session.rooms == set()
        received = [
            (await fast.next_event("message", timeout=scaled(10)))["seq"] for _ in range(posted)
        ]
        assert received == list(range(1, posted + 1))
        assert node.hub.is_subscribed(
            room, next(c.session for c in node.connections if c.session.user.name == "fast")
        )
    finally:
        await h.close()


async def test_room_stopped_during_its_join_is_told_after_the_reply(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatserver.store import messages as message_store

    await harness.user("root", admin=True)
    await harness.user("bob")
    room = await harness.room()
    root = await harness.login("root")
    bob = await harness.login("bob")
    await _post_many(root, room, 40)  # more than the cache: join since=1 reads the store
    await root.call("join", room=room)  # the room's cache is loaded now
    bob.trace = []
    gate = asyncio.Event()
    real_latest = message_store.latest

    async def slow_latest(*args, **kwargs):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await real_latest(*args, **kwargs)

    monkeypatch.setattr(message_store, "latest", slow_latest)
    join = asyncio.ensure_future(bob.request("join", room=room, since=1))
    await asyncio.sleep(0.2)  # bob's join now waits inside the store read, already subscribed
    await root.call("room.disable", room=room)
    gate.set()
    reply = await join
    assert reply["ok"] and reply["last_seq"] == 40
    removed = await bob.next_event("room.removed", timeout=scaled(5))
    assert removed == {"ev": "room.removed", "room": room, "reason": "disabled"}
    assert bob.trace.index(reply) < bob.trace.index(removed)  # never before the reply
    await root.call("room.enable", room=room)
    await root.call("post", room=room, text="after", cid="after")
    await bob.call("ping")
    assert all(e["ev"] != "message" for e in list(bob.events._queue))  # type: ignore[attr-defined]
