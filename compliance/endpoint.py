"""The compliance writer's own HTTP endpoint (``chatserver compliance run --metrics HOST:PORT``):
``/metrics`` for Prometheus and ``/healthz`` for a container's health check.

``/metrics`` serves the writer's counts (:class:`WriterStats`: events claimed and stored, exports,
failed rounds) and the same compliance series a node serves (:class:`ComplianceMetrics`: outbox
depth and lag, events stored and exported, each adapter's export lag), refreshed before each
scrape. ``/healthz`` answers 200 while the writer's last round succeeded and is recent (it
polls every ``poll_s``), else 503. Neither needs credentials: the endpoint shows counts and ages,
no content; bind it where only the scraper reaches (compose: the internal network).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatserver.config import Config, parse_address
from chatserver.store.db import Database

from .metrics import TIMEOUT_S, ComplianceMetrics

# A round older than this many poll intervals (plus the longest pause between retries, 30 s)
# makes /healthz fail: the writer is stuck.
STALE_ROUNDS = 10


@dataclass(slots=True)
class WriterStats:
    """What the writer loop counts (compliance/writer.py ``run``)."""

    claimed: int = 0  # outbox rows taken
    stored: int = 0  # new events appended to the compliance database
    exports: int = 0  # adapter runs that succeeded
    failures: int = 0  # rounds that failed (a database unreachable), retried
    last_ok: float = 0.0  # time.monotonic() of the last round that succeeded (0: none yet)
    failing: bool = False  # the last round failed


class WriterCollector(Collector):
    def __init__(self, stats: WriterStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        for name, text, value in (
            (
                "chatserver_compliance_writer_claimed",
                "Outbox events claimed by the writer",
                s.claimed,
            ),
            (
                "chatserver_compliance_writer_stored",
                "Events the writer appended to the compliance database (new ones)",
                s.stored,
            ),
            ("chatserver_compliance_writer_exports", "Adapter runs that succeeded", s.exports),
            (
                "chatserver_compliance_writer_failures",
                "Writer rounds that failed (a database could not be used) and were retried",
                s.failures,
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "chatserver_compliance_writer_up",
            "1 while the writer's last round succeeded",
            value=0 if s.failing or not s.last_ok else 1,
        )


class WriterEndpoint:
    """``/metrics`` and ``/healthz`` of one writer process."""

    def __init__(self, config: Config, stats: WriterStats, poll_s: float) -> None:
        self._config = config
        self._stats = stats
        self._stale_s = STALE_ROUNDS * poll_s + 30.0
        self._content = Database(config.database.url, pool_size=1, timeout_s=TIMEOUT_S)
        self.compliance = ComplianceMetrics(config, self._content)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(WriterCollector(stats))
        self.registry.register(self.compliance)
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] = ("", 0)
        self._refresh = asyncio.Lock()

    async def start(self, listen: str) -> tuple[str, int]:
        host, port = parse_address(listen)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.compliance.close()
        await self._content.close()

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        async with self._refresh:  # concurrent scrapes share one refresh at a time
            await self.compliance.refresh()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        s = self._stats
        age = time.monotonic() - s.last_ok if s.last_ok else None
        ok = age is not None and age <= self._stale_s and not s.failing
        return web.json_response(
            {"alive": ok, "last_round_age_s": None if age is None else round(age, 1)},
            status=200 if ok else 503,
        )
