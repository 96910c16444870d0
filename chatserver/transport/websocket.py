"""The WebSocket transport: one map per message, MessagePack (binary) or JSON (text).

The handshake, frame parsing, ping/pong and the closing handshake are the ``websockets`` library's
sans-I/O :class:`~websockets.server.ServerProtocol`; this adapter feeds it bytes and writes what it
returns. Messages from the server are written as pre-encoded unmasked frames
(:mod:`chatserver.protocol.events`), shared by every subscriber.

The encoding is chosen at the handshake by a subprotocol (``Sec-WebSocket-Protocol``):
``chatserver.json`` (JSON text messages, what a browser wants) or ``chatserver.msgpack``; it is
then fixed for the connection, and a message in the other encoding is refused (``bad_request``)
without changing it. Without a subprotocol the server answers in the encoding of the last message
the client sent (binary until the client sends text), as before.

A handshake whose ``Origin`` header is not allowed is refused with HTTP 403
(:func:`origin_allowed`); a connection the node refused at accept gets its reason in an HTTP 429
or 503 answer to its handshake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..config import normalize_origin
from ..protocol.codec import decode_json, decode_msgpack
from ..protocol.errors import ProtocolError
from ..protocol.events import WS_BINARY, WS_TEXT, Outgoing
from ..services import Services
from .connection import LINGER_S, Connection
from .connections import TOO_MANY_CONNECTIONS, Connections

log = logging.getLogger("chatserver.connection")

PATH = "/"
JSON_SUBPROTOCOL = "chatserver.json"
MSGPACK_SUBPROTOCOL = "chatserver.msgpack"
SUBPROTOCOLS = (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL)


def origin_allowed(
    origins: list[str],
    host: str | None,
    allowed: Sequence[str],
    page_ports: Sequence[int] = (),
) -> bool:
    """May a handshake with these ``Origin`` headers (and this ``Host``) open a connection?

    No ``Origin`` (a client that is not a browser): yes. More than one: no. Otherwise, with
    ``allowed`` empty (the default), only a page served from the address the browser connects to
    (the origin's host and port are the ``Host``), or from this node's client HTTP listener on
    that host (``page_ports``: the web client at ``/``); with ``allowed`` set, only the origins it
    lists (``"*"``: any, ``"null"``: the opaque origin of sandboxed pages and files).
    """
    if not origins:
        return True
    if len(origins) > 1:
        return False
    origin = origins[0].strip()
    normal = "null" if origin.lower() == "null" else normalize_origin(origin)
    if allowed:
        return "*" in allowed or normal in allowed
    if normal is None or normal == "null" or not host:
        return False
    scheme = normal.split("://", 1)[0]
    if normalize_origin(f"{scheme}://{host.strip()}") == normal:
        return True
    try:
        hostname = urlsplit(f"{scheme}://{host.strip()}").hostname
    except ValueError:
        return False
    if not hostname:
        return False
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return any(normalize_origin(f"{scheme}://{hostname}:{p}") == normal for p in page_ports)


def _select_subprotocol(_protocol: object, offered: Sequence[str]) -> Any:
    """The first subprotocol the client offers that this server speaks; None (no subprotocol,
    the encoding follows the messages) when it offers none of them."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None


class WebSocketConnection(Connection):
    transport_name = "websocket"
    fmt = WS_BINARY

    def __init__(self, connections: Connections, services: Services) -> None:
        super().__init__(connections, services)
        self._ws = ServerProtocol(
            max_size=self.max_frame_bytes,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            select_subprotocol=_select_subprotocol,
        )
        self._fixed: Opcode | None = None  # the only opcode a subprotocol allows
        self._max_depth = self.limits.max_nesting_depth
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self._fragment_opcode: Opcode | None = None
        self._refusal: str | None = None

    def _drop_input(self) -> None:
        self._fragments = []
        self._fragment_opcode = None

    def data_received(self, data: bytes) -> None:
        if self._closing:  # lingering: dropped
            return
        ws = self._ws
        ws.receive_data(data)
        completed = False
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                completed = self._frame(event) or completed
        self._write_protocol_output()
        if self._refusal is None:
            # What the parser buffers for the frame under way, plus the fragments of a message
            # not yet complete (a message under way counts at least one byte).
            held = len(ws.reader.buffer) + self._fragment_bytes
            if self._fragment_opcode is not None:
                held += 1
            self.input_held(held, completed)

    def _limits_raised(self) -> None:
        self._ws.max_message_size = self.max_frame_bytes

    def refuse(self, reason: str) -> None:
        """Answer the handshake, when it comes within ``REFUSED_LINGER_S``, with an HTTP error
        naming ``reason``; frames are never read."""
        self._refusal = reason
        self.connections.linger(self)
        self._linger_timer = asyncio.get_running_loop().call_later(LINGER_S, self.abort)

    def eof_received(self) -> bool:
        if self._closing:
            return False
        self._ws.receive_eof()
        self._write_protocol_output()
        return False

    def _handshake(self, request: Request) -> None:
        path = request.path.split("?", 1)[0]
        headers: Headers = request.headers
        hosts = headers.get_all("Host")
        if self._refusal is not None:
            status = 429 if self._refusal == TOO_MANY_CONNECTIONS else 503
            response = self._ws.reject(status, f"{self._refusal}\n")
        elif path != PATH:
            response = self._ws.reject(404, f"no WebSocket endpoint at {path}\n")
        elif not origin_allowed(
            headers.get_all("Origin"),
            hosts[0] if len(hosts) == 1 else None,
            self.connections.websocket_origins,
            self.connections.page_ports,
        ):
            log.info("websocket %s: refused origin %r", self.peer, headers.get_all("Origin"))
            response = self._ws.reject(403, "origin not allowed\n")
        else:
            response = self._ws.accept(request)
            chosen = response.headers.get("Sec-WebSocket-Protocol")
            if chosen == JSON_SUBPROTOCOL:
                self.fmt, self._fixed = WS_TEXT, Opcode.TEXT
            elif chosen == MSGPACK_SUBPROTOCOL:
                self.fmt, self._fixed = WS_BINARY, Opcode.BINARY
        self._ws.send_response(response)  # on a refusal this also ends the stream

    def _frame(self, frame: Frame) -> bool:
        """Handle one frame; whether it completed a message."""
        opcode = frame.opcode
        data = bytes(frame.data)
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            if frame.fin:
                self._message(opcode, data)
                return True
            self._fragment_opcode = opcode
            self._fragments = [data]
            self._fragment_bytes = len(data)
        elif opcode is Opcode.CONT and self._fragment_opcode is not None:
            self._fragments.append(data)
            self._fragment_bytes += len(data)
            if frame.fin:
                whole = b"".join(self._fragments)
                opcode, self._fragment_opcode, self._fragments = self._fragment_opcode, None, []
                self._fragment_bytes = 0
                self._message(opcode, whole)
                return True
        return False

    def _message(self, opcode: Opcode, data: bytes) -> None:
        fixed = self._fixed
        if fixed is not None and opcode is not fixed:
            wanted = "JSON text" if fixed is Opcode.TEXT else "MessagePack binary"
            self.session.reject(
                ProtocolError(f"this connection speaks {wanted} messages (its subprotocol)")
            )
            return
        try:
            if opcode is Opcode.BINARY:
                if fixed is None:
                    self.fmt = WS_BINARY
                obj = decode_msgpack(data, self._max_depth, self.max_values)
            else:
                if fixed is None:
                    self.fmt = WS_TEXT
                obj = decode_json(data, self._max_depth, self.max_values)
        except ProtocolError as exc:
            self.session.reject(exc)
            return
        self.deliver(obj)

    def _write_protocol_output(self) -> None:
        for data in self._ws.data_to_send():
            if data:
                self.write(data)
            else:  # the library asks for the TCP connection to end
                self.flush()
                if not self._closing and self.transport is not None:
                    self._close_transport()
                return
        if self._ws.close_expected() and self._ws.state is State.CLOSED:
            self.flush()
            if not self._closing and self.transport is not None:
                self._close_transport()

    def send(self, item: Outgoing) -> None:
        if self._ws.state is State.OPEN:
            self.write(item.encoded(self.fmt))

    def _end_stream(self, reason: str) -> None:
        if self._ws.state is State.OPEN:
            self._ws.send_close(1001, reason[:100])
            for data in self._ws.data_to_send():
                if data:
                    self.write(data)
