"""Topic feeds as Prometheus metrics, read at scrape time (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .rooms.feeds import Feeds


class FeedsCollector:
    def __init__(self, feeds: Feeds) -> None:
        self._feeds = feeds

    def collect(self) -> Iterator[Any]:
        feeds = self._feeds
        yield GaugeMetricFamily(
            "chatserver_feeds_indexed", "Saved feeds of the users connected here", len(feeds.index)
        )
        yield CounterMetricFamily(
            "chatserver_feed_hits", "Feed hits sent (once per message and feed)", feeds.delivered
        )
        yield CounterMetricFamily(
            "chatserver_feed_hits_refused",
            "Candidate feed hits in rooms the feed's user may not read now",
            feeds.refused,
        )
        yield CounterMetricFamily(
            "chatserver_feed_hits_dropped",
            "Candidate feed hits dropped: too many waiting for their check",
            feeds.dropped,
        )
