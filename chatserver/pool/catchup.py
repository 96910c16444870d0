"""Catch-up: the store is the truth, peer links are only the fast path.

For every room whose cache is loaded here, compare the hub's ``last_seq`` with the store's and
deliver what is missing. :meth:`CatchUp.loop` runs it every ``catchup_interval_s`` while a peer
link is down (the bound on delivery delay when a link is down); at once and at the next
``SUSPECT_ROUNDS`` intervals when the pool calls :meth:`CatchUp.suspect` (a link was lost or
opened, a node (re)appeared in the registry); and every ``SAFETY_POLL_ROUNDS`` intervals
otherwise (a safety net for an event lost some way nobody noticed).

Why a link's opening is suspect: a peer sends on a link only what it commits once its side is
open, and the two sides open at different moments; what it committed before (while its links
were down: stopped, partitioned, expired and back) reached no link here, and is in the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..rooms.hub import Hub
from ..store import messages as message_store
from ..store.db import Database
from ..store.health import describe
from . import registry

log = logging.getLogger("chatserver.pool")

# With every peer linked, the catch-up still polls the store every this many intervals.
SAFETY_POLL_ROUNDS = 15
# After a link opens or a node (re)appears, it polls at once and at this many intervals more.
SUSPECT_ROUNDS = 2


class CatchUp:
    def __init__(self, db: Database, hub: Hub) -> None:
        self._db = db
        self._hub = hub
        self.caught_up = 0  # messages delivered from the store
        self.polls = 0
        # Intervals that poll even if every link is up (from the start: links are opening).
        self._suspect_rounds = SUSPECT_ROUNDS
        self._poll_now = asyncio.Event()

    def suspect(self, *, now: bool = False) -> None:
        """Peer events may have been lost: poll at the next SUSPECT_ROUNDS intervals (and at
        once with ``now``)."""
        self._suspect_rounds = SUSPECT_ROUNDS
        if now:
            self._poll_now.set()

    async def loop(self, interval: float, all_linked: Callable[[], bool]) -> None:
        """Poll as the module docstring says, until cancelled.

        While every registered peer is linked and nothing is suspect, messages arrive over the
        links and the store is polled only every SAFETY_POLL_ROUNDS intervals: a node follows
        tens of thousands of rooms, and each poll reads all their last_seqs. An expired node is
        not waited for; its row's or its link's return ends the quiet at once.
        """
        quiet = 0
        while True:
            try:
                await asyncio.wait_for(self._poll_now.wait(), interval)
                now = True
            except TimeoutError:
                now = False
            self._poll_now.clear()
            suspect = self._suspect_rounds > 0
            if not now and not suspect and all_linked() and quiet < SAFETY_POLL_ROUNDS:
                quiet += 1
                continue
            quiet = 0
            if suspect and not now:
                self._suspect_rounds -= 1
            try:
                await self.run()
            except Exception as exc:
                self._suspect_rounds = max(self._suspect_rounds, 1)  # try again next interval
                log.warning("pool: catch-up failed: %s", describe(exc))

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
