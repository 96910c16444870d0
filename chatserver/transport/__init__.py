"""Thin asyncio adapters: bytes in to the codecs, bytes out to the socket.

- ``connection`` — what every client transport shares (output batching, backpressure, timers).
- ``tcp``        — length-prefixed MessagePack frames.
- ``websocket``  — RFC 6455 through the ``websockets`` library's sans-I/O protocol.
"""
