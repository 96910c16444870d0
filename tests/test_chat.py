"""End-to-end chat over real sockets, on both dialects and both transports."""

from __future__ import annotations

import asyncio

import pytest

from chatserver.client import RequestFailed

from .conftest import Harness, scaled

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
