"""The room management pages: static files from ``chatserver/web/manage/``, with a strict
Content-Security-Policy.

::

    GET /manage/                 the managers' page (index.html) on the client HTTP listener
    GET /manage/config.json      where the page's WebSocket is: {"websocket_port", "tls"}
    GET /manage/{file}           its modules and style sheet
    GET /admin/ …                the administrators' page, on the management port
                                 (chatserver/admin/server.py adds it with :func:`add_admin_pages`)

The pages speak the documented protocols only: the managers' page the client WebSocket protocol
(JSON), the administrators' page the management API. No data is ever in these files, so they
are public; every answer carries the same headers (:func:`page_headers`): no inline script or
style, nothing from another origin, no framing, no referrer. The files are read once, at start,
from a fixed list of names (no path from the request reaches the file system).
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

WEB = Path(__file__).resolve().parent.parent / "web" / "manage"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
_NAME = re.compile(r"[a-z0-9-]+\.(html|js|css|png)")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
# Which files each page set serves (the rest of the folder is not served there).
MANAGE_FILES = ("index.html", "manage.js", "proto.js", "ui.js", "manage.css")
ADMIN_FILES = ("admin.html", "admin.js", "api.js", "ui.js", "manage.css")


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    content_type: str
    etag: str


def load(names: tuple[str, ...], folder: Path = WEB) -> dict[str, Page]:
    pages = {}
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a page file name: {name!r}")
        body = (folder / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        pages[name] = Page(body, TYPES[Path(name).suffix], etag)
    return pages


def page_headers(connect_src: str = "'self'") -> dict[str, str]:
    """The headers of every page file: a CSP with no inline script or style and nothing from
    another origin (``connect_src``: where the page may open connections)."""
    return {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
            f" connect-src {connect_src}; base-uri 'none'; form-action 'none';"
            " frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


def _serve(pages: dict[str, Page], request: web.Request, name: str, csp: str) -> web.Response:
    page = pages.get(name)
    if page is None:
        raise web.HTTPNotFound(text="no such page\n", headers=page_headers())
    headers = {**page_headers(csp), "ETag": page.etag}
    if request.headers.get("If-None-Match") == page.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=page.body, content_type=None, headers=headers | {"Content-Type": page.content_type}
    )


def _websocket_source(request: web.Request, port: int | None, tls: bool) -> str:
    """``'self'`` and the node's WebSocket listener, at the host name the browser used."""
    host = request.url.raw_host or ""
    if port is None or not _HOST.fullmatch(host):
        return "'self'"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"'self' {'wss' if tls else 'ws'}://{host}:{port}"


def add_manage_pages(router: web.UrlDispatcher, websocket_port: int | None, tls: bool) -> None:
    """``/manage/`` on the client HTTP listener; the page opens its WebSocket to
    ``websocket_port`` at the host it was loaded from (``None``: no WebSocket listener)."""
    pages = load(MANAGE_FILES)

    async def index(request: web.Request) -> web.StreamResponse:
        return _serve(pages, request, "index.html", _websocket_source(request, websocket_port, tls))

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return _serve(pages, request, name if name != "index.html" else "", "'self'")

    async def config(request: web.Request) -> web.StreamResponse:
        body = {"websocket_port": websocket_port, "tls": tls}
        return web.json_response(body, headers=page_headers())

    async def to_index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/manage/")

    router.add_get("/manage", to_index)
    router.add_get("/manage/", index)
    router.add_get("/manage/config.json", config)
    router.add_get("/manage/{name}", asset)


def add_admin_pages(router: web.UrlDispatcher) -> None:
    """``/admin/`` on the management port; the page calls the management API beside it."""
    pages = load(ADMIN_FILES)

    async def index(request: web.Request) -> web.StreamResponse:
        return _serve(pages, request, "admin.html", "'self'")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return _serve(pages, request, name if name != "admin.html" else "", "'self'")

    async def to_index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/admin/")

    router.add_get("/admin", to_index)
    router.add_get("/admin/", index)
    router.add_get("/admin/{name}", asset)


def manage_url(scheme: str, host: str, port: int) -> str:
    """The ``/manage/`` page of a listener bound to ``host:port``; a wildcard address is named by
    this machine's host name (set ``chat.room_management_url`` behind a proxy)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/manage/"
