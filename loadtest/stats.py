"""Counters and HdrHistogram latencies: recorded in the workers, merged in the parent.

A worker's :class:`Recorder` is snapshotted (and reset) once a second; the snapshot crosses the
process boundary as plain counters and encoded histograms. The parent's :class:`Series` keeps
per-second buckets per phase (for the plots) and a cumulative histogram per phase (for the
p50/p99/p99.9/max in the report).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000  # two minutes
DIGITS = 3


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class Recorder:
    """Counters and latency histograms (microseconds) of one worker process."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = defaultdict(int)
        self.hists: dict[str, HdrHistogram] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def record_us(self, name: str, value: float) -> None:
        hist = self.hists.get(name)
        if hist is None:
            hist = self.hists[name] = histogram()
        hist.record_value(min(max(int(value), LOWEST_US), HIGHEST_US))

    def snapshot(self) -> dict[str, Any]:
        snap = {
            "counters": dict(self.counters),
            "hists": {name: h.encode() for name, h in self.hists.items() if h.get_total_count()},
        }
        self.counters = defaultdict(int)
        self.hists = {}
        return snap


def summary(hist: HdrHistogram) -> dict[str, float]:
    """Percentiles in milliseconds."""
    if not hist.get_total_count():
        return {"count": 0}
    return {
        "count": hist.get_total_count(),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p99_9_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "mean_ms": round(hist.get_mean_value() / 1000, 3),
    }


class Phase:
    """Everything the workers reported during one phase."""

    def __init__(self, name: str, params: dict[str, Any], start: float) -> None:
        self.name = name
        self.params = params
        self.start = start
        self.end = start
        self.totals: dict[str, int] = defaultdict(int)
        self.hists: dict[str, HdrHistogram] = {}
        self.seconds: dict[int, dict[str, Any]] = {}  # second → {"counters", "hists"}
        self.extra: dict[str, Any] = {}

    def add(self, t: float, snap: dict[str, Any]) -> None:
        second = max(0, int(t - self.start))
        bucket = self.seconds.setdefault(second, {"counters": defaultdict(int), "hists": {}})
        for name, n in snap["counters"].items():
            self.totals[name] += n
            bucket["counters"][name] += n
        for name, encoded in snap["hists"].items():
            h = HdrHistogram.decode(encoded)
            for target in (self.hists, bucket["hists"]):
                if name not in target:
                    target[name] = histogram()
                target[name].add(h)

    def p99_so_far(self, name: str) -> float | None:
        h = self.hists.get(name)
        if h is None or not h.get_total_count():
            return None
        return float(h.get_value_at_percentile(99) / 1000)

    def result(self) -> dict[str, Any]:
        duration = max(self.end - self.start, 1e-9)
        timeline = []
        for second in sorted(self.seconds):
            bucket = self.seconds[second]
            row: dict[str, Any] = {"t": second, **bucket["counters"]}
            for name, h in bucket["hists"].items():
                row[f"{name}_p50_ms"] = h.get_value_at_percentile(50) / 1000
                row[f"{name}_p99_ms"] = h.get_value_at_percentile(99) / 1000
            timeline.append(row)
        return {
            "name": self.name,
            "params": self.params,
            "duration_s": round(duration, 3),
            "totals": dict(self.totals),
            "rates_per_s": {k: round(v / duration, 1) for k, v in self.totals.items()},
            "latency": {name: summary(h) for name, h in self.hists.items()},
            "timeline": timeline,
            **self.extra,
        }
