"""The TCP transport: 4-byte big-endian length, then a MessagePack map."""

from __future__ import annotations

import logging

from ..protocol.codec import FrameDecoder, decode_msgpack
from ..protocol.errors import FrameTooLarge, ProtocolError
from ..protocol.events import TCP
from ..services import Services
from .connection import Connection
from .connections import Connections

log = logging.getLogger("chatserver.connection")


class TcpConnection(Connection):
    transport_name = "tcp"
    fmt = TCP

    def __init__(self, connections: Connections, services: Services) -> None:
        super().__init__(connections, services)
        self._decoder: FrameDecoder | None = FrameDecoder(self.max_frame_bytes, self.frame_setting)
        self._max_depth = self.limits.max_nesting_depth

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is None or self._closing:  # after an oversized frame, or closing: dropped
            return
        completed = False
        while True:
            try:
                bodies = decoder.feed(data)
            except FrameTooLarge as exc:
                self._decoder = None
                self.input_held(0, False)
                # The session keeps the error until it has answered; without its traceback,
                # which holds the decoder's buffer (up to a whole read).
                self.session.end(exc.with_traceback(None), "frame_too_large")
                return
            for body in bodies:
                try:
                    obj = decode_msgpack(body, self._max_depth, self.max_values)
                except ProtocolError as exc:
                    self.session.reject(exc)
                    continue
                self.deliver(obj)
            if not bodies:
                break
            completed = True
            if decoder.buffered < 4:
                break
            data = b""  # an oversized header may follow the frames just served
        self.input_held(decoder.buffered, completed)

    def _limits_raised(self) -> None:
        if self._decoder is not None:
            self._decoder.limit(self.max_frame_bytes, self.frame_setting)

    def eof_received(self) -> bool:
        return False
