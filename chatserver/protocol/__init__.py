"""The client protocol, sans-I/O.

Nothing here touches sockets, asyncio or the database; tests feed bytes in and read objects out.

::

    TCP bytes ──► codec.FrameDecoder ──► codec.decode_msgpack ──┐
    WebSocket message ──► codec.decode_msgpack | decode_json ───┴─► dict ──► parse_request
                                                                                    │
    events.Outgoing ◄── reply / event dicts ◄── the session layer ◄─────────────────┘

- ``errors``   — the error codes every reply uses; :class:`ProtocolError` (undecodable input).
- ``codec``    — framing and payload decoding with every read bounded.
- ``commands`` — one frozen dataclass per request op, validated on construction.
- ``events``   — encodes a reply or event once per wire format, for fan-out.
"""
