"""How the management pages are served (no browser needed): the Content-Security-Policy and the
other headers, only the listed files, and ``hello``'s ``room_management_url`` pointing at them."""

from __future__ import annotations

import re

import aiohttp

from chatserver.transport.web_manage import ADMIN_FILES, MANAGE_FILES, WEB, manage_url
from tests.conftest import node_config, start_node
from tests.web.manage_fixtures import Site
from tests.web.manage_fixtures import site as site

TOTAL_BUDGET = 100_000  # bytes, every page file together


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False) as r:
            return r.status, dict(r.headers), await r.read()


async def test_pages_carry_a_strict_csp(site: Site) -> None:
    ws_port = site.node.addresses["websocket"][1]
    for url in (site.http + "/manage/", site.management + "/admin/"):
        status, headers, body = await get(url)
        assert status == 200 and body.startswith(b"<!doctype html>")
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert b"<script>" not in body and not re.search(rb"\son[a-z]+\s*=", body, re.I)
    _, headers, _ = await get(site.http + "/manage/")
    assert f"connect-src 'self' ws://127.0.0.1:{ws_port};" in headers["Content-Security-Policy"]
    status, headers, _ = await get(site.http + "/manage/manage.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "Content-Security-Policy" in headers
    status, _, body = await get(site.http + "/manage/config.json")
    assert status == 200 and b'"websocket_port": %d' % ws_port in body


async def test_only_the_listed_files_are_served(site: Site) -> None:
    for path in (
        "/manage/admin.js",  # the administrators' page is not on the client listener
        "/manage/..%2f..%2fserver.py",
        "/manage/%2e%2e/config.py",
        "/manage/nothing.js",
        "/manage/index.html",  # served as /manage/ only
    ):
        status, _, _ = await get(site.http + path)
        assert status == 404, path
    status, _, _ = await get(site.management + "/admin/manage.js")
    assert status == 404
    status, headers, _ = await get(site.http + "/manage")
    assert status == 301 and headers["Location"] == "/manage/"


def test_the_pages_are_small() -> None:
    total = sum((WEB / name).stat().st_size for name in set(MANAGE_FILES) | set(ADMIN_FILES))
    assert total < TOTAL_BUDGET, total


async def test_hello_points_at_the_nodes_manage_page(site: Site) -> None:
    client = await site.harness.connect()
    hello = await client.call("hello", protocol=1)
    assert hello["room_management_url"] == "/manage/"  # on the node's client HTTP listener
    status, _, body = await get(site.http + hello["room_management_url"])
    assert status == 200 and b"<title>Room management</title>" in body


async def test_a_configured_url_wins(tmp_path: object) -> None:
    config = node_config(
        f"sqlite:///{tmp_path}/chat.db",
        chat={"room_management_url": "https://chat.example/manage/"},
    )
    node = await start_node(config)
    try:
        from chatserver.client import Client

        host, port = node.addresses["tcp"]
        client = await Client.connect_tcp(host, port)
        hello = await client.call("hello", protocol=1)
        assert hello["room_management_url"] == "https://chat.example/manage/"
        await client.close()
    finally:
        await node.stop()


def test_manage_url_names_wildcard_and_ipv6_listeners() -> None:
    assert manage_url("http", "127.0.0.1", 5081) == "http://127.0.0.1:5081/manage/"
    assert manage_url("https", "::1", 5081) == "https://[::1]:5081/manage/"
    assert "0.0.0.0" not in manage_url("http", "0.0.0.0", 5081)
