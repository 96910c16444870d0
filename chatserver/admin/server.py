"""The management port: an aiohttp application serving the REST API, /metrics and health.

Authentication, on every endpoint but ``/healthz`` and ``/readyz``:

- ``Authorization: Bearer TOKEN`` with an administrator's session token (the same tokens the
  client protocol hands out), or with ``[management] token`` for automation;
- ``Authorization: Basic`` with an administrator's name and password (how the CLI logs in:
  ``POST /api/v1/tokens`` turns it into a session token).

Both go through :class:`~chatserver.accounts.Accounts`, the client protocol's sign-in path, with
its login throttle: while a name or the caller's address is throttled, a Basic attempt (and an
unknown bearer token) gets 429 with ``Retry-After``, whether or not the name exists.

No credentials (or bad ones) get 401; a valid user who is not an administrator gets 403, and no
data either way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from .. import __version__
from ..config import parse_address
from ..protocol.errors import (
    BAD_REQUEST,
    CONFLICT,
    FORBIDDEN,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    ChatError,
    RetryLater,
)
from ..store import outbox
from ..store.users import User
from ..throttle import Source
from ..transport.web_manage import add_admin_pages
from .context import Ctx
from .guard import ConnectionGuard, GuardCollector
from .probe import StoreProbe
from .routes import ROUTES, openapi_document
from .routing import NAME_PARAM, NAME_RULE, BinaryBody, Route

if TYPE_CHECKING:
    from .node import NodeControl

log = logging.getLogger("chatserver.admin")

STATUS = {
    BAD_REQUEST: 400,
    UNAUTHENTICATED: 401,
    FORBIDDEN: 403,
    NOT_FOUND: 404,
    CONFLICT: 409,
    TOO_LARGE: 413,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
}

TOKEN_USER = User(0, "token", "Automation token", True)
MAX_BODY_BYTES = 1_048_576
# After a response, the rest of an unread body is read (and dropped) for at most this long, so
# the client sees the response instead of a reset; then the connection is closed.
LINGER_S = 2.0
# /healthz fails when a timer fired this much later than asked (the loop is stuck).
MAX_LOOP_LAG_S = 5.0


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


def _unauthorized(message: str) -> web.Response:
    return _error(
        401, UNAUTHENTICATED, message, **{"WWW-Authenticate": 'Bearer realm="chatserver"'}
    )


class _Refusal(Exception):
    """A request answered with an HTTP status no error code stands for (408, 415)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ManagementServer:
    def __init__(self, node: NodeControl) -> None:
        self.node = node
        self.limits = node.config.management
        self.app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._head_received]
        )
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.guard: ConnectionGuard | None = None
        self.address: tuple[str, int] | None = None
        self._openapi: bytes | None = None
        self.probe = StoreProbe(node.db)
        self._add_routes()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, address: str, ssl_context: Any) -> tuple[str, int]:
        host, port = parse_address(address)
        limits = self.limits
        await self.probe.start()
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=limits.keepalive_timeout_s,
            lingering_time=LINGER_S,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        # The listener is made here, not by a TCPSite: the guard stands between it and aiohttp.
        guard = self.guard = ConnectionGuard(
            self._runner.server,
            max_connections=limits.max_connections,
            header_timeout_s=limits.header_timeout_s,
        )
        self._listener = await asyncio.get_running_loop().create_server(
            guard,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=limits.header_timeout_s if ssl_context else None,
            reuse_address=True,
        )
        self.node.metrics.register(GuardCollector(guard))
        bound = self._listener.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    async def stop(self) -> None:
        await self.probe.stop()
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
        response: web.StreamResponse = await handler(request)
        return response

    # -- routing ----------------------------------------------------------------------------

    def _add_routes(self) -> None:
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/openapi.json", self.openapi)
        add_admin_pages(r)  # the administrators' pages, /admin/ (docs/administration.md)
        for spec in ROUTES:
            r.add_route(spec.method, spec.path, self._handler(spec))

    async def _authenticate(self, request: web.Request) -> tuple[User, str] | web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        # One sign-in path with the client protocol: the same throttle, the same answers.
        accounts = self.node.accounts
        source = Source(request.remote or "", "management")
        try:
            if scheme == "bearer" and credentials:
                static = self.node.config.management.token
                if static and hmac.compare_digest(credentials.encode(), static.encode()):
                    return TOKEN_USER, "token"
                found = await accounts.token_user(credentials, source)
                if found is None:
                    return _unauthorized("the token is not valid (expired, or never issued)")
                user = found
            elif scheme == "basic" and credentials:
                try:
                    name, _, password = (
                        base64.b64decode(credentials, validate=True).decode().partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    return _unauthorized("malformed Basic credentials")
                user = await accounts.verify(name, password, source)
            else:
                return _unauthorized(
                    "send Authorization: Bearer TOKEN (or Basic for an administrator)"
                )
        except RetryLater as exc:
            return _error(429, exc.code, exc.message, **{"Retry-After": str(exc.retry_after)})
        except ChatError as exc:
            if exc.code == UNAUTHENTICATED:
                return _unauthorized(exc.message)
            return _error(STATUS.get(exc.code, 500), exc.code, exc.message)
        if not user.is_admin:
            return _error(403, FORBIDDEN, "only administrators may use the management API")
        return user, user.name

    def _handler(self, spec: Route) -> Any:
        adapter = spec.adapter()

        async def handle(request: web.Request) -> web.StreamResponse:
            auth = await self._authenticate(request)
            if isinstance(auth, web.Response):
                return auth
            actor, label = auth
            params: dict[str, Any] = {}
            for name in spec.path_params:
                text = request.match_info[name]
                if name.endswith("_id"):
                    if not text.isdigit() or not 1 <= int(text) <= 2**53:
                        return _error(404, NOT_FOUND, f"no such {name[:-3]}: {text!r}")
                    params[name] = int(text)
                elif NAME_PARAM.fullmatch(text):
                    params[name] = text
                else:
                    return _error(400, BAD_REQUEST, f"{name}: {NAME_RULE}")
            try:
                query = None
                repeated = sorted(
                    {key for key in request.query if len(request.query.getall(key)) > 1}
                )
                if repeated:
                    raise ChatError(
                        BAD_REQUEST, f"query parameters given more than once: {repeated}"
                    )
                if spec.query is not None:
                    query = spec.query.model_validate(dict(request.query))
                elif request.query:
                    raise ChatError(
                        BAD_REQUEST, f"unexpected query parameters: {sorted(request.query)}"
                    )
                body = None
                if spec.body is not None:
                    # strict: the JSON types the document names (no "5" or true for 5)
                    body = spec.body.model_validate_json(await self._json(request), strict=True)
                ctx = Ctx(self.node, actor, label, params, body, query)
                # Compliance events of governance changes name the administrator.
                with outbox.acting_as(actor.id or None):
                    result = await spec.handler(ctx)
            except _Refusal as exc:
                response = _error(exc.status, exc.code, exc.message)
                if exc.status == 408:
                    response.force_close()
                return response
            except ValidationError as exc:
                return _error(400, BAD_REQUEST, _describe(exc))
            except ChatError as exc:
                return _error(STATUS.get(exc.code, 500), exc.code, exc.message)
            except Exception:
                log.exception("%s %s failed", spec.method, spec.path)
                self.node.metrics.request_errors += 1
                return _error(500, "internal", "internal error")
            if spec.mutating and spec.audited_by == "handler" and not ctx.audited:
                log.error("%s %s changed state without an audit entry", spec.method, spec.path)
            if isinstance(result, BinaryBody):
                headers = {"Content-Type": "application/octet-stream", **result.headers}
                return web.Response(body=result.content, headers=headers)
            if adapter is None:
                return web.Response(status=204)
            try:
                payload = adapter.dump_python(adapter.validate_python(result), mode="json")
            except ValidationError:
                log.exception(
                    "%s %s: the response does not match its schema", spec.method, spec.path
                )
                return _error(500, "internal", "internal error")
            return web.json_response(payload, status=spec.status)

        handle.__name__ = spec.handler.__name__
        return handle

    async def _json(self, request: web.Request) -> str:
        """The request's body, JSON sent as ``application/json`` (in UTF-8) within
        ``body_timeout_s``, with no key twice in an object; as JSON text again, whole numbers
        written ``5.0`` made integers (JSON Schema: 5.0 is an integer)."""
        if (
            request.content_type != "application/json"
            or (request.charset or "utf-8").lower() != "utf-8"
        ):
            raise _Refusal(
                415, BAD_REQUEST, "send the body as JSON, with Content-Type: application/json"
            )
        timeout = self.limits.body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                raw = await request.read()
        except TimeoutError:
            late = f"the body did not arrive within {timeout:g} s"
            raise _Refusal(408, BAD_REQUEST, late) from None
        except web.HTTPRequestEntityTooLarge:
            raise _Refusal(413, TOO_LARGE, f"the body exceeds {MAX_BODY_BYTES} bytes") from None
        try:
            value = json.loads(raw, object_pairs_hook=_object)
            # lone surrogates ("\\ud800") decode but cannot be encoded, nor stored
            text = json.dumps(_integral(value), ensure_ascii=False)
            text.encode()
        except (ValueError, UnicodeError, RecursionError):
            raise ChatError(BAD_REQUEST, "the body is not JSON in UTF-8") from None
        return text

    # -- endpoints that are not resources ---------------------------------------------------

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        auth = await self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        if self._openapi is None:
            self._openapi = json.dumps(openapi_document(__version__)).encode()
        return web.Response(body=self._openapi, content_type="application/json")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        auth = await self._authenticate(request)
        if isinstance(auth, web.Response):
            return auth
        await self.node.refresh_metrics()
        body = generate_latest(self.node.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        lag = self.node.metrics.loop_lag._value.get()
        ok = lag < MAX_LOOP_LAG_S
        return web.json_response(
            {"alive": ok, "event_loop_lag_s": round(lag, 4)}, status=200 if ok else 503
        )

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        checks: dict[str, Any] = {
            "accepting": self.node.connections.accepting and self.node.listening
        }
        checks["store"] = self.probe.state()  # the background probe's last result (probe.py)
        ready = checks["accepting"] and checks["store"] == "ok"
        return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (which value would count is not for the
    server to guess)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ChatError(BAD_REQUEST, f"the body gives the key {key!r} more than once")
        out[key] = value
    return out


def _integral(value: Any) -> Any:
    """``value`` with every float that is a whole number made an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts[:10])
