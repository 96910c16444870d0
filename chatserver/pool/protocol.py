"""The peer protocol (TCP 8011), sans-I/O: frames, commands and the handshake state machine.

Frames are a 4-byte big-endian length and a MessagePack map ``{"cmd": NAME, …}``, like the
client protocol but with their own command set. :class:`PeerProtocol` is fed bytes
(:meth:`~PeerProtocol.receive_data`) and hands back decoded commands; what it wants to send
accumulates in :meth:`~PeerProtocol.data_to_send`. It never raises into the transport: a broken
frame, a failed proof or a command out of place moves it to ``CLOSED`` with a reason, after
queueing an ``ERROR`` frame for the other side.

Handshake (both sides prove they know ``[pool] secret``; the secret never crosses the wire, both
nonces are fresh, so a recorded handshake cannot be replayed; and the connector proves itself
first, so a process that dials a node learns nothing from which the secret could be guessed)::

    connector                                        acceptor
    HELLO {node, nonce: Nc, version}        ──►
                                                     (the application admits the name:
                                                      registered in the pool, else ERROR)
                                            ◄──      CHALLENGE {node, nonce: Na}
    AUTH {proof: H("connector")}            ──►
                                                     (checks the connector's proof)
                                            ◄──      READY {proof: H("acceptor")}
    (checks the acceptor's proof)

    H(role) = HMAC-SHA256(secret, role | Nc | Na | connector name | acceptor name)

Before ``OPEN`` a frame may be at most :data:`MAX_HANDSHAKE_FRAME_BYTES` long (announcing more
closes the link from the 4-byte header, before any of it is buffered); after it,
``max_frame_bytes``.

Until ``READY`` neither side accepts anything but the next handshake command, so an
unauthenticated peer can neither read nor announce anything. After it, either side may send
``PING`` (heartbeat), ``EVENTS`` (a batch of committed events) and ``ERROR``.

Events in an ``EVENTS`` batch are maps with a type ``t``; :mod:`chatserver.pool.events` defines
them, their encoding and the types a peer may send (:data:`~chatserver.pool.events.EVENT_TYPES`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .events import EVENT_TYPES

VERSION = 2
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_HANDSHAKE_FRAME_BYTES = 4096
NONCE_BYTES = 32

# Commands, and who may send each one in which state.
HELLO = "HELLO"
CHALLENGE = "CHALLENGE"
AUTH = "AUTH"
READY = "READY"
PING = "PING"
EVENTS = "EVENTS"
ERROR = "ERROR"

# States of one side of a link.
START = "start"  # connector: HELLO to send; acceptor: waiting for HELLO
ADMIT = "admit"  # acceptor got HELLO: the application decides whether the name may link
AWAIT_CHALLENGE = "await_challenge"  # connector sent HELLO
AWAIT_AUTH = "await_auth"  # acceptor sent CHALLENGE
AWAIT_READY = "await_ready"  # connector sent AUTH
OPEN = "open"
CLOSED = "closed"

# The command a side may receive in each state (anything else closes the link).
_EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("acceptor", START): frozenset({HELLO}),
    ("connector", AWAIT_CHALLENGE): frozenset({CHALLENGE, ERROR}),
    ("acceptor", AWAIT_AUTH): frozenset({AUTH}),
    ("connector", AWAIT_READY): frozenset({READY, ERROR}),
    ("connector", OPEN): frozenset({PING, EVENTS, ERROR}),
    ("acceptor", OPEN): frozenset({PING, EVENTS, ERROR}),
}


def proof(secret: str, role: str, nonce_c: bytes, nonce_a: bytes, conn: str, acc: str) -> bytes:
    """What a side sends to prove it knows ``secret`` in this handshake, and no other."""
    message = b"\x00".join(
        [role.encode(), nonce_c, nonce_a, conn.encode("utf-8"), acc.encode("utf-8")]
    )
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def encode_frame(obj: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


@dataclass
class Command:
    """One decoded command: ``name`` and its fields."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


class PeerProtocol:
    """One side of one peer link.

    ``role`` is ``"connector"`` (dialled out) or ``"acceptor"``. ``expect`` (connector only) is the
    name the registry gave the node being dialled: an acceptor that answers with another name is
    refused. An acceptor that received a valid ``HELLO`` waits in ``ADMIT`` until the application
    calls :meth:`admit` (or :meth:`fail`). After ``OPEN``, :meth:`receive_data` returns ``PING`` and
    ``EVENTS`` commands only. A failure leaves ``close_reason`` (a sentence) and ``close_code``
    (one of a few words, for metrics: see :data:`chatserver.pool.trust.REASONS`).
    """

    def __init__(
        self,
        role: str,
        node: str,
        secret: str,
        *,
        expect: str | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        handshake_frame_bytes: int = MAX_HANDSHAKE_FRAME_BYTES,
        nonce: bytes | None = None,
    ) -> None:
        assert role in ("connector", "acceptor")
        self.role = role
        self.node = node
        self.secret = secret
        self.expect = expect
        self.peer: str | None = None
        self.state = START
        self.close_reason: str | None = None
        self.close_code: str | None = None
        self.max_frame_bytes = max_frame_bytes
        self.handshake_frame_bytes = handshake_frame_bytes
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self._their_nonce = b""
        self._buffer = bytearray()
        self._out: list[bytes] = []
        if role == "connector":
            self._send(HELLO, node=node, nonce=self._nonce, version=VERSION)
            self.state = AWAIT_CHALLENGE

    # -- output -----------------------------------------------------------------------------

    def _send(self, name: str, **fields: Any) -> None:
        self._out.append(encode_frame({"cmd": name, **fields}))

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)

    def send_ping(self, ts: int) -> None:
        assert self.state == OPEN
        self._send(PING, ts=ts)

    def send_events(self, events: list[dict[str, Any]]) -> None:
        """One frame with every event pending for this peer."""
        assert self.state == OPEN
        self._send(EVENTS, events=events)

    def fail(self, reason: str, code: str = "protocol") -> None:
        """Close the link, telling the other side why."""
        if self.state == CLOSED:
            return
        self._send(ERROR, message=reason)
        self.state = CLOSED
        self.close_reason = reason
        self.close_code = code

    def admit(self) -> None:
        """The application accepts the name in ``HELLO``: send the challenge."""
        if self.state != ADMIT:
            return
        self._send(CHALLENGE, node=self.node, nonce=self._nonce)
        self.state = AWAIT_AUTH

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Command]:
        """Feed received bytes; return the commands for the application (after ``OPEN``)."""
        if self.state == CLOSED:
            return []
        self._buffer += data
        out: list[Command] = []
        while self.state != CLOSED and len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            limit = self.max_frame_bytes if self.state == OPEN else self.handshake_frame_bytes
            if size > limit:
                self.fail(f"frame of {size} bytes exceeds {limit}", "frame_too_large")
                self._buffer.clear()
                break
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            command = self._decode(body)
            if command is not None:
                result = self._handle(command)
                if result is not None:
                    out.append(result)
        return out

    def _decode(self, body: bytes) -> Command | None:
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:
            self.fail(f"malformed frame: {exc}")
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
            self.fail("a frame must be a map with a 'cmd'")
            return None
        name = obj.pop("cmd")
        return Command(name, obj)

    def _handle(self, command: Command) -> Command | None:
        expected = _EXPECTED.get((self.role, self.state), frozenset())
        if command.name not in expected:
            self.fail(f"{self.role} in state {self.state} does not accept {command.name}")
            return None
        if command.name == ERROR:
            self.state = CLOSED
            self.close_reason = f"peer said: {command.fields.get('message')}"
            self.close_code = "peer_refused"
            return None
        handler = getattr(self, "_on_" + command.name.lower())
        return handler(command)  # type: ignore[no-any-return]

    def _valid_nonce(self, value: Any) -> bool:
        return isinstance(value, bytes) and len(value) == NONCE_BYTES

    def _proof(self, role: str) -> bytes:
        assert self.peer is not None
        if self.role == "connector":
            conn, acc, nonce_c, nonce_a = self.node, self.peer, self._nonce, self._their_nonce
        else:
            conn, acc, nonce_c, nonce_a = self.peer, self.node, self._their_nonce, self._nonce
        return proof(self.secret, role, nonce_c, nonce_a, conn, acc)

    def _on_hello(self, command: Command) -> None:
        node, nonce = command.fields.get("node"), command.fields.get("nonce")
        if command.fields.get("version") != VERSION:
            self.fail(f"this node speaks peer protocol version {VERSION}", "version")
            return
        if not isinstance(node, str) or not node or len(node) > 200 or not self._valid_nonce(nonce):
            self.fail("HELLO needs a node name and a 32-byte nonce")
            return
        if node == self.node:
            self.fail("a node does not link to itself")
            return
        assert isinstance(nonce, bytes)
        self.peer, self._their_nonce = node, nonce
        self.state = ADMIT  # the application calls admit() or fail()

    def _on_challenge(self, command: Command) -> None:
        node, nonce = command.fields.get("node"), command.fields.get("nonce")
        if not isinstance(node, str) or not self._valid_nonce(nonce):
            self.fail("CHALLENGE needs a node name and a 32-byte nonce")
            return
        assert isinstance(nonce, bytes)
        if self.expect is not None and node != self.expect:
            self.fail(f"expected node {self.expect!r}, reached {node!r}", "wrong_node")
            return
        self.peer, self._their_nonce = node, nonce
        self._send(AUTH, proof=self._proof("connector"))
        self.state = AWAIT_READY

    def _on_auth(self, command: Command) -> None:
        theirs = command.fields.get("proof")
        wanted = self._proof("connector")
        if not isinstance(theirs, bytes) or not hmac.compare_digest(wanted, theirs):
            self.fail("authentication failed", "bad_proof")
            return
        self._send(READY, proof=self._proof("acceptor"))
        self.state = OPEN

    def _on_ready(self, command: Command) -> None:
        theirs = command.fields.get("proof")
        wanted = self._proof("acceptor")
        if not isinstance(theirs, bytes) or not hmac.compare_digest(wanted, theirs):
            self.fail("the acceptor's proof is wrong (different pool secret?)", "bad_proof")
            return
        self.state = OPEN

    def _on_ping(self, command: Command) -> Command:
        return command

    def _on_events(self, command: Command) -> Command | None:
        events = command.fields.get("events")
        if not isinstance(events, list) or not all(
            isinstance(e, dict) and e.get("t") in EVENT_TYPES for e in events
        ):
            self.fail("EVENTS needs a list of events with a known type 't'")
            return None
        return command
