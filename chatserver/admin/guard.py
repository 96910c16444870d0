"""The management port's connection limits: how many connections it holds, and how long a
connection may take to send its first request's head.

aiohttp bounds the time between requests (``keepalive_timeout``: an idle connection, or one
still sending the next request's head that long after the previous response, is closed) but
not the time a new connection may take to send its first request line and headers: a client
that sends one byte a second holds its connection, and a file descriptor, as long as it likes.
:class:`ConnectionGuard` stands between the listening socket and aiohttp's protocol::

    accept ─► ConnectionGuard() ─► _Guarded(aiohttp's RequestHandler)
                 │                    │ connection_made: over max_connections? 503, close
                 │                    │ else a timer: no request head in header_timeout_s?
                 │                    │      408, close
                 │                    └ everything else passed through unchanged
                 └ head_received(protocol): the timer is stopped (a middleware calls it when a
                   request reaches the application)

The body of a request is bounded by the server (``body_timeout_s`` around reading it), the time
between requests by aiohttp's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("chatserver.admin")


def _response(status: str, message: str, *headers: str) -> bytes:
    body = json.dumps({"error": {"code": "unavailable", "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionGuard:
    """A protocol factory for the management port's listener: ``factory`` makes aiohttp's
    protocol for each connection; the guard caps how many are open at once and how long each
    may take to send its first request's head."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        header_timeout_s: float,
        name: str = "the management port",
    ) -> None:
        self._factory = factory
        self.name = name
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        # aiohttp's protocol of each open connection -> its guard
        self._open: dict[object, _Guarded] = {}
        self.refused = 0  # connections refused over the cap
        self.timed_out = 0  # connections closed for a late request head
        self._full = _response(
            "503 Service Unavailable",
            f"{name} holds its maximum of {max_connections} connections; try again later",
            "Retry-After: 1",
        )
        self._late = _response(
            "408 Request Timeout",
            f"no complete request head within {header_timeout_s:g} s",
        )

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def head_received(self, protocol: object) -> None:
        """A request on the connection of ``protocol`` (aiohttp's) reached the application: its
        head came in time."""
        guarded = self._open.get(protocol)
        if guarded is not None:
            guarded.stop_timer()


class _Guarded(asyncio.Protocol):
    """One connection: admitted or refused, its head timer, and aiohttp's protocol behind."""

    __slots__ = ("_admitted", "_guard", "_inner", "_timer", "_transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport
        self._transport = transport
        guard = self._guard
        if len(guard._open) >= guard.max_connections:
            guard.refused += 1
            if guard.refused == 1 or guard.refused % 1000 == 0:
                log.warning(
                    "%s: %d connections refused, over max_connections %d",
                    guard.name,
                    guard.refused,
                    guard.max_connections,
                )
            transport.write(guard._full)
            transport.close()
            return
        self._admitted = True
        guard._open[self._inner] = self
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard.header_timeout_s, self._head_late)
        self._inner.connection_made(transport)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        self._guard.timed_out += 1
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._guard._late)
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_timer()
        self._transport = None
        if self._admitted:
            self._admitted = False
            self._guard._open.pop(self._inner, None)
            self._inner.connection_lost(exc)


class GuardCollector:
    """The guard's counts as metrics, read at scrape time."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Any]:
        guard = self._guard
        yield GaugeMetricFamily(
            "chatserver_management_connections",
            "Open connections to the management port",
            value=guard.open_connections,
        )
        closed = CounterMetricFamily(
            "chatserver_management_connections_refused",
            "Management connections refused (full: over max_connections) or closed before"
            " their first request (head_timeout: no request head within header_timeout_s)",
            labels=["reason"],
        )
        closed.add_metric(["full"], guard.refused)
        closed.add_metric(["head_timeout"], guard.timed_out)
        yield closed
