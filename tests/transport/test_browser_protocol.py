"""What a browser needs of the WebSocket protocol (issue 19): JSON chosen at the handshake and
fixed for the connection, request ids echoed on a lone surrogate, JSON ids bounded to 2^53-1,
senders' display names by lookup, the post rate in `hello`, a safe room_management_url, and the
web client's own origin admitted."""

from __future__ import annotations

import json

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chatserver.config import load_config
from chatserver.transport.websocket import origin_allowed
from tests.conftest import PASSWORD, Harness, node_config, start_node


def _url(harness: Harness) -> str:
    host, port = harness.node.addresses["websocket"]
    return f"ws://{host}:{port}/"


async def _json(ws, obj: dict) -> dict:  # type: ignore[no-untyped-def,type-arg]
    await ws.send(json.dumps(obj))
    reply = await ws.recv()
    assert isinstance(reply, str), "a JSON connection is answered in JSON text frames"
    return json.loads(reply)  # type: ignore[no-any-return]


async def test_json_subprotocol_is_chosen_at_the_handshake_and_kept(harness: Harness) -> None:
    async with connect(_url(harness), subprotocols=["chatserver.json"], compression=None) as ws:
        assert ws.subprotocol == "chatserver.json"
        # A stray binary frame is refused, in JSON, and does not turn the connection binary.
        await ws.send(msgpack.packb({"op": "ping", "id": 7}))
        refused = await ws.recv()
        assert isinstance(refused, str)
        error = json.loads(refused)
        assert error["ok"] is False and error["error"]["code"] == "bad_request"
        assert "JSON" in error["error"]["message"]
        hello = await _json(ws, {"op": "hello", "id": 1, "protocol": 1})
        assert hello["ok"] is True


async def test_a_json_client_that_waits_gets_json(harness: Harness) -> None:
    """With the subprotocol, the server's first words (here the auth timeout's bye) are JSON."""
    node = await start_node(
        node_config(harness.node.config.database.url, limits={"auth_timeout_s": 0.5})
    )
    try:
        host, port = node.addresses["websocket"]
        async with connect(f"ws://{host}:{port}/", subprotocols=["chatserver.json"]) as ws:
            bye = await ws.recv()
            assert isinstance(bye, str) and json.loads(bye) == {
                "ev": "bye",
                "reason": "auth_timeout",
            }
    finally:
        await node.stop()


async def test_msgpack_subprotocol_refuses_text(harness: Harness) -> None:
    async with connect(_url(harness), subprotocols=["chatserver.msgpack"]) as ws:
        assert ws.subprotocol == "chatserver.msgpack"
        await ws.send(json.dumps({"op": "ping", "id": 1}))
        reply = await ws.recv()
        assert isinstance(reply, bytes)
        assert msgpack.unpackb(reply)["error"]["code"] == "bad_request"


async def test_unknown_subprotocol_falls_back_to_following_the_client(harness: Harness) -> None:
    async with connect(_url(harness), subprotocols=["other"]) as ws:
        assert ws.subprotocol is None
        await ws.send(json.dumps({"op": "ping", "id": 1}))
        assert json.loads(await ws.recv())["re"] == 1


async def test_lone_surrogate_error_answers_the_request(harness: Harness) -> None:
    async with connect(_url(harness), subprotocols=["chatserver.json"]) as ws:
        await ws.send('{"op": "hello", "id": 41, "protocol": 1, "client": "x\\ud800"}')
        reply = json.loads(await ws.recv())
        assert reply["re"] == 41 and reply["error"]["code"] == "bad_request"
        assert "surrogate" in reply["error"]["message"]
        # Without a usable id there is nothing to answer: null, as before.
        await ws.send('{"op": "hello", "id": "x", "client": "\\udfff"}')
        assert json.loads(await ws.recv())["re"] is None


@pytest.mark.parametrize("rid", [2**53, 2**63 - 1, -(2**53)])
async def test_json_request_ids_beyond_2_53_are_refused(harness: Harness, rid: int) -> None:
    async with connect(_url(harness), subprotocols=["chatserver.json"]) as ws:
        reply = await _json(ws, {"op": "ping", "id": rid})
        assert reply["re"] is None and reply["error"]["code"] == "bad_request"
        assert "9007199254740991" in reply["error"]["message"]
        ok = await _json(ws, {"op": "ping", "id": 2**53 - 1})
        assert ok["re"] == 2**53 - 1 and ok["ok"] is True


async def test_msgpack_ids_keep_their_range(harness: Harness) -> None:
    async with connect(_url(harness), subprotocols=["chatserver.msgpack"]) as ws:
        await ws.send(msgpack.packb({"op": "ping", "id": 2**63 - 1}))
        assert msgpack.unpackb(await ws.recv())["re"] == 2**63 - 1


async def test_hello_reports_the_post_rate(db_url: str) -> None:
    node = await start_node(node_config(db_url, limits={"posts_per_user_per_s": 2.5}))
    try:
        h = Harness(node)
        client = await h.connect()
        hello = await client.call("hello", protocol=1)
        assert hello["limits"]["posts_per_user_per_s"] == 2.5
        await h.close()
    except BaseException:
        await node.stop()
        raise


async def test_users_lookup_names_senders_of_readable_rooms_only(harness: Harness) -> None:
    from chatserver.store.rooms import create_room

    lobby = await harness.room("lobby")
    secret = (await create_room(harness.node.db, "hidden", privacy="secret")).id
    await harness.node.accounts.add_user("alice", PASSWORD, by="test", display_name="Alice A.")
    await harness.user("bob")
    await harness.user("carol")
    alice = await harness.login("alice")
    bob = await harness.login("bob")
    await alice.call("post", room=lobby, text="hi", cid="1")
    ids = {u.name: u.id for u in await _users(harness)}
    found = await bob.call("users.lookup", room=lobby, ids=[ids["alice"], ids["carol"]])
    # Alice posted in the lobby: her display name; carol never did: left out.
    assert found["users"] == [{"id": ids["alice"], "name": "alice", "display_name": "Alice A."}]
    # A room bob may not find answers like one that does not exist.
    hidden = await bob.request("users.lookup", room=secret, ids=[ids["alice"]])
    missing = await bob.request("users.lookup", room=99999, ids=[ids["alice"]])
    assert hidden["error"]["code"] == missing["error"]["code"] == "not_found"
    bad = await bob.request("users.lookup", room=lobby, ids=list(range(1, 102)))
    assert bad["error"]["code"] == "bad_request"
    bad = await bob.request("users.lookup", room=lobby, ids=["1"])
    assert bad["error"]["code"] == "bad_request"


async def _users(harness: Harness) -> list:  # type: ignore[type-arg]
    from chatserver.store.users import list_users

    return await list_users(harness.node.db)


@pytest.mark.parametrize(
    "value",
    [
        "javascript:alert(1)",
        "//evil.example/",
        "/\\evil.example",
        "data:text/html,x",
        "https://a b",
    ],
)
def test_room_management_url_from_config_is_validated(value: str) -> None:
    with pytest.raises(Exception, match="room_management_url"):
        load_config(env={"CHATSERVER_CHAT_ROOM_MANAGEMENT_URL": value})


@pytest.mark.parametrize("value", ["", "/manage/", "https://rooms.example/x?y=1"])
def test_room_management_url_accepts_paths_and_http_urls(value: str) -> None:
    config = load_config(env={"CHATSERVER_CHAT_ROOM_MANAGEMENT_URL": value})
    assert config.chat.room_management_url == value


def test_the_web_clients_origin_is_admitted() -> None:
    # The page at http://host:5081 opens ws://host:5080: admitted as the node's own page.
    assert origin_allowed(["http://chat.example:5081"], "chat.example:5080", (), (5081,))
    assert origin_allowed(["http://[::1]:5081"], "[::1]:5080", (), (5081,))
    assert not origin_allowed(["http://chat.example:5082"], "chat.example:5080", (), (5081,))
    assert not origin_allowed(["http://evil.example:5081"], "chat.example:5080", (), (5081,))
    assert not origin_allowed(["http://chat.example:5081"], "chat.example:5080", (), ())
    # A configured list still decides alone.
    assert not origin_allowed(
        ["http://chat.example:5081"], "chat.example:5080", ("https://x.example",), (5081,)
    )


async def test_page_origin_opens_the_websocket_on_a_running_node(harness: Harness) -> None:
    host, port = harness.node.addresses["http"]
    async with connect(_url(harness), origin=f"http://{host}:{port}") as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"op": "ping", "id": 1}))
        assert json.loads(await ws.recv())["ok"] is True
    with pytest.raises(InvalidStatus):
        async with connect(_url(harness), origin=f"http://{host}:{port + 1}"):  # type: ignore[arg-type]
            pass
