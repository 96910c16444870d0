"""Item 8 of issue 14: the WebSocket ``Origin`` header is checked.

Before, any web page could open a WebSocket to the node from a visitor's browser. Now a
handshake without ``Origin`` (not a browser) is accepted; with ``listen.websocket_origins``
empty (the default) a browser's ``Origin`` must name the address the browser connected to (the
``Host``); with it set, only the listed origins. Anything else: HTTP 403 during the handshake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatserver.config import ConfigError

from ..conftest import Harness, node_config, start_node
from .helpers import ws_handshake
from .sqlite_only import sqlite_url


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    """SQLite only: these attacks exercise the transports, not the store (sqlite_only.py)."""
    return await sqlite_url(tmp_path)


async def handshake(address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    response = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return int(response.split(b" ", 2)[1]), response


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),  # not a browser
        ("http://{host}:{port}", 101),  # a page from the node's own address
        ("HTTP://{HOST}:{port}", 101),
        ("http://evil.example", 403),
        ("http://{host}:1", 403),  # same host, another port: another origin
        ("https://{host}:{port}.evil.example", 403),
        ("null", 403),
        ("not an origin", 403),
    ],
)
async def test_default_origins(harness: Harness, origin: str | None, status: int) -> None:
    host, port = harness.node.addresses["websocket"]
    if origin is not None:
        origin = origin.format(host=host, HOST=host.upper(), port=port)
    got, response = await handshake((host, port), ws_handshake(host, port, origin=origin))
    assert got == status, response


async def test_two_origin_headers_are_refused(harness: Harness) -> None:
    host, port = harness.node.addresses["websocket"]
    request = ws_handshake(host, port, origin=f"http://{host}:{port}")
    request = request.replace(b"\r\n\r\n", b"\r\nOrigin: http://evil.example\r\n\r\n")
    status, _ = await handshake((host, port), request)
    assert status == 403


@pytest.fixture
async def listed(db_url: str) -> AsyncIterator[Harness]:
    origins = '["https://chat.example.com", "http://localhost:8080/"]'
    h = Harness(await start_node(node_config(db_url, listen={"websocket_origins": origins})))
    try:
        yield h
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 101),
        ("https://chat.example.com", 101),
        ("https://chat.example.com:443", 101),
        ("http://localhost:8080", 101),
        ("http://chat.example.com", 403),
        ("http://{host}:{port}", 403),  # with a list, only the list
    ],
)
async def test_listed_origins(listed: Harness, origin: str | None, status: int) -> None:
    host, port = listed.node.addresses["websocket"]
    if origin is not None:
        origin = origin.format(host=host, port=port)
    got, response = await handshake((host, port), ws_handshake(host, port, origin=origin))
    assert got == status, response


def test_origin_rules() -> None:
    from chatserver.transport.websocket import origin_allowed

    assert origin_allowed([], None, ())
    assert origin_allowed(["https://a.example"], "a.example", ())
    assert origin_allowed(["https://a.example"], "a.example:443", ())
    assert not origin_allowed(["https://a.example"], "a.example:8443", ())
    assert origin_allowed(["http://[::1]:5080"], "[::1]:5080", ())
    assert origin_allowed(["https://anything.example"], None, ("*",))
    assert origin_allowed(["null"], None, ("null",))
    assert not origin_allowed(["null"], "a.example", ())


def test_origins_setting_is_checked() -> None:
    config = node_config(
        "sqlite:///x.db", listen={"websocket_origins": '["HTTPS://A.example:443"]'}
    )
    assert config.listen.websocket_origins == ("https://a.example",)
    with pytest.raises(ConfigError, match=r"listen\.websocket_origins"):
        node_config("sqlite:///x.db", listen={"websocket_origins": '["https://a.example/path"]'})
