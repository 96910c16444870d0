"""The TCP transport: 4-byte big-endian length, then a MessagePack map."""

from __future__ import annotations

import logging

from ..protocol.codec import FrameDecoder, decode_msgpack
from ..protocol.errors import FrameTooLarge, ProtocolError
from ..protocol.events import TCP
from ..services import Services
from .connection import Connection, Connections

log = logging.getLogger("chatserver.connection")


class TcpConnection(Connection):
    transport_name = "tcp"
    fmt = TCP

    def __init__(self, connections: Connections, services: Services) -> None:
        super().__init__(connections, services)
        limits = connections.limits
        self._decoder: FrameDecoder | None = FrameDecoder(limits.max_frame_bytes)
        self._max_depth = limits.max_nesting_depth

    def data_received(self, data: bytes) -> None:
        if self._decoder is None:  # after an oversized frame: nothing more is read
            return
        while True:
            try:
                bodies = self._decoder.feed(data)
            except FrameTooLarge as exc:
                self._decoder = None
                self.session.end(exc, "frame_too_large")
                return
            for body in bodies:
                try:
                    obj = decode_msgpack(body, self._max_depth)
                except ProtocolError as exc:
                    self.session.reject(exc)
                    continue
                self.deliver(obj)
            if not bodies or self._decoder.buffered < 4:
                return
            data = b""  # an oversized header may follow the frames just served

    def eof_received(self) -> bool:
        return False
