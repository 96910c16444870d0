"""How long the cyclic collector stops a process that keeps what it makes (a join storm).

    python -m loadtest.gc_pauses 50000,20,20
    python -m loadtest.gc_pauses 50000,2,20

Makes one million small objects that all stay alive (three GC-tracked objects each, like a
subscription and its parts) under the given ``gc.set_threshold`` values, after ``gc.freeze()``
as ``chatserver run`` does, and prints the collections of each generation with their longest
and total pause. Generation 1 holds up to threshold[0] times threshold[1] survivors when it is
collected, so its pause grows with threshold[1].
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any


class Subscription:
    __slots__ = ("room", "seq", "session")

    def __init__(self, session: dict[str, int], room: list[int]) -> None:
        self.session = session
        self.room = room
        self.seq = 0


def main(thresholds: str) -> None:
    gc.freeze()
    gc.set_threshold(*(int(x) for x in thresholds.split(",")))
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def observe(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(observe)
    kept = []
    begin = time.perf_counter()
    for i in range(1_000_000):
        kept.append(Subscription({"i": i}, [i]))
    wall = time.perf_counter() - begin
    gc.callbacks.remove(observe)
    for generation, values in pauses.items():
        print(
            f"thresholds {thresholds}: generation {generation}: {len(values)} collections,"
            f" longest {max(values, default=0) * 1000:.0f} ms, total {sum(values) * 1000:.0f} ms"
        )
    print(f"  {len(kept):,} objects kept in {wall:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "50000,2,20")
