"""The parent's side of the worker processes: spawn, command phase by phase, merge, show progress.

Users are spread over ``workers`` processes (each may hold up to its open-files limit, 20,000
here, minus a margin) and over ``sources`` 127.0.0.x source addresses (about 28,000 local ports per
source and destination).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

from . import work
from .stack import ProcStats
from .stats import Phase

MAX_CONNECTIONS_PER_WORKER = 19_000


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


class Workers:
    def __init__(
        self,
        users: list[dict[str, Any]],
        *,
        workers: int,
        sources: int = 4,
        text_bytes: int = 100,
        progress: bool = True,
    ) -> None:
        workers = max(workers, -(-len(users) // MAX_CONNECTIONS_PER_WORKER), 1)
        self.count = workers
        self.progress = (progress and sys.stderr.isatty()) or os.environ.get(
            "LOADTEST_PROGRESS"
        ) == "1"
        ctx = multiprocessing.get_context("spawn")
        self.out: Any = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(workers)]
        self.procs = []
        for i, share in enumerate(split(users, workers)):
            cfg = {
                "users": share,
                "source": f"127.0.0.{2 + i % max(1, sources)}",
                "text_bytes": text_bytes,
            }
            proc = ctx.Process(target=work.main, args=(i, cfg, self.commands[i], self.out))
            proc.start()
            self.procs.append(proc)
        self.connected = 0
        self.node_stats: ProcStats | None = None
        self.postgres_stats: ProcStats | None = None
        self.generator_stats = ProcStats([p.pid for p in self.procs])
        self.phases: list[Phase] = []
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._stop_reader = False

        def reader() -> None:
            while not self._stop_reader:
                try:
                    item = self.out.get(timeout=0.2)
                except Exception:
                    continue
                loop.call_soon_threadsafe(self._inbox.put_nowait, item)

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()

    async def phase(
        self,
        name: str,
        cmd: dict[str, Any],
        *,
        per_worker: list[dict[str, Any]] | None = None,
        main_counter: str = "acked",
        latency: str = "ack",
    ) -> Phase:
        """Send ``cmd`` to every worker; gather their snapshots until all are done."""
        phase = Phase(name, cmd, time.monotonic())
        node = self.node_stats
        cpu0 = node.cpu_s() if node else 0.0
        wait0 = node.runqueue_wait_s() if node else 0.0
        rss0 = node.rss_kib() if node else 0
        load0 = os.getloadavg()
        others = {"generator": self.generator_stats, "postgres": self.postgres_stats}
        others_cpu0 = {k: v.cpu_s() for k, v in others.items() if v is not None}
        for i, q in enumerate(self.commands):
            q.put({**cmd, **(per_worker[i] if per_worker else {})})
        done: dict[int, dict[str, Any]] = {}
        last_print = time.monotonic()
        last_count = 0
        cpu_series = []
        last_cpu, last_t = cpu0, time.monotonic()
        while len(done) < self.count:
            try:
                item = await asyncio.wait_for(self._inbox.get(), 1.0)
            except TimeoutError:
                item = None
            if item is not None:
                kind, index, payload = item[0], item[1], item[-1]
                if kind == "snap":
                    phase.add(item[2], payload)
                    counters = payload["counters"]
                    self.connected += counters.get("connected", 0) - counters.get("disconnected", 0)
                elif kind == "done":
                    done[index] = payload
            now = time.monotonic()
            if now - last_print >= 1.0:
                if node:
                    cpu = node.cpu_s()
                    cpu_series.append(
                        {
                            "t": round(now - phase.start, 1),
                            "node_cpu_pct": round(100 * (cpu - last_cpu) / (now - last_t), 1),
                            "node_rss_kib": node.rss_kib(),
                        }
                    )
                    last_cpu, last_t = cpu, now
                count = phase.totals.get(main_counter, 0)
                rate = (count - last_count) / (now - last_print)
                p99 = phase.p99_so_far(latency)
                if self.progress:
                    print(
                        f"\r[{name}] {now - phase.start:5.1f}s  users {self.connected:>6}  "
                        f"{main_counter} {rate:>10,.0f}/s  p99 {latency} "
                        + (f"{p99:8.2f} ms" if p99 is not None else "       -   ")
                        + (
                            f"  node cpu {cpu_series[-1]['node_cpu_pct']:5.1f}%"
                            if cpu_series
                            else ""
                        ),
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
                last_print, last_count = now, count
        # The final snapshots are sent before "done"; drain what is already queued.
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item[0] == "snap":
                phase.add(item[2], item[-1])
                counters = item[-1]["counters"]
                self.connected += counters.get("connected", 0) - counters.get("disconnected", 0)
        if self.progress:
            print(file=sys.stderr)
        phase.end = time.monotonic()
        phase.extra["workers"] = done
        phase.extra["loadavg_before"] = [round(x, 2) for x in load0]
        phase.extra["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        elapsed = phase.end - phase.start
        phase.extra["cpu_pct"] = {
            k: round(100 * (others[k].cpu_s() - c0) / max(elapsed, 1e-9), 1)  # type: ignore[union-attr]
            for k, c0 in others_cpu0.items()
        }
        if node:
            phase.extra["node"] = {
                "cpu_s": round(node.cpu_s() - cpu0, 3),
                "cpu_pct": round(100 * (node.cpu_s() - cpu0) / max(elapsed, 1e-9), 1),
                "runqueue_wait_pct": round(
                    100 * (node.runqueue_wait_s() - wait0) / max(elapsed, 1e-9), 1
                ),
                "rss_kib_before": rss0,
                "rss_kib_after": node.rss_kib(),
                "series": cpu_series,
            }
        self.phases.append(phase)
        return phase

    async def stop(self) -> None:
        for q in self.commands:
            q.put({"op": "stop"})
        loop = asyncio.get_running_loop()
        for proc in self.procs:
            await loop.run_in_executor(None, proc.join, 15)
            if proc.is_alive():
                proc.kill()
        self._stop_reader = True
