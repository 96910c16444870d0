"""The peer protocol's sans-I/O half: bytes in, commands out, no sockets."""

from __future__ import annotations

import msgpack
import pytest

from chatserver.pool.protocol import (
    ADMIT,
    AUTH,
    CHALLENGE,
    CLOSED,
    EVENTS,
    OPEN,
    PING,
    PeerProtocol,
    encode_frame,
)

SECRET = "pool secret " + "0123456789abcdef" * 2


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
            if a.state == ADMIT:
                a.admit()
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
            a.admit()
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
    a.admit()
    c.receive_data(a.data_to_send())
    auth = c.data_to_send()
    a.receive_data(auth)
    assert a.is_open
    replay = PeerProtocol("acceptor", "node2", SECRET)
    replay.receive_data(hello)
    replay.admit()
    replay.receive_data(auth)
    assert replay.state == CLOSED and replay.close_reason == "authentication failed"
    assert replay.close_code == "bad_proof"


def test_the_acceptor_must_be_the_expected_node() -> None:
    c = PeerProtocol("connector", "node1", SECRET, expect="node3")
    a = PeerProtocol("acceptor", "node2", SECRET)
    a.receive_data(c.data_to_send())
    a.admit()
    c.receive_data(a.data_to_send())
    assert c.state == CLOSED and "node3" in (c.close_reason or "")
    assert c.close_code == "wrong_node"


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


def test_the_acceptor_proves_nothing_before_the_connector_has() -> None:
    """A process that dials a node with a guessed (or no) secret gets a bare nonce, nothing
    computed from the secret: it cannot test guesses offline. The acceptor's proof comes only
    in READY, after the connector's proof checked out."""
    a = PeerProtocol("acceptor", "node2", SECRET)
    intruder = PeerProtocol("connector", "node1", "", expect="node2")
    a.receive_data(intruder.data_to_send())
    assert a.state == ADMIT and a.data_to_send() == b""  # nothing until the name is admitted
    a.admit()
    challenge = a.data_to_send()
    fields = msgpack.unpackb(challenge[4:], raw=False)
    assert fields["cmd"] == CHALLENGE and set(fields) == {"cmd", "node", "nonce"}
    intruder.receive_data(challenge)
    a.receive_data(intruder.data_to_send())  # AUTH with a proof made with the empty secret
    out = a.data_to_send()
    assert a.state == CLOSED and a.close_code == "bad_proof"
    assert b"READY" not in out and b"proof" not in out


def test_the_connector_checks_the_acceptors_proof_in_ready() -> None:
    c = PeerProtocol("connector", "node1", SECRET, expect="node2")
    a = PeerProtocol("acceptor", "node2", SECRET)
    a.receive_data(c.data_to_send())
    a.admit()
    c.receive_data(a.data_to_send())
    a.receive_data(c.data_to_send())
    assert a.is_open
    ready = msgpack.unpackb(a.data_to_send()[4:], raw=False)
    ready["proof"] = bytes(32)
    c.receive_data(encode_frame(ready))
    assert c.state == CLOSED and c.close_code == "bad_proof"


def test_a_refused_name_gets_an_error_and_no_challenge() -> None:
    a = PeerProtocol("acceptor", "node2", SECRET)
    a.receive_data(PeerProtocol("connector", "node0", SECRET).data_to_send())
    a.fail("node 'node0' is not registered in this pool", "unregistered")
    out = a.data_to_send()
    assert b"ERROR" in out and b"CHALLENGE" not in out and a.close_code == "unregistered"


def test_anything_while_the_name_is_checked_closes_the_link() -> None:
    a = PeerProtocol("acceptor", "node2", SECRET)
    a.receive_data(PeerProtocol("connector", "node1", SECRET).data_to_send())
    a.receive_data(encode_frame({"cmd": AUTH, "proof": bytes(32)}))
    assert a.state == CLOSED


def test_before_the_handshake_frames_are_small() -> None:
    a = PeerProtocol("acceptor", "node2", SECRET)
    assert a.receive_data((16 * 1024 * 1024).to_bytes(4, "big") + b"\0" * 1000) == []
    assert a.state == CLOSED and a.close_code == "frame_too_large"
    c, a = link()  # once open, the normal limit
    c.send_events([{"t": "room", "room": n} for n in range(2000)])
    frame = c.data_to_send()
    assert len(frame) > 4096
    assert [x.name for x in a.receive_data(frame)] == [EVENTS]
