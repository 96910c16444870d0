"""The client HTTP listener (``listen.http``): files in rooms, for every client of the node.

::

    POST   /api/v1/rooms/{room}/files   upload: the body is the file's bytes (streamed); name in
                                        the query (``name``) or ``X-File-Name`` (percent-encoded
                                        UTF-8); optional ``text`` (query), ``X-Content-SHA256``
    GET    /api/v1/files/{id}           download: ``Range`` (one range), ``ETag`` /
                                        ``If-None-Match`` / ``If-Range``
    DELETE /api/v1/files/{id}           removal (uploader, room managers, administrators)
    GET    /api/v1/search?q=…           search (``room``, ``order``, ``cursor``, ``limit``): the
                                        ``search`` op's reply, as JSON (docs/protocol.md)
    GET    /, /static/…, /client.json   the web client (:mod:`chatserver.web`), when given

Authentication is the chat protocol's session token in ``Authorization: Bearer TOKEN`` and
nowhere else: a request with a credential in its URL (which lands in logs and histories) is
refused whether or not the token is good. Sign-in goes through
:class:`~chatserver.accounts.Accounts` (its throttle included) and the rules through
:class:`~chatserver.rooms.files.Files`, which asks the one
:class:`~chatserver.rooms.authorization.Authorization`: this module knows HTTP, not chat rules.

Downloads are always attachments, with ``nosniff`` and ``Content-Security-Policy: sandbox``; a
type a browser could run (HTML, SVG, XML) is sent as ``application/octet-stream``
(docs/security.md, "Files").

Limits before memory: the request head is bounded by aiohttp (line and header sizes) and by the
node's connection guard (how many connections, how long the first head may take); the body is
read a chunk at a time and never past the file size limit (the node answers 413 and closes the
connection without reading the rest).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import quote, unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..accounts import Accounts
from ..config import FilesConfig, parse_address
from ..protocol.errors import (
    BAD_REQUEST,
    FORBIDDEN,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    ChatError,
    RetryLater,
)
from ..rooms.authorization import Authorization
from ..rooms.files import NO_FILE, Files, StorageFull, Upload
from ..rooms.media import ascii_fallback
from ..rooms.search import Search
from ..store import outbox
from ..store.files import StoredFile
from ..store.users import User
from ..throttle import Source

log = logging.getLogger("chatserver.http")

STATUS = {
    BAD_REQUEST: 400,
    UNAUTHENTICATED: 401,
    FORBIDDEN: 403,
    NOT_FOUND: 404,
    TOO_LARGE: 413,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
}
# Query parameters that would carry a credential in the URL: refused, whatever their value.
CREDENTIAL_PARAMS = frozenset({"token", "access_token", "auth", "authorization", "session"})
# Types a browser may render or run: sent as opaque bytes whatever was sniffed.
ACTIVE_TYPES = frozenset({"text/html", "image/svg+xml", "application/xml", "text/xml"})
MAX_HEADER_FIELD = 8190  # bytes of one header line (aiohttp's default, stated)
MAX_HEADERS = 64
# A request body's buffer in aiohttp: reading from the socket pauses past twice this (plus the
# one read that passed it), so each upload holds little beyond the chunk it is reading.
READ_BUFFER = 16 * 1024
LINGER_S = 1.0  # after a refused upload, the rest of the body is read (dropped) this long at most
SHUTDOWN_S = 2.0  # at stop, requests still running (uploads) are cancelled after this (and removed)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Guard(Protocol):
    """The node's connection guard (cap and first-head deadline), wrapped around aiohttp's
    protocol factory; told when a request's head arrived."""

    refused: int  # connections refused over the cap
    timed_out: int  # connections closed for a late first request head

    @property
    def open_connections(self) -> int: ...

    def __call__(self) -> asyncio.Protocol: ...

    def head_received(self, protocol: object) -> None: ...


class Pages(Protocol):
    """Web pages served beside the file endpoints (:mod:`chatserver.web`)."""

    def add_routes(self, app: web.Application) -> None: ...


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's log for its request handlers: a request it could not parse (a hostile or broken
    client: a header too long, too many of them, garbage) is one WARNING line, not a traceback;
    anything else is logged as aiohttp logs it."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            what = str(exc_info.message).splitlines()[0][:200] if exc_info.message else ""
            self.logger.warning("http: refused a malformed request (%s %s)", exc_info.code, what)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single ``bytes=`` range in a file of ``size`` bytes; None to
    send the whole file (no range, or several: RFC 9110 lets a server ignore them);
    :class:`ValueError` when the range cannot be satisfied (416)."""
    header = header.strip()
    if not header or "," in header:
        return None
    match = _RANGE.fullmatch(header.replace(" ", ""))
    if match is None:
        return None  # another unit, or garbage: ignored like no range
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0 or size == 0:
            raise ValueError("unsatisfiable suffix range")
        return max(size - int(last), 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or (last and end < start):
        raise ValueError("range starts past the end")
    return start, min(end, size - 1)


def content_disposition(name: str) -> str:
    """``attachment`` with a plain ASCII ``filename`` and the real name as RFC 6266's
    ``filename*`` (percent-encoded UTF-8): no quote, CR or LF can reach the header."""
    return (
        f"attachment; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{quote(name, safe='')}"
    )


class FilesCollector:
    """The files' and the listener's counts as metrics, read at scrape time."""

    def __init__(self, files: Files, server: ClientHttpServer) -> None:
        self._files = files
        self._server = server

    def collect(self) -> Iterator[Any]:
        files = self._files
        yield GaugeMetricFamily(
            "chatserver_files_uploads_in_progress", "Uploads being received", files.uploading
        )
        yield CounterMetricFamily(
            "chatserver_files_uploaded", "Files uploaded (committed)", value=files.uploaded
        )
        yield CounterMetricFamily(
            "chatserver_files_uploaded_bytes", "Bytes of the files uploaded", files.uploaded_bytes
        )
        yield CounterMetricFamily(
            "chatserver_files_uploads_refused", "Uploads refused or failed", value=files.refused
        )
        yield CounterMetricFamily(
            "chatserver_files_downloads", "Downloads started (200 or 206)", value=files.downloads
        )
        yield CounterMetricFamily(
            "chatserver_files_downloaded_bytes",
            "Bytes of files sent to downloaders",
            value=files.downloaded_bytes,
        )
        guard = self._server.guard
        if guard is not None:
            yield GaugeMetricFamily(
                "chatserver_http_connections",
                "Open connections to the client HTTP listener",
                value=guard.open_connections,
            )
            refused = CounterMetricFamily(
                "chatserver_http_connections_refused",
                "Client HTTP connections refused (full: over files.max_connections) or closed"
                " before their first request (head_timeout)",
                labels=["reason"],
            )
            refused.add_metric(["full"], guard.refused)
            refused.add_metric(["head_timeout"], guard.timed_out)
            yield refused


class ClientHttpServer:
    def __init__(
        self,
        config: FilesConfig,
        accounts: Accounts,
        auth: Authorization,
        files: Files,
        guard: Callable[[Callable[[], asyncio.Protocol]], Guard] | None = None,
        search: Search | None = None,
        pages: Pages | None = None,
    ) -> None:
        self._config = config
        self._search = search
        self._accounts = accounts
        self._auth = auth
        self._files = files
        self._make_guard = guard
        self.guard: Guard | None = None
        self.app = web.Application(middlewares=[self._head_received])
        r = self.app.router
        r.add_post("/api/v1/rooms/{room}/files", self.upload)
        r.add_get("/api/v1/files/{file}", self.download, allow_head=False)
        r.add_delete("/api/v1/files/{file}", self.delete)
        if search is not None:
            r.add_get("/api/v1/search", self.search, allow_head=False)
        if pages is not None:  # the web client (chatserver/web)
            pages.add_routes(self.app)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, address: str, ssl_context: Any) -> tuple[str, int]:
        host, port = parse_address(address)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self._config.header_timeout_s,
            lingering_time=LINGER_S,
            shutdown_timeout=SHUTDOWN_S,
            logger=_QuietLog(log, {}),
            max_line_size=MAX_HEADER_FIELD,
            max_field_size=MAX_HEADER_FIELD,
            max_headers=MAX_HEADERS,
            read_bufsize=READ_BUFFER,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        factory: Callable[[], asyncio.Protocol] = self._runner.server
        if self._make_guard is not None:
            factory = self.guard = self._make_guard(factory)
        self._listener = await asyncio.get_running_loop().create_server(
            factory,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self._config.header_timeout_s if ssl_context else None,
            reuse_address=True,
        )
        bound = self._listener.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _head_received(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.guard is not None:
            self.guard.head_received(request.protocol)
        try:
            response: web.StreamResponse = await handler(request)
        except _Refused as exc:
            response = _error(exc.status, exc.code, exc.message, **exc.headers)
        except RetryLater as exc:
            response = _error(429, exc.code, exc.message, **{"Retry-After": str(exc.retry_after)})
        except ChatError as exc:
            status = 507 if isinstance(exc, StorageFull) else STATUS.get(exc.code, 500)
            response = _error(status, exc.code, exc.message)
        except web.HTTPException:
            raise
        except (ConnectionError, asyncio.IncompleteReadError):
            raise  # the client went away: nobody to answer
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = _error(500, "internal", "internal error")
        return response

    # -- authentication ---------------------------------------------------------------------

    async def _user(self, request: web.Request) -> User:
        carried = CREDENTIAL_PARAMS.intersection(k.lower() for k in request.query)
        if carried:
            log.warning(
                "http: refused a request from %s with a credential in its URL (%s)",
                request.remote,
                ", ".join(sorted(carried)),
            )
            raise _Refused(
                400,
                BAD_REQUEST,
                "credentials in the URL are refused (they end up in logs): send"
                " Authorization: Bearer TOKEN",
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="chatserver"'}
        if scheme.lower() != "bearer" or not token:
            raise _Refused(401, UNAUTHENTICATED, "send Authorization: Bearer TOKEN", **challenge)
        user = await self._accounts.token_user(token, Source(request.remote or "", "http"))
        if user is None:
            raise _Refused(401, UNAUTHENTICATED, "the token is unknown or expired", **challenge)
        if not self._auth.policy_enabled(user):
            raise _Refused(403, FORBIDDEN, "persistent chat is disabled for this user")
        outbox.ACTOR.set(user.id)  # compliance events of this request name the user
        return user

    # -- endpoints --------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        room_text = request.match_info["room"]
        if not room_text.isdigit() or not 1 <= int(room_text) <= 2**53:
            raise ChatError(NOT_FOUND, f"no room {room_text}")
        name = request.query.get("name")
        if name is None and "X-File-Name" in request.headers:
            try:
                name = unquote(request.headers["X-File-Name"], errors="strict")
            except UnicodeDecodeError:
                raise ChatError(BAD_REQUEST, "X-File-Name must be percent-encoded UTF-8") from None
        upload = Upload(
            room=int(room_text),
            name=name or "",
            text=request.query.get("text", ""),
            sha256=request.headers.get("X-Content-SHA256"),
            size=request.content_length,
        )

        async def read(n: int) -> bytes:
            try:
                return await request.content.read(n)
            except (ConnectionError, asyncio.IncompleteReadError, HttpProcessingError) as exc:
                # the client went away, or the body ended before its length: one kind for Files
                raise ConnectionResetError(str(exc) or type(exc).__name__) from None

        try:
            message = await self._files.upload(user, upload, read)
        except ChatError as exc:
            if exc.code == TOO_LARGE or not request.content.at_eof():
                # The rest of the body is not read: say so and close once answered.
                status = 507 if isinstance(exc, StorageFull) else STATUS.get(exc.code, 500)
                response = _error(status, exc.code, exc.message, Connection="close")
                response.force_close()
                return response
            raise
        assert message.file is not None
        return web.json_response(
            {"file": message.file.wire(), "message": message.wire()}, status=201
        )

    async def _file(self, request: web.Request) -> tuple[User, StoredFile]:
        user = await self._user(request)
        text = request.match_info["file"]
        if not text.isdigit() or not 1 <= int(text) <= 2**53:
            raise ChatError(NOT_FOUND, NO_FILE)
        return user, await self._files.find(user, int(text))

    async def download(self, request: web.Request) -> web.StreamResponse:
        user, found = await self._file(request)
        etag = f'"{found.sha256}"'
        media_type = found.media_type
        if media_type in ACTIVE_TYPES or media_type.startswith("text/html"):
            media_type = "application/octet-stream"
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, no-cache",
            "Content-Disposition": content_disposition(found.name),
            "Content-Security-Policy": "sandbox",
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "same-origin",
        }
        if_none = request.headers.get("If-None-Match")
        if if_none is not None and (
            if_none.strip() == "*" or etag in [t.strip() for t in if_none.split(",")]
        ):
            return web.Response(status=304, headers=headers)
        size = found.size
        wanted: tuple[int, int] | None = None
        if_range = request.headers.get("If-Range")
        if "Range" in request.headers and (if_range is None or if_range.strip() == etag):
            try:
                wanted = parse_range(request.headers["Range"], size)
            except ValueError:
                headers["Content-Range"] = f"bytes */{size}"
                raise _Refused(
                    416, BAD_REQUEST, f"the range is outside the file's {size} bytes", **headers
                ) from None
        await self._files.downloading(user, found)
        start, end = wanted if wanted is not None else (0, size - 1)
        response = web.StreamResponse(status=206 if wanted is not None else 200, headers=headers)
        response.content_type = media_type
        response.content_length = end - start + 1
        if wanted is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        await response.prepare(request)
        if size:
            async for data in self._files.content(found, start, end):
                await response.write(data)
        await response.write_eof()
        return response

    async def delete(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        text = request.match_info["file"]
        if not text.isdigit() or not 1 <= int(text) <= 2**53:
            raise ChatError(NOT_FOUND, NO_FILE)
        await self._files.remove(user, int(text))
        return web.Response(status=204)

    async def search(self, request: web.Request) -> web.StreamResponse:
        """The ``search`` op over HTTP: the same checks, limits, compliance event and reply."""
        user = await self._user(request)
        assert self._search is not None
        q = request.query
        numbers: dict[str, int | None] = {}
        for key in ("room", "limit"):
            value = q.get(key)
            if value is not None and (not value.isdigit() or not 1 <= int(value) <= 2**53):
                raise ChatError(BAD_REQUEST, f"{key} must be a positive integer")
            numbers[key] = int(value) if value is not None else None
        text = q.get("q", "")
        if not text:
            raise ChatError(BAD_REQUEST, "q is required")
        if len(text) > 500:
            raise ChatError(TOO_LARGE, "q is at most 500 characters")
        hits, cursor = await self._search.search(
            user,
            text,
            room=numbers["room"],
            order=q.get("order"),
            cursor=q.get("cursor"),
            limit=numbers["limit"],
            source="http",
        )
        return web.json_response({"hits": hits, "cursor": cursor})
