"""The pool's Prometheus series, read at scrape time (bounded labels: event types, states, peer
names from the registry, handshake refusal reasons)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..rooms.hub import Hub
from .catchup import CatchUp
from .link import PeerLink, PeerPublisher
from .registry import ACTIVE, DRAINING, STANDBY, NodeRow
from .trust import Refusals


class Pool(Protocol):
    """What the collector reads of :class:`chatserver.pool.node.Pool`."""

    @property
    def name(self) -> str: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def state(self) -> str: ...

    @property
    def nodes(self) -> Sequence[NodeRow]: ...

    @property
    def links(self) -> Mapping[str, PeerLink]: ...

    @property
    def publisher(self) -> PeerPublisher: ...

    @property
    def catch_up(self) -> CatchUp: ...

    @property
    def refusals(self) -> Refusals: ...

    @property
    def frames_received(self) -> Mapping[str, int]: ...

    @property
    def events_by_type(self) -> Mapping[str, int]: ...


class PoolCollector:
    """Prometheus series of the pool, read at scrape time (bounded labels: event types, states)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        links = GaugeMetricFamily("chatserver_pool_links", "Open peer links")
        links.add_metric([], len(pool.links))
        yield links
        peers = GaugeMetricFamily(
            "chatserver_pool_peer_link_up",
            "1 while the peer link to a registered node is open, else 0",
            labels=["peer"],
        )
        for row in pool.nodes:  # names come from the registry (at most a few dozen)
            if row.name != pool.name:
                peers.add_metric([row.name], 1.0 if row.name in pool.links else 0.0)
        yield peers
        refused = CounterMetricFamily(
            "chatserver_pool_handshakes_refused",
            "Peer handshakes refused or failed (either side), by reason",
            labels=["reason"],
        )
        for reason, count in pool.refusals.counts.items():
            refused.add_metric([reason], count)
        yield refused
        contradicted = CounterMetricFamily(
            "chatserver_pool_events_contradicted",
            "Peers' message events and edits the store contradicted (dropped or corrected)",
        )
        contradicted.add_metric([], pool.hub.contradicted)
        yield contradicted
        state = GaugeMetricFamily("chatserver_pool_state", "This node's state", labels=["state"])
        for name in (ACTIVE, STANDBY, DRAINING):
            state.add_metric([name], 1.0 if pool.state == name else 0.0)
        yield state
        sent = CounterMetricFamily("chatserver_pool_frames_sent", "EVENTS frames sent to peers")
        sent.add_metric([], pool.publisher.frames_sent)
        yield sent
        frames = CounterMetricFamily(
            "chatserver_pool_frames_received", "Frames received from peers", labels=["command"]
        )
        for name, count in sorted(pool.frames_received.items()):
            frames.add_metric([name], count)
        yield frames
        events = CounterMetricFamily(
            "chatserver_pool_events_received", "Events received from peers", labels=["type"]
        )
        for name, count in pool.events_by_type.items():
            events.add_metric([name], count)
        yield events
        caught = CounterMetricFamily(
            "chatserver_pool_caught_up_messages", "Messages delivered from the store by catch-up"
        )
        caught.add_metric([], pool.catch_up.caught_up)
        yield caught
        polls = CounterMetricFamily(
            "chatserver_pool_catch_up_polls",
            "Catch-up polls of the store (while a peer link is down, after one was lost, and"
            " every few intervals otherwise)",
        )
        polls.add_metric([], pool.catch_up.polls)
        yield polls
