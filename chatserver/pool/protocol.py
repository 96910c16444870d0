"""The peer protocol (TCP 8011), sans-I/O: frames, commands and the handshake state machine.

Frames are a 4-byte big-endian length and a MessagePack map ``{"cmd": NAME, …}``, like the
client protocol but with their own command set. :class:`PeerProtocol` is fed bytes
(:meth:`~PeerProtocol.receive_data`) and hands back decoded commands; what it wants to send
accumulates in :meth:`~PeerProtocol.data_to_send`. It never raises into the transport: a broken
frame, a failed proof or a command out of place moves it to ``CLOSED`` with a reason, after
queueing an ``ERROR`` frame for the other side.

Handshake (both sides prove they know ``[pool] secret``; the secret never crosses the wire, and
both nonces are fresh, so a recorded handshake cannot be replayed)::

    connector                                        acceptor
    HELLO {node, nonce: Nc, version}        ──►
                                            ◄──      CHALLENGE {node, nonce: Na,
                                                                proof: H("acceptor")}
    (checks the acceptor's proof)
    AUTH {proof: H("connector")}            ──►
                                                     (checks the connector's proof)
                                            ◄──      READY {}

    H(role) = HMAC-SHA256(secret, role | Nc | Na | connector name | acceptor name)

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

VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 16 * 1024 * 1024
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
AWAIT_CHALLENGE = "await_challenge"  # connector sent HELLO
AWAIT_AUTH = "await_auth"  # acceptor sent CHALLENGE
OPEN = "open"
CLOSED = "closed"

# The command a side may receive in each state (anything else closes the link).
_EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("acceptor", START): frozenset({HELLO}),
    ("connector", AWAIT_CHALLENGE): frozenset({CHALLENGE, ERROR}),
    ("acceptor", AWAIT_AUTH): frozenset({AUTH}),
    ("connector", AWAIT_AUTH): frozenset({READY, ERROR}),
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
    refused. After ``OPEN``, :meth:`receive_data` returns ``PING`` and ``EVENTS`` commands only.
    """

    def __init__(
        self,
        role: str,
        node: str,
        secret: str,
        *,
        expect: str | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
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
        self.max_frame_bytes = max_frame_bytes
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

    def fail(self, reason: str) -> None:
        """Close the link, telling the other side why (if the link ever opened)."""
        if self.state == CLOSED:
            return
        self._send(ERROR, message=reason)
        self.state = CLOSED
        self.close_reason = reason

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
            if size > self.max_frame_bytes:
                self.fail(f"frame of {size} bytes exceeds {self.max_frame_bytes}")
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
            return None
        handler = getattr(self, "_on_" + command.name.lower())
        return handler(command)  # type: ignore[no-any-return]

    def _valid_nonce(self, value: Any) -> bool:
        return isinstance(value, bytes) and len(value) == NONCE_BYTES

    def _on_hello(self, command: Command) -> None:
        node, nonce = command.fields.get("node"), command.fields.get("nonce")
        if command.fields.get("version") != VERSION:
            self.fail(f"this node speaks peer protocol version {VERSION}")
            return
        if not isinstance(node, str) or not node or not self._valid_nonce(nonce):
            self.fail("HELLO needs a node name and a 32-byte nonce")
            return
        if node == self.node:
            self.fail("a node does not link to itself")
            return
        assert isinstance(nonce, bytes)
        self.peer, self._their_nonce = node, nonce
        mine = proof(self.secret, "acceptor", nonce, self._nonce, node, self.node)
        self._send(CHALLENGE, node=self.node, nonce=self._nonce, proof=mine)
        self.state = AWAIT_AUTH

    def _on_challenge(self, command: Command) -> None:
        node, nonce = command.fields.get("node"), command.fields.get("nonce")
        theirs = command.fields.get("proof")
        if (
            not isinstance(node, str)
            or not self._valid_nonce(nonce)
            or not isinstance(theirs, bytes)
        ):
            self.fail("CHALLENGE needs a node name, a 32-byte nonce and a proof")
            return
        assert isinstance(nonce, bytes)
        if self.expect is not None and node != self.expect:
            self.fail(f"expected node {self.expect!r}, reached {node!r}")
            return
        wanted = proof(self.secret, "acceptor", self._nonce, nonce, self.node, node)
        if not hmac.compare_digest(wanted, theirs):
            self.fail("the acceptor's proof is wrong (different pool secret?)")
            return
        self.peer, self._their_nonce = node, nonce
        mine = proof(self.secret, "connector", self._nonce, nonce, self.node, node)
        self._send(AUTH, proof=mine)
        self.state = AWAIT_AUTH

    def _on_auth(self, command: Command) -> None:
        theirs = command.fields.get("proof")
        assert self.peer is not None
        wanted = proof(
            self.secret, "connector", self._their_nonce, self._nonce, self.peer, self.node
        )
        if not isinstance(theirs, bytes) or not hmac.compare_digest(wanted, theirs):
            self.fail("authentication failed")
            return
        self._send(READY)
        self.state = OPEN

    def _on_ready(self, command: Command) -> None:
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
