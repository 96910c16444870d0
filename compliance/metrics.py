"""Compliance metrics for the node's ``/metrics`` (a prometheus_client collector).

The management port registers one :class:`ComplianceMetrics` and awaits :meth:`refresh` right
before each scrape; :meth:`collect` then reports what the refresh read:

- ``chatserver_compliance_enabled`` — 1 when this node captures events;
- ``chatserver_compliance_outbox_depth`` — events waiting in the content store's outbox;
- ``chatserver_compliance_lag_seconds`` — age of the oldest waiting event: how far the
  compliance database is behind capture (0 when the outbox is empty);
- ``chatserver_compliance_database_up`` — 1 when the last refresh could read the compliance
  database;
- ``chatserver_compliance_events_stored_total{kind}`` and
  ``chatserver_compliance_events_exported_total{kind}`` — events in the compliance database and
  events written out by the adapter, by event type;
- ``chatserver_compliance_last_export_timestamp_seconds`` — the last successful export (0: never);
- ``chatserver_compliance_export_pending_events{adapter}`` — events stored but not yet exported
  by each adapter;
- ``chatserver_compliance_export_lag_seconds{adapter}`` — age (capture time) of the oldest event
  each adapter has not exported yet: how far its output is behind (0 when it has them all).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from chatserver.config import Config
from chatserver.store.db import Database, dialect_of, now_ms, sqlite_path
from chatserver.store.health import describe
from chatserver.store.schema import compliance_outbox

from .schema import chain, counts, cursors, events

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0


class ComplianceMetrics(Collector):
    def __init__(self, config: Config, content_db: Database) -> None:
        self._config = config
        self._content = content_db
        self._comp: Database | None = None
        self.outbox_depth = 0
        self.lag_s = 0.0
        self.database_up = False
        self.stored: dict[str, int] = {}
        self.exported: dict[str, int] = {}
        self.last_export_ms = 0
        self.export_pending: dict[str, int] = {}
        self.export_lag_s: dict[str, float] = {}
        self._outbox_failing = False
        self._comp_tried = False

    async def refresh(self) -> None:
        """Read the outbox and the compliance database; a failure leaves the last values and,
        for the compliance database, sets ``database_up`` to 0. Logged once per change of
        state, not once per scrape."""
        try:
            await asyncio.wait_for(self._refresh_outbox(), TIMEOUT_S)
        except Exception as exc:
            if not self._outbox_failing:
                log.warning("compliance metrics: cannot read the outbox: %s", describe(exc))
            self._outbox_failing = True
        else:
            if self._outbox_failing:
                log.warning("compliance metrics: the outbox is read again")
            self._outbox_failing = False
        was_up = self.database_up
        try:
            await asyncio.wait_for(self._refresh_compliance(), TIMEOUT_S)
            self.database_up = True
        except Exception as exc:
            self.database_up = False
            if self._config.compliance.enabled and (was_up or not self._comp_tried):
                log.warning(
                    "compliance metrics: cannot read the compliance database: %s", describe(exc)
                )
        else:
            if not was_up and self._comp_tried and self._config.compliance.enabled:
                log.warning("compliance metrics: the compliance database is read again")
        self._comp_tried = True

    async def _refresh_outbox(self) -> None:
        async with self._content.read() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.min(compliance_outbox.c.ts_ms)).select_from(
                        compliance_outbox
                    )
                )
            ).one()
        self.outbox_depth = int(row[0])
        self.lag_s = max(0.0, (now_ms() - row[1]) / 1000) if row[1] is not None else 0.0

    async def _refresh_compliance(self) -> None:
        url = self._config.compliance.database_url
        if self._comp is None:
            path = sqlite_path(url) if dialect_of(url) == "sqlite" else None
            if path is not None and not path.exists():
                raise FileNotFoundError(f"{path} does not exist (no writer has run yet)")
            # Each use bounded (its connection dropped, not a cancel waiting on a dead network).
            self._comp = Database(url, pool_size=1, timeout_s=TIMEOUT_S)
        async with self._comp.read() as conn:
            rows = list(await conn.execute(select(counts)))
            adapters = list(await conn.execute(select(cursors)))
            head = (
                await conn.execute(select(chain.c.head_seq).where(chain.c.id == 1))
            ).scalar_one_or_none()
            oldest: dict[str, int | None] = {}
            for a in adapters:  # one row per adapter: the first event after its cursor
                oldest[a.adapter] = (
                    await conn.execute(select(events.c.ts_ms).where(events.c.seq == a.last_seq + 1))
                ).scalar_one_or_none()
        self.stored = {r.kind: int(r.stored) for r in rows}
        self.exported = {r.kind: int(r.exported) for r in rows}
        now = now_ms()
        self.export_pending = {
            a.adapter: max(0, int(head or 0) - int(a.last_seq)) for a in adapters
        }
        self.export_lag_s = {
            name: max(0.0, (now - ts) / 1000) if ts is not None else 0.0
            for name, ts in oldest.items()
        }
        mine = [a for a in adapters if a.adapter == self._config.compliance.adapter]
        self.last_export_ms = int(mine[0].updated_ms) if mine else 0

    async def close(self) -> None:
        if self._comp is not None:
            await self._comp.close()
            self._comp = None

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "chatserver_compliance_enabled",
            "1 when this node captures compliance events",
            value=1 if self._config.compliance.enabled else 0,
        )
        yield GaugeMetricFamily(
            "chatserver_compliance_outbox_depth",
            "Compliance events waiting in the content store's outbox",
            value=self.outbox_depth,
        )
        yield GaugeMetricFamily(
            "chatserver_compliance_lag_seconds",
            "Age of the oldest event waiting in the outbox (capture-to-store lag)",
            value=self.lag_s,
        )
        yield GaugeMetricFamily(
            "chatserver_compliance_database_up",
            "1 when the last refresh could read the compliance database",
            value=1 if self.database_up else 0,
        )
        stored = CounterMetricFamily(
            "chatserver_compliance_events_stored",
            "Events stored in the compliance database, by type",
            labels=["kind"],
        )
        for kind, n in sorted(self.stored.items()):
            stored.add_metric([kind], n)
        yield stored
        exported = CounterMetricFamily(
            "chatserver_compliance_events_exported",
            "Events written out by the compliance adapter, by type",
            labels=["kind"],
        )
        for kind, n in sorted(self.exported.items()):
            exported.add_metric([kind], n)
        yield exported
        yield GaugeMetricFamily(
            "chatserver_compliance_last_export_timestamp_seconds",
            "When the adapter last exported successfully (0: never)",
            value=self.last_export_ms / 1000,
        )
        pending = GaugeMetricFamily(
            "chatserver_compliance_export_pending_events",
            "Events in the compliance database the adapter has not exported yet",
            labels=["adapter"],
        )
        lag = GaugeMetricFamily(
            "chatserver_compliance_export_lag_seconds",
            "Age of the oldest event the adapter has not exported yet (0: none waiting)",
            labels=["adapter"],
        )
        for name in sorted(self.export_pending):
            pending.add_metric([name], self.export_pending[name])
            lag.add_metric([name], self.export_lag_s.get(name, 0.0))
        yield pending
        yield lag
