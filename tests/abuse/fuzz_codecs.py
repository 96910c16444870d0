"""A coverage-guided fuzzer (atheris, libFuzzer) of the client protocol's decoders.

Not a test module: ``tests/abuse/test_fuzz_atheris.py`` runs it in a process of its own (a
libFuzzer run ends the process), or run it by hand::

    python -m tests.abuse.fuzz_codecs -max_total_time=600 -artifact_prefix=/tmp/ [CORPUS_DIR]

Every input is one case: its first byte picks the decoder, the next two its limits, the rest is
the payload. Whatever the payload, each decoder must return a map within the limits it was
given or raise exactly the protocol's own error (``bad_request`` or ``too_large``), and what it
returns must encode again and decode to the same thing (the node sends what clients send on to
others): an uncaught exception or a failed assertion is a crash, which libFuzzer reports with
the input that caused it (``crash-…`` under ``-artifact_prefix``).

The same properties, tried with hypothesis' generated inputs rather than coverage-guided ones,
are in ``tests/abuse/test_codec_fuzz.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["chatserver.protocol"]):
    from chatserver.protocol.codec import (
        FrameDecoder,
        decode_json,
        decode_msgpack,
        encode_json,
        encode_msgpack,
    )
    from chatserver.protocol.errors import BAD_REQUEST, TOO_LARGE, FrameTooLarge, ProtocolError

MODES = ("msgpack", "json bytes", "json text", "tcp framing")


def measure(obj: Any, depth: int = 1) -> tuple[int, int]:
    """(arrays and maps plus their items and entries, nesting depth) of a decoded value: what
    ``max_values`` and ``max_depth`` bound."""
    if isinstance(obj, dict | list):
        items = obj.values() if isinstance(obj, dict) else obj
        counts = [measure(v, depth + 1) for v in items]
        return 1 + len(obj) + sum(c for c, _ in counts), max([depth, *(d for _, d in counts)])
    return 0, depth - 1


def refused(exc: ProtocolError) -> None:
    assert type(exc) is ProtocolError, f"{type(exc).__name__} from a payload decoder"
    assert exc.code in (BAD_REQUEST, TOO_LARGE), exc.code
    assert exc.message, "an error without a message"


def accepted(result: Any, mode: str, max_depth: int, max_values: int) -> None:
    assert type(result) is dict, type(result)
    values, depth = measure(result)
    assert depth <= max_depth, (depth, max_depth)
    assert values <= max_values, (values, max_values)
    assert all(type(key) is str for key in result), "a key that is not a string"
    # What was accepted can be sent on in its encoding, and reads back the same. (Not in the
    # other: MessagePack has bytes, JSON has integers of any size.)
    if mode == "msgpack":
        packed = encode_msgpack(result)
        assert encode_msgpack(decode_msgpack(packed, max_depth, max_values)) == packed
    else:
        text = encode_json(result)
        text.decode("utf-8")  # strict: a lone surrogate cannot be sent on
        assert encode_json(decode_json(text, max_depth, 1 << 30)) == text


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    mode = MODES[data[0] % len(MODES)]
    max_depth = 1 + data[1] % 20
    max_values = 1 + data[2] * 20
    payload = data[3:]
    if mode == "tcp framing":
        framing(payload, limit=max_values, cut_every=max_depth)
        return
    decode = decode_msgpack if mode == "msgpack" else decode_json
    subject: bytes | str = payload
    if mode == "json text":  # a text frame as a str, lone surrogates and all
        even = payload[: len(payload) // 2 * 2]
        subject = even.decode("utf-16-le", errors="surrogatepass")
    try:
        result = decode(subject, max_depth, max_values)  # type: ignore[operator]
    except FrameTooLarge as exc:
        raise AssertionError(f"FrameTooLarge from a payload decoder: {exc}") from exc
    except ProtocolError as exc:
        refused(exc)
    else:
        accepted(result, mode, max_depth, max_values)


def framing(stream: bytes, *, limit: int, cut_every: int) -> None:
    """The stream fed in pieces of ``cut_every`` bytes gives the same frames as fed whole, each
    at most ``limit`` bytes, and a header above ``limit`` raises ``FrameTooLarge``."""

    def run(pieces: list[bytes]) -> tuple[list[bytes], bool]:
        decoder = FrameDecoder(limit)
        bodies: list[bytes] = []
        try:
            for piece in pieces:
                bodies += decoder.feed(piece)
            bodies += decoder.feed(b"")
        except FrameTooLarge as exc:
            assert exc.code == TOO_LARGE
            return bodies, True
        assert decoder.buffered < 4 + limit, (decoder.buffered, limit)
        return bodies, False

    whole = run([stream])
    pieces = run([stream[at : at + cut_every] for at in range(0, len(stream), cut_every)])
    assert whole == pieces, (whole, pieces)
    assert all(len(body) <= limit for body in whole[0])


def seeds() -> list[bytes]:
    """A few valid inputs of every mode, to start from."""
    import json
    import struct

    import msgpack

    maps: list[Any] = [
        {"op": "ping", "id": 1},
        {"op": "post", "id": 7, "room": 3, "text": "héllo ✓ 😀", "cid": "c-1"},
        {"a": [1, 2.5, None, True, False, "s"], "b": {"c": {"d": []}}},
    ]
    out = []
    for obj in maps:
        out.append(b"\x00\x10\xff" + msgpack.packb(obj, use_bin_type=True))
        out.append(b"\x01\x10\xff" + json.dumps(obj).encode())
        out.append(b"\x02\x10\xff" + json.dumps(obj).encode("utf-16-le", "surrogatepass"))
        body = msgpack.packb(obj, use_bin_type=True)
        out.append(b"\x03\x03\x10" + struct.pack(">I", len(body)) + body)
    return out


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
