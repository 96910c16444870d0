"""Protocol rules over real sockets: states, authentication, limits, bad input, shutdown."""

from __future__ import annotations

import asyncio
import json
import struct

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chatserver.client import Client
from tests.conftest import PASSWORD, Harness, node_config, scaled, start_node


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def test_hello_must_come_first(harness: Harness) -> None:
    client = await harness.connect()
    reply = await client.request("auth", user="x", password="y")
    assert reply["error"]["code"] == "bad_request" and "hello" in reply["error"]["message"]
    assert (await client.request("ping"))["ok"] is True  # ping is always served
    wrong = await client.request("hello", protocol=2)
    assert wrong["error"]["code"] == "bad_request"
    hello = await client.call("hello", protocol=1)
    assert hello["protocol"] == 1 and hello["node"] == "test-node"
    assert hello["limits"] == {
        "max_frame_bytes": 1048576,
        "max_message_chars": 8000,
        "default_chat_history": 30,
        "history_page_max": 500,
        "max_file_size_kb": 20480,
        "participant_update_limit": 75,
        "posts_per_user_per_s": 1_000_000,  # node_config lifts it for tests
    }
    assert hello["room_management_url"] == "/manage/"  # the node's own pages by default


@pytest.mark.parametrize(
    "op,fields",
    [
        ("rooms", {}),
        ("join", {"room": 1}),
        ("history", {"room": 1}),
        ("post", {"room": 1, "text": "x", "cid": "1"}),
        ("room.create", {"name": "r"}),
        ("leave", {"room": 1}),
    ],
)
async def test_ops_before_auth_are_refused(harness: Harness, op: str, fields: dict) -> None:  # type: ignore[type-arg]
    room = await harness.room()
    await harness.user("alice")
    alice = await harness.login("alice")
    await alice.call("post", room=room, text="secret", cid="s")
    client = await harness.connect()
    await client.call("hello", protocol=1)
    reply = await client.request(op, **fields)
    assert reply["ok"] is False and reply["error"]["code"] == "unauthenticated"
    assert "messages" not in reply and "rooms" not in reply


async def test_wrong_user_and_wrong_password_answer_alike(harness: Harness) -> None:
    await harness.user("alice")
    answers = []
    for user, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        client = await harness.connect()
        await client.call("hello", protocol=1)
        answers.append((await client.request("auth", user=user, password=password))["error"])
    assert (
        answers[0]
        == answers[1]
        == {"code": "unauthenticated", "message": "wrong user name or password"}
    )


async def test_token_resumes_and_bad_token_is_refused(harness: Harness) -> None:
    await harness.user("alice")
    alice = await harness.login("alice")
    again = await harness.connect("websocket")
    reply = await again.resume(alice.token)  # type: ignore[arg-type]
    assert reply["user"]["name"] == "alice"
    stranger = await harness.connect()
    await stranger.call("hello", protocol=1)
    bad = await stranger.request("auth", token="not-a-token")
    assert bad["error"]["code"] == "unauthenticated"
    twice = await alice.request("auth", token=alice.token)
    assert twice["error"]["code"] == "bad_request"


async def test_unauthenticated_connection_is_closed_after_auth_timeout(db_url: str) -> None:
    node = await start_node(node_config(db_url, limits={"auth_timeout_s": 0.3}))
    h = Harness(node)
    try:
        idle = await h.connect()
        await idle.call("hello", protocol=1)
        bye = await idle.next_event("bye", timeout=scaled(5))
        assert bye["reason"] == "auth_timeout"
        await asyncio.wait_for(idle.closed.wait(), scaled(5))
        await h.user("alice")
        alice = await h.login("alice")
        await asyncio.sleep(0.6)
        assert (await alice.request("ping"))["ok"]  # authenticated: no timeout
    finally:
        await h.close()


async def test_oversized_frame_is_rejected_then_closed(harness: Harness) -> None:
    await harness.user("alice")
    room = await harness.room()
    client = await harness.login("alice")
    # Requests and an oversized header arrive in one write: the requests before it are served
    # and answered, then the error, then bye.
    post = frame({"op": "post", "id": 7, "room": room, "text": "kept", "cid": "k"})
    ping = frame({"op": "ping", "id": 8})
    await client.send_bytes(post + ping + struct.pack(">I", 2 * 1048576))  # type: ignore[attr-defined]
    await asyncio.wait_for(client.closed.wait(), scaled(5))
    replies = {r["re"]: r for r in client.unmatched[:2]}  # a post's ack may pass a later reply
    assert replies[7]["ok"] and replies[7]["seq"] == 1 and replies[8]["ok"]
    assert client.unmatched[2]["re"] is None
    assert client.unmatched[2]["error"]["code"] == "too_large"
    bye = await client.next_event("bye")
    assert bye["reason"] == "frame_too_large"
    reader = await harness.login("alice")
    stored = await reader.call("history", room=room)
    assert [m["text"] for m in stored["messages"]] == ["kept"]


async def test_malformed_frames_cost_only_the_request(harness: Harness) -> None:
    client = await harness.connect()
    bad = b"\xc1"  # never used in MessagePack
    await client.send_bytes(struct.pack(">I", len(bad)) + bad)  # type: ignore[attr-defined]
    await client.send_bytes(frame([1, 2, 3]))  # type: ignore[attr-defined]
    deep: object = {"a": 1}
    for _ in range(40):
        deep = {"a": deep}
    await client.send_bytes(frame({"op": "ping", "id": 1, "x": deep}))  # type: ignore[attr-defined]
    assert (await client.request("ping"))["ok"]
    assert [r["re"] for r in client.unmatched] == [None, None, None]
    assert {r["error"]["code"] for r in client.unmatched} == {"bad_request"}
    missing = await client.request("post", room=1)
    assert missing["error"]["code"] == "bad_request"


async def test_websocket_json_errors_and_encoding_follow_the_client(harness: Harness) -> None:
    host, port = harness.node.addresses["websocket"]
    async with connect(f"ws://{host}:{port}/", compression=None) as ws:
        await ws.send("{not json")
        reply = json.loads(await ws.recv())
        assert reply["re"] is None and reply["error"]["code"] == "bad_request"
        await ws.send(json.dumps({"op": "hello", "id": 1, "protocol": 1}))
        assert json.loads(await ws.recv())["ok"] is True
        await ws.send(msgpack.packb({"op": "ping", "id": 2}))
        binary = await ws.recv()
        assert isinstance(binary, bytes) and msgpack.unpackb(binary)["re"] == 2


async def test_websocket_other_path_is_404(harness: Harness) -> None:
    host, port = harness.node.addresses["websocket"]
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{host}:{port}/elsewhere"):
            pass
    assert info.value.response.status_code == 404


async def test_message_length_and_post_rate_are_limited(db_url: str) -> None:
    node = await start_node(
        node_config(db_url, chat={"max_message_chars": 100}, limits={"posts_per_user_per_s": 3})
    )
    h = Harness(node)
    try:
        await h.user("alice")
        room = await h.room()
        alice = await h.login("alice")
        long = await alice.request("post", room=room, text="x" * 101, cid="long")
        assert long["error"]["code"] == "too_large"
        cid = await alice.request("post", room=room, text="x", cid="c" * 65)
        assert cid["error"]["code"] == "bad_request"
        replies = await asyncio.gather(
            *(alice.request("post", room=room, text="x" * 100, cid=str(i)) for i in range(6))
        )
        codes = [r["ok"] or r["error"]["code"] for r in replies]
        assert codes.count(True) == 3 and codes.count("rate_limited") == 3
        history = await alice.call("history", room=room)
        assert len(history["messages"]) == 3
    finally:
        await h.close()


async def test_rooms_search_and_cursor_paging(harness: Harness) -> None:
    await harness.user("alice")
    for name in ("alpha", "beta", "gamma", "delta", "Alphabet soup"):
        await harness.room(name)
    alice = await harness.login("alice")
    found = await alice.call("rooms", query="ALPHA")
    assert sorted(r["name"] for r in found["rooms"]) == ["Alphabet soup", "alpha"]
    names, cursor = [], None
    while True:
        page = await alice.call("rooms", limit=2, **({"cursor": cursor} if cursor else {}))
        names += [r["name"] for r in page["rooms"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert sorted(names) == sorted(["alpha", "beta", "gamma", "delta", "Alphabet soup"])
    assert len(names) == 5
    bad = await alice.request("rooms", cursor="!!!")
    assert bad["error"]["code"] == "bad_request"


async def test_room_create_is_for_admins_and_names_are_unique(harness: Harness) -> None:
    await harness.user("root", admin=True)
    await harness.user("alice")
    root = await harness.login("root")
    alice = await harness.login("alice")
    created = await root.call("room.create", name="ops", description="operations")
    assert created["room"]["name"] == "ops" and created["room"]["last_seq"] == 0
    assert (await root.request("room.create", name="ops"))["error"]["code"] == "conflict"
    assert (await alice.request("room.create", name="mine"))["error"]["code"] == "forbidden"
    assert (await root.request("room.create", name="x" * 257))["error"]["code"] == "bad_request"


async def test_unknown_room_is_not_found_on_every_op(harness: Harness) -> None:
    await harness.user("alice")
    alice = await harness.login("alice")
    for op, fields in (("join", {}), ("history", {}), ("post", {"text": "x", "cid": "1"})):
        reply = await alice.request(op, room=999, **fields)
        assert reply["error"] == {"code": "not_found", "message": "no room 999"}


async def test_leave_stops_live_events(harness: Harness) -> None:
    await harness.user("alice")
    await harness.user("bob")
    room = await harness.room()
    alice = await harness.login("alice")
    bob = await harness.login("bob")
    await bob.call("join", room=room)
    await bob.call("leave", room=room)
    await alice.call("post", room=room, text="after leave", cid="1")
    await bob.call("ping")
    await asyncio.sleep(0.1)
    assert bob.events.empty()


async def test_shutdown_says_bye_and_acknowledged_posts_survive(db_url: str) -> None:
    config = node_config(db_url)
    node = await start_node(config)
    h = Harness(node)
    await h.user("alice")
    room = await h.room()
    alice = await h.login("alice")
    pending = [
        asyncio.ensure_future(alice.request("post", room=room, text=str(i), cid=str(i)))
        for i in range(100)
    ]
    await asyncio.sleep(0)
    await node.stop()
    bye = await alice.next_event("bye", timeout=scaled(5))
    assert bye["reason"] == "shutting_down"
    acked = set()
    for future in pending:
        try:
            reply = await future
        except Exception:
            continue
        if reply.get("ok"):
            acked.add(reply["seq"])
    await alice.close()

    node = await start_node(config)
    h = Harness(node)
    try:
        reader = await h.login("alice")
        stored = await reader.call("history", room=room, after=0, limit=500)
        seqs = [m["seq"] for m in stored["messages"]]
        assert seqs == list(range(1, len(seqs) + 1))
        assert acked <= set(seqs)  # every acknowledged post was stored
    finally:
        await h.close()


async def test_new_connections_after_stop_are_refused(harness: Harness) -> None:
    host, port = harness.node.addresses["tcp"]
    await harness.node.stop()
    with pytest.raises(OSError):
        client = await Client.connect_tcp(host, port)
        await client.request("ping")


async def test_tls_on_both_listeners(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(tmp_path / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    node = await start_node(
        node_config(db_url, tls={"certificate": tmp_path / "cert.pem", "key": tmp_path / "key.pem"})
    )
    h = Harness(node)
    try:
        await h.user("alice")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        host, port = node.addresses["tcp"]
        tcp = await Client.connect_tcp(host, port, ssl=context)
        h.clients.append(tcp)
        await tcp.login("alice", PASSWORD)
        host, port = node.addresses["websocket"]
        wss = await Client.connect_websocket(f"wss://{host}:{port}/", ssl=context)
        h.clients.append(wss)
        await wss.login("alice", PASSWORD)
        plain = await Client.connect_tcp(*node.addresses["tcp"])
        h.clients.append(plain)
        await plain.send_raw({"op": "ping", "id": 1})
        await asyncio.wait_for(plain.closed.wait(), scaled(5))  # no TLS handshake: dropped
    finally:
        await h.close()


async def test_bad_certificate_stops_start_up(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chatserver.server import Node, StartupError

    (tmp_path / "cert.pem").write_text("not a certificate")
    node = Node(
        node_config(db_url, tls={"certificate": tmp_path / "cert.pem"}), announce=lambda _line: None
    )
    with pytest.raises(StartupError, match=r"tls\.certificate"):
        await node.start()
    await node.stop()


async def test_client_request_after_the_connection_closed_raises(harness: Harness) -> None:
    from chatserver.client import Closed

    await harness.user("zed")
    client = await harness.login("zed")
    await harness.node.stop()
    await asyncio.wait_for(client.closed.wait(), scaled(10))
    with pytest.raises(Closed):
        await asyncio.wait_for(client.request("ping"), scaled(5))


async def test_posts_beyond_the_in_flight_limit_pause_reading_and_all_land(db_url: str) -> None:
    """While the store holds the group commit, the node stops reading a client that pipelines
    posts past ``max_requests_in_flight``; when the store lets go, every post is acknowledged,
    in order, and reading resumes."""
    if not db_url.startswith("postgresql"):
        pytest.skip("holds a room's row lock from a second PostgreSQL session")
    import asyncpg

    node = await start_node(node_config(db_url, limits={"max_requests_in_flight": 4}))
    h = Harness(node)
    try:
        await h.user("alice")
        room = await h.room()
        alice = await h.login("alice")
        await alice.call("join", room=room)
        await alice.call("post", room=room, text="warm", cid="warm")  # rights now cached
        [server_side] = [c for c in node.connections if c.session.user is not None]
        locker = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", room)
            pending = [
                asyncio.ensure_future(alice.request("post", room=room, text=str(i), cid=str(i)))
                for i in range(40)
            ]
            for _ in range(200):
                if not server_side.transport.is_reading():
                    break
                await asyncio.sleep(0.01)
            assert not server_side.transport.is_reading(), "the node kept reading"
            # The frames of the read that crossed the limit are still served (a read is
            # bounded); after it, nothing more is read.
            in_flight = server_side.session._posts_in_flight
            assert 4 <= in_flight <= 40
            await asyncio.sleep(0.2)
            assert server_side.session._posts_in_flight == in_flight
            await lock.rollback()
        finally:
            await locker.close()
        replies = await asyncio.wait_for(asyncio.gather(*pending), scaled(30))
        assert [r["seq"] for r in replies] == list(range(2, 42))
        assert server_side.transport.is_reading()
    finally:
        await h.close()
