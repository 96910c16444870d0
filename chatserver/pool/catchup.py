"""Catch-up: the store is the truth, peer links are only the fast path.

For every room whose cache is loaded here, compare the hub's ``last_seq`` with the store's and
deliver what is missing. The pool runs it every ``catchup_interval_s`` while a peer link is down
or after one was lost (the bound on delivery delay when a link is down), and every
``SAFETY_POLL_ROUNDS`` intervals otherwise (a safety net for an event lost some way nobody
noticed).
"""

from __future__ import annotations

import logging

from ..rooms.hub import Hub
from ..store import messages as message_store
from ..store.db import Database
from . import registry

log = logging.getLogger("chatserver.pool")

# With every peer linked, the catch-up still polls the store every this many intervals.
SAFETY_POLL_ROUNDS = 15


class CatchUp:
    def __init__(self, db: Database, hub: Hub) -> None:
        self._db = db
        self._hub = hub
        self.caught_up = 0  # messages delivered from the store
        self.polls = 0

    async def run(self) -> int:
        """Deliver what the store has beyond the hub, for every room whose cache is loaded here
        (rooms with subscribers, and the idle ones a join would be answered from)."""
        hub = self._hub
        self.polls += 1
        rooms = hub.loaded_rooms()
        if not rooms:
            return 0
        stored = await registry.room_seqs(self._db, rooms)
        found = 0
        for room_id, last in stored.items():
            known = hub.known_last_seq(room_id)
            if known is None or last <= known:
                continue
            missing = await message_store.after(
                self._db, room_id, known, 1000, include_removed=True
            )
            if missing:
                found += len(missing)
                hub.deliver(missing)
        if found:
            self.caught_up += found
            log.info("pool: caught up %d messages from the store", found)
        return found
