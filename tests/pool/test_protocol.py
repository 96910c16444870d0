"""The peer protocol's sans-I/O half: bytes in, commands out, no sockets."""

from __future__ import annotations

import msgpack
import pytest

from chatserver.pool.protocol import (
    CLOSED,
    EVENTS,
    OPEN,
    PING,
    PeerProtocol,
    encode_frame,
)

SECRET = "pool secret"


def link(
    connector_secret: str = SECRET, acceptor_secret: str = SECRET, *, bytewise: bool = False
) -> tuple[PeerProtocol, PeerProtocol]:
    """Run a handshake between two in-memory sides, whole frames or one byte at a time."""
    c = PeerProtocol("connector", "node1", connector_secret, expect="node2")
    a = PeerProtocol("acceptor", "node2", acceptor_secret)
    for _ in range(4):
        for src, dst in ((c, a), (a, c)):
            data = src.data_to_send()
            if bytewise:
                for i in range(len(data)):
                    assert dst.receive_data(data[i : i + 1]) == []
            else:
                assert dst.receive_data(data) == []
    return c, a


@pytest.mark.parametrize("bytewise", [False, True])
def test_handshake_opens_both_sides(bytewise: bool) -> None:
    c, a = link(bytewise=bytewise)
    assert c.state == a.state == OPEN
    assert c.peer == "node2" and a.peer == "node1"


def test_the_secret_never_crosses_the_wire() -> None:
    c = PeerProtocol("connector", "node1", SECRET)
    a = PeerProtocol("acceptor", "node2", SECRET)
    wire = b""
    for _ in range(3):
        for src, dst in ((c, a), (a, c)):
            data = src.data_to_send()
            wire += data
            dst.receive_data(data)
    assert c.is_open and SECRET.encode() not in wire


@pytest.mark.parametrize("side", ["connector", "acceptor"])
def test_a_wrong_secret_on_either_side_is_refused(side: str) -> None:
    c, a = link("wrong", SECRET) if side == "connector" else link(SECRET, "wrong")
    assert c.state == CLOSED and a.state == CLOSED
    assert not c.is_open and not a.is_open


def test_a_replayed_handshake_fails_against_a_fresh_challenge() -> None:
    c = PeerProtocol("connector", "node1", SECRET)
    a = PeerProtocol("acceptor", "node2", SECRET)
    hello = c.data_to_send()
    a.receive_data(hello)
    c.receive_data(a.data_to_send())
    auth = c.data_to_send()
    a.receive_data(auth)
    assert a.is_open
    replay = PeerProtocol("acceptor", "node2", SECRET)
    replay.receive_data(hello + auth)
    assert replay.state == CLOSED and replay.close_reason == "authentication failed"


def test_the_acceptor_must_be_the_expected_node() -> None:
    c = PeerProtocol("connector", "node1", SECRET, expect="node3")
    a = PeerProtocol("acceptor", "node2", SECRET)
    a.receive_data(c.data_to_send())
    c.receive_data(a.data_to_send())
    assert c.state == CLOSED and "node3" in (c.close_reason or "")


def test_nothing_but_the_handshake_before_it_completes() -> None:
    a = PeerProtocol("acceptor", "node2", SECRET)
    forged = {"t": "msg", "m": {"room": 1, "seq": 1}}
    assert a.receive_data(encode_frame({"cmd": EVENTS, "events": [forged]})) == []
    assert a.state == CLOSED
    assert b"ERROR" in a.data_to_send()


def test_events_and_pings_after_the_handshake() -> None:
    c, a = link()
    c.send_events([{"t": "room", "room": 4}, {"t": "msg", "m": {"room": 1}}])
    c.send_ping(123)
    commands = a.receive_data(c.data_to_send())
    assert [x.name for x in commands] == [EVENTS, PING]
    assert commands[0].fields["events"][0] == {"t": "room", "room": 4}


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x00\x00\x03abc",  # not MessagePack
        encode_frame({"no": "cmd"}),
        encode_frame({"cmd": "HELLO"}),  # in the open state
        encode_frame({"cmd": EVENTS, "events": [{"t": "unknown"}]}),
        encode_frame({"cmd": EVENTS, "events": "x"}),
        b"\x00\x00\x00\x01" + msgpack.packb(1),
    ],
)
def test_garbage_closes_the_link_without_raising(frame: bytes) -> None:
    _c, a = link()
    assert a.receive_data(frame) == []
    assert a.state == CLOSED and a.close_reason


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    a = PeerProtocol("acceptor", "node2", SECRET, max_frame_bytes=1024)
    assert a.receive_data(b"\x00\x10\x00\x00") == []  # 1 MiB announced; nothing buffered
    assert a.state == CLOSED and "exceeds" in (a.close_reason or "")


def test_a_node_does_not_link_to_itself() -> None:
    c = PeerProtocol("connector", "node1", SECRET)
    a = PeerProtocol("acceptor", "node1", SECRET)
    a.receive_data(c.data_to_send())
    assert a.state == CLOSED
