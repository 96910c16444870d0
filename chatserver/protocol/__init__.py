"""The client protocol, sans-I/O.

Nothing here touches sockets, asyncio or the database; tests feed bytes in and read objects out.

::

    bytes ──► codec.FrameDecoder (TCP: length + MessagePack)  ─┐
    WebSocket message ──► codec.decode_payload (MessagePack | JSON)─┴─► dict ──► commands.parse_request
                                                                                    │
    events.encode_* ◄── reply / event dicts ◄── the session layer ◄─────────────────┘

- ``errors``   — the error codes every reply uses, and :class:`ProtocolError` (the peer sent garbage).
- ``codec``    — framing and payload decoding with every read bounded.
- ``commands`` — one frozen dataclass per request op, validated on construction.
- ``events``   — encodes a reply or event once per wire format, for fan-out.
"""
