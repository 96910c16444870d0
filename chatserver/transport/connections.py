"""The open client connections of a node: counts, admission while stopping, and the shared
end-of-turn flush.

Output batching: everything queued for a connection during one event-loop turn goes out in one
``transport.write``; :meth:`Connections.schedule_flush` flushes every connection written to in a
turn from one ``call_soon`` callback, so a message fanned out to 1,000 subscribers schedules one
callback, not 1,000.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

from ..config import LimitsConfig

if TYPE_CHECKING:
    from .connection import Connection


class Connections:
    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.open: set[Connection] = set()
        self.by_transport: Counter[str] = Counter()
        self.authenticated_users = 0
        self.accepting = True
        self._dirty: list[Connection] = []
        self._flush_scheduled = False

    def schedule_flush(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this loop turn, with every other connection written to."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def opened(self, conn: Connection) -> None:
        if not self.accepting:
            conn.close("shutting_down")
            return
        self.open.add(conn)
        self.by_transport[conn.transport_name] += 1

    def closed(self, conn: Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.by_transport[conn.transport_name] -= 1
            if conn.session.user is not None:
                self.authenticated_users -= 1

    def authenticated(self, conn: Connection) -> None:
        self.authenticated_users += 1

    def __len__(self) -> int:
        return len(self.open)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.open))
