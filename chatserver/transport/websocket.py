"""The WebSocket transport: one map per message, MessagePack (binary) or JSON (text).

The handshake, frame parsing, ping/pong and the closing handshake are the ``websockets`` library's
sans-I/O :class:`~websockets.server.ServerProtocol`; this adapter feeds it bytes and writes what it
returns. Messages from the server are written as pre-encoded unmasked frames
(:mod:`chatserver.protocol.events`), shared by every subscriber. The server answers in the encoding
of the last message the client sent (binary until the client sends text).
"""

from __future__ import annotations

import logging

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..protocol.codec import decode_json, decode_msgpack
from ..protocol.errors import ProtocolError
from ..protocol.events import WS_BINARY, WS_TEXT, Outgoing
from ..services import Services
from .connection import Connection, Connections

log = logging.getLogger("chatserver.connection")

PATH = "/"


class WebSocketConnection(Connection):
    transport_name = "websocket"
    fmt = WS_BINARY

    def __init__(self, connections: Connections, services: Services) -> None:
        super().__init__(connections, services)
        limits = connections.limits
        self._ws = ServerProtocol(max_size=limits.max_frame_bytes)
        self._max_depth = limits.max_nesting_depth
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._write_protocol_output()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._write_protocol_output()
        return False

    def _handshake(self, request: Request) -> None:
        path = request.path.split("?", 1)[0]
        if path != PATH:
            response = self._ws.reject(404, f"no WebSocket endpoint at {path}\n")
        else:
            response = self._ws.accept(request)
        self._ws.send_response(response)  # on a refusal this also ends the stream

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        data = bytes(frame.data)
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            if frame.fin:
                self._message(opcode, data)
            else:
                self._fragment_opcode = opcode
                self._fragments = [data]
        elif opcode is Opcode.CONT and self._fragment_opcode is not None:
            self._fragments.append(data)
            if frame.fin:
                whole = b"".join(self._fragments)
                opcode, self._fragment_opcode, self._fragments = self._fragment_opcode, None, []
                self._message(opcode, whole)

    def _message(self, opcode: Opcode, data: bytes) -> None:
        try:
            if opcode is Opcode.BINARY:
                self.fmt = WS_BINARY
                obj = decode_msgpack(data, self._max_depth)
            else:
                self.fmt = WS_TEXT
                obj = decode_json(data, self._max_depth)
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
