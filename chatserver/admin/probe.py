"""``/readyz``'s view of the store: a probe in the background, answered from its last result.

A readiness check that asked the store itself would take as long as the store takes to fail
(seconds, during a network cut); the probe asks every ``interval_s`` instead, and ``/readyz``
answers at once from what it last learned. A result older than ``stale_s`` (the probe is stuck
waiting for the store) counts as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..store.db import Database
from ..store.health import describe
from ..store.migrate import SchemaError, check_schema

log = logging.getLogger("chatserver.admin")

PROBE_INTERVAL_S = 1.0
PROBE_STALE_S = 3.0


class StoreProbe:
    def __init__(
        self,
        db: Database,
        *,
        interval_s: float = PROBE_INTERVAL_S,
        stale_s: float = PROBE_STALE_S,
    ) -> None:
        self._db = db
        self._interval_s = interval_s
        self._stale_s = stale_s
        self._result = "unreachable: not probed yet"
        self._finished = 0.0  # monotonic time of the last result
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._probe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="store-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def state(self) -> str:
        """``ok``, or why the store is not ready."""
        age = time.monotonic() - self._finished
        if age > self._stale_s:
            return f"unreachable: no answer for {age:.1f} s"
        return self._result

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._probe()

    async def _probe(self) -> None:
        try:
            await check_schema(self._db)
            result = "ok"
        except SchemaError as exc:
            result = f"not migrated: {exc}"
        except Exception as exc:  # unreachable, timed out, …
            result = f"unreachable: {describe(exc)}"
        self._result = result
        self._finished = time.monotonic()
