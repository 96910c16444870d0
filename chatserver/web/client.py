"""The chat client's files: ``/``, ``/static/{name}`` and ``/client.json``.

The files are read once, at start, from the package's ``static/`` folder; a name that is not one
of them is 404 (no path is ever joined from the request, so nothing outside it can be reached).
Every answer carries the page headers (:func:`page_headers`): a Content-Security-Policy that lets
scripts and styles come from this origin only (no inline script, no ``eval``), images from
``blob:`` (previews of files) and connections to this origin and the nodes' WebSocket URLs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger("chatserver.http")

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """The files of ``static/`` by name (one level, the types in :data:`TYPES` only)."""
    found: dict[str, StaticFile] = {}
    folder = resources.files(__package__ or "chatserver.web") / "static"
    for entry in folder.iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not entry.is_file() or suffix not in TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[name] = StaticFile(body, TYPES[suffix], etag)
    return found


def page_headers(connect: Sequence[str]) -> dict[str, str]:
    """The headers of every page and file of the client: ``connect``, the WebSocket URLs the page
    may open (besides its own origin)."""
    sources = " ".join(["'self'", *connect])
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob:",
            "media-src 'self' blob:",
            f"connect-src {sources}",
            "frame-src http: https:",  # a room's add-in, in a sandboxed iframe
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


class ClientPages:
    """Serves the chat client. ``websockets()`` gives the nodes' WebSocket listeners as
    ``(host, port)``, this node's first; ``tls``: whether they speak ``wss``."""

    def __init__(
        self,
        websockets: Callable[[], list[tuple[str, int]]],
        tls: bool,
        room_management_url: Callable[[], str],
        sso: bool = False,
    ) -> None:
        self._websockets = websockets
        self._sso = sso  # single sign-on ([oidc] enabled): the sign-in form offers it
        self._tls = tls
        self._room_management_url = room_management_url
        self.files = load_static()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/static/{name}", self.static)
        r.add_get("/client.json", self.client_json)

    def urls(self, request: web.Request) -> list[str]:
        """The WebSocket URLs for a page loaded through ``request``: a listener bound to every
        address is reached on the host the browser used."""
        scheme = "wss" if self._tls else "ws"
        try:
            browser_host = urlsplit(f"http://{request.host}").hostname or "127.0.0.1"
        except ValueError:
            browser_host = "127.0.0.1"
        out: list[str] = []
        for host, port in self._websockets():
            name = browser_host if host in WILDCARDS else host
            if ":" in name:
                name = f"[{name}]"
            url = f"{scheme}://{name}:{port}"
            if url not in out:
                out.append(url)
        return out

    def _send(self, request: web.Request, name: str) -> web.StreamResponse:
        found = self.files.get(name)
        if found is None:
            raise web.HTTPNotFound(text="not found\n")
        headers = page_headers(self.urls(request))
        headers["ETag"] = found.etag
        if request.headers.get("If-None-Match") == found.etag:
            return web.Response(status=304, headers=headers)
        return _response(found, headers)

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._send(request, "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "index.html":
            raise web.HTTPNotFound(text="not found\n")
        return self._send(request, name)

    async def client_json(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "websocket": self.urls(request),
                "subprotocol": "chatserver.json",
                "room_management_url": self._room_management_url(),
                "sso_url": "/auth/oidc/login" if self._sso else None,
            },
            headers=page_headers(self.urls(request)),
        )


def _response(found: StaticFile, headers: dict[str, str]) -> web.Response:
    response = web.Response(body=found.body, headers=headers)
    response.headers["Content-Type"] = found.content_type
    return response
