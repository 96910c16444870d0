"""The node's Prometheus metrics (served on the management port at ``/metrics``).

Each node has its own :class:`Metrics` and ``CollectorRegistry`` (tests run several nodes in one
process). Counters that the hot path already keeps (deliveries, connections, the writer's
queue) are read at scrape time by a collector instead of being counted twice; events that
nothing else counts (posts rejected by reason, batch sizes and latencies) are counted here.
Every label has a small fixed set of values.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .latency import LatencyHistogram

if TYPE_CHECKING:
    from collections import Counter

    from .rooms.hub import Hub
    from .rooms.unread import Unread
    from .rooms.writer import Writer


class ConnectionCounts(Protocol):
    """What the collector reads of the node's connections (``transport.Connections``)."""

    by_transport: Counter[str]
    authenticated_users: int
    refused: Counter[str]  # connections refused or closed by a limit, by bye reason
    buffered_input: int  # bytes held for frames not yet complete


# No ``*_created`` series: scrapers do not need them and they double the output.
disable_created_metrics()  # type: ignore[no-untyped-call]

log = logging.getLogger("chatserver.metrics")

# A collection at least this long is logged: peers close a link silent for link_timeout_s.
GC_PAUSE_WARNING_S = 1.0

# The reasons a post can be refused; anything else is counted as "other".
REJECT_REASONS = frozenset(
    {
        "rate_limited",
        "forbidden",
        "not_found",
        "too_large",
        "bad_request",
        "unavailable",
        "internal",
    }
)

# Where a sign-in came from (the login throttle's metrics) and what a lockout locked.
SIGN_IN_VIAS = ("tcp", "websocket", "management")
LOCKOUT_SCOPES = ("account", "address")
# Why a connection was refused or closed by a limit (transport/connections.py, connection.py).
LIMIT_REASONS = ("too_many_connections", "overloaded", "frame_timeout", "shutting_down")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Per-post counts are plain integers (the node is one thread; prometheus_client's
        # counters take a lock on every increment), read by the collector at scrape time.
        self.posts_received = 0
        self.posts_rejected: dict[str, int] = dict.fromkeys(sorted(REJECT_REASONS | {"other"}), 0)
        self.rate_limited = 0
        self.resyncs = 0  # resync events sent to clients
        self.request_errors = 0  # requests that failed with an unexpected exception
        # Sign-ins (the login throttle, chatserver/throttle.py): failed, refused while
        # throttled, and lockouts begun.
        self.sign_in_failures: dict[str, int] = dict.fromkeys((*SIGN_IN_VIAS, "other"), 0)
        self.sign_ins_throttled: dict[str, int] = dict.fromkeys((*SIGN_IN_VIAS, "other"), 0)
        self.sign_in_lockouts: dict[str, int] = dict.fromkeys(LOCKOUT_SCOPES, 0)
        # From a post's arrival to its acknowledgement (stored, or refused after queueing).
        self.post_ack = LatencyHistogram()
        # Search requests, from the request to the page of hits (or the error).
        self.search_latency = LatencyHistogram()
        self.batch_size = Histogram(
            "chatserver_group_commit_batch_size",
            "Posts stored per group-commit transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "chatserver_group_commit_seconds",
            "Duration of each group-commit transaction",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.loop_lag = Gauge(
            "chatserver_event_loop_lag_seconds",
            "How late the event loop ran a timer, sampled every half second",
            registry=r,
        )
        self._lag_task: asyncio.Task[None] | None = None
        self.gc_pause = Histogram(
            "chatserver_gc_pause_seconds",
            "Duration of each cyclic garbage collection (the event loop stands still meanwhile)",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self._gc_started = 0.0

    def attach(self, connections: ConnectionCounts, hub: Hub, writer: Writer) -> None:
        """Read these at scrape time (the counts they keep anyway)."""
        self.registry.register(_NodeCollector(self, connections, hub, writer))

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def post_rejected(self, code: str) -> None:
        self.posts_rejected[code if code in REJECT_REASONS else "other"] += 1
        if code == "rate_limited":
            self.rate_limited += 1

    def sign_in_failed(self, via: str) -> None:
        self.sign_in_failures[via if via in SIGN_IN_VIAS else "other"] += 1

    def sign_in_throttled(self, via: str) -> None:
        self.sign_ins_throttled[via if via in SIGN_IN_VIAS else "other"] += 1

    def sign_in_locked(self, scope: str) -> None:
        if scope in self.sign_in_lockouts:
            self.sign_in_lockouts[scope] += 1

    # -- event-loop lag ---------------------------------------------------------------------

    def start(self) -> None:
        self._lag_task = asyncio.get_running_loop().create_task(self._sample_lag())
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        generation = info.get("generation", 2)
        self.gc_pause.labels(str(generation)).observe(pause)
        if pause >= GC_PAUSE_WARNING_S:
            log.warning(
                "garbage collection of generation %d stopped the node for %.1f s (%d objects"
                " collected)",
                generation,
                pause,
                info.get("collected", 0),
            )

    async def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._lag_task is not None:
            self._lag_task.cancel()
            try:
                await self._lag_task
            except asyncio.CancelledError:
                pass

    async def _sample_lag(self, interval: float = 0.5) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval)
            self.loop_lag.set(max(0.0, time.perf_counter() - started - interval))


class _NodeCollector(Collector):
    """Reads, at scrape time, the counts the node keeps anyway."""

    def __init__(
        self, metrics: Metrics, connections: ConnectionCounts, hub: Hub, writer: Writer
    ) -> None:
        self.metrics = metrics
        self.connections = connections
        self.hub = hub
        self.writer = writer

    def collect(self) -> Iterator[Any]:
        state = self.connections
        m = self.metrics
        yield CounterMetricFamily(
            "chatserver_posts_received", "Posts received from clients", value=m.posts_received
        )
        rejected = CounterMetricFamily(
            "chatserver_posts_rejected",
            "Posts refused, by reason (the error code)",
            labels=["reason"],
        )
        for reason, count in m.posts_rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "chatserver_rate_limited_requests",
            "Requests refused by the per-user rate limit",
            value=m.rate_limited,
        )
        for name, help_text, counts, label in (
            (
                "chatserver_sign_in_failures",
                "Failed sign-ins (wrong name or password, unknown token), by where they came from",
                m.sign_in_failures,
                "via",
            ),
            (
                "chatserver_sign_ins_throttled",
                "Sign-ins refused with rate_limited by the login throttle",
                m.sign_ins_throttled,
                "via",
            ),
            (
                "chatserver_sign_in_lockouts",
                "Lockouts begun by the login throttle, of an account name or a source address",
                m.sign_in_lockouts,
                "scope",
            ),
        ):
            family = CounterMetricFamily(name, help_text, labels=[label])
            for value, count in counts.items():
                family.add_metric([value], count)
            yield family
        connections = GaugeMetricFamily(
            "chatserver_connections", "Open client connections by transport", labels=["transport"]
        )
        for transport in ("tcp", "websocket"):
            connections.add_metric([transport], state.by_transport.get(transport, 0))
        yield connections
        yield GaugeMetricFamily(
            "chatserver_authenticated_users",
            "Connections that completed authentication",
            value=state.authenticated_users,
        )
        refused = CounterMetricFamily(
            "chatserver_connections_refused",
            "Client connections refused or closed by a limit, by bye reason",
            labels=["reason"],
        )
        for reason in LIMIT_REASONS:
            refused.add_metric([reason], state.refused.get(reason, 0))
        yield refused
        yield GaugeMetricFamily(
            "chatserver_input_buffered_bytes",
            "Bytes held for client frames not yet complete, on all connections",
            value=state.buffered_input,
        )
        hub = self.hub
        yield GaugeMetricFamily(
            "chatserver_joined_rooms",
            "Live room subscriptions (a connection joined to a room)",
            value=hub.subscription_count(),
        )
        yield CounterMetricFamily(
            "chatserver_deliveries", "Messages written to subscribers", value=hub.delivered
        )
        yield m.post_ack.family(
            "chatserver_post_ack_seconds",
            "From a post's arrival to its acknowledgement (group commit included)",
        )
        yield hub.delivery_latency.family(
            "chatserver_delivery_latency_seconds",
            "From a message's commit (its timestamp, on whichever node stored it) to its delivery"
            " to this node's subscribers; once per message",
        )
        yield m.search_latency.family(
            "chatserver_search_seconds", "Search requests, from the request to the page of hits"
        )
        yield CounterMetricFamily(
            "chatserver_resyncs", "resync events sent to clients", value=m.resyncs
        )
        writer = self.writer
        errors = CounterMetricFamily(
            "chatserver_store_errors",
            "Store operations that failed: group-commit transactions, and requests that failed"
            " inside the server",
            labels=["operation"],
        )
        errors.add_metric(["group_commit"], writer.failed_batches)
        errors.add_metric(["request"], m.request_errors)
        yield errors
        yield CounterMetricFamily(
            "chatserver_posts_stored", "Posts stored (new messages committed)", value=writer.stored
        )
        yield GaugeMetricFamily(
            "chatserver_posts_pending", "Posts waiting for group commit", value=writer.pending
        )


class UnreadCollector:
    """Read markers and mentions as metrics, read at scrape time."""

    def __init__(self, unread: Unread) -> None:
        self._unread = unread

    def collect(self) -> Iterator[Any]:
        unread = self._unread
        yield CounterMetricFamily(
            "chatserver_read_marker_writes",
            "Transactions that wrote pending read markers (at most one per flush interval)",
            value=unread.writes,
        )
        yield CounterMetricFamily(
            "chatserver_read_markers_written",
            "Read markers written (user and room pairs, coalesced)",
            value=unread.markers_written,
        )
        yield GaugeMetricFamily(
            "chatserver_read_markers_pending", "Read markers waiting to be written", unread.pending
        )
        yield CounterMetricFamily(
            "chatserver_mentions_delivered",
            "Mentioned users sent a mention event on this node",
            value=unread.mentions_delivered,
        )
