"""The retention purge, off the hot path, on one node of a pool at a time.

Every ``retention.interval_s`` the node tries to take the store's ``retention`` lease
(:mod:`chatserver.store.leases`); the node holding it purges every room that has an enabled
policy, a bounded batch per transaction (:func:`chatserver.store.retention.purge_batch`),
pausing ``batch_pause_s`` between batches so the purge never holds the store for long, and
renewing the lease before each batch (a node that lost it stops at once). A node killed
mid-purge leaves only whole batches done; its lease expires after ``lease_s`` and the next run,
on any node, goes on from there.

Purged messages that may still be in a node's recent-message cache (the newest 500 seqs of a
room) are told to every node as removed (``messages_changed``), so no join backchat shows them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import RetentionConfig
from ..store import leases
from ..store import messages as message_store
from ..store import retention as store
from ..store.db import Database, now_ms
from .capture import Capture
from .changes import MessageChange, MessagesChanged

log = logging.getLogger(__name__)

LEASE = "retention"
CACHE_REACH = 500  # the longest join backchat (chat.default_chat_history ≤ 500)


@dataclass
class Report:
    """One run: whether this node held the lease, and what it deleted per room."""

    ran: bool = False
    messages: dict[int, int] = field(default_factory=dict)
    files: dict[int, int] = field(default_factory=dict)
    batches: int = 0

    @property
    def total(self) -> int:
        return sum(self.messages.values())


class Retention:
    def __init__(
        self,
        db: Database,
        config: RetentionConfig,
        node: str,
        capture: Capture,
        messages_changed: Callable[[MessagesChanged], None],
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._db = db
        self._config = config
        self._node = node
        self._capture = capture
        self._messages_changed = messages_changed
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self.last: Report | None = None

    def start(self) -> None:
        if self._config.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                self.last = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention purge: run failed: %s", exc)
            await asyncio.sleep(self._config.interval_s)

    async def _lease(self) -> bool:
        ttl = int(self._config.lease_s * 1000)
        return await leases.acquire(self._db, LEASE, self._node, ttl, now_ms())

    async def run_once(self) -> Report:
        """One pass over every room with an enabled policy, if this node holds the lease."""
        report = Report()
        if not await self._lease():
            return report
        report.ran = True
        chosen = store.effective(
            await store.room_rows(self._db), await store.policies(self._db), enabled_only=True
        )
        for room, policy in chosen.items():
            while True:
                if report.batches and not await self._lease():
                    log.warning("retention purge: lost the lease; another node goes on")
                    return report
                batch = await store.purge_batch(
                    self._db,
                    room,
                    policy,
                    self.clock(),
                    self._config.batch_size,
                    self._capture.node,
                )
                report.batches += 1
                if batch.seqs:
                    report.messages[room] = report.messages.get(room, 0) + len(batch.seqs)
                    await self._tell(room, batch.seqs)
                if batch.files:
                    report.files[room] = report.files.get(room, 0) + batch.files
                if not batch.seqs and not batch.files and not batch.versions:
                    break
                await asyncio.sleep(self._config.batch_pause_s)
            if room in report.messages or room in report.files:
                log.info(
                    "retention purge: room %d: %d messages, %d files older than %d days deleted",
                    room,
                    report.messages.get(room, 0),
                    report.files.get(room, 0),
                    policy.days,
                )
        return report

    async def _tell(self, room: int, seqs: tuple[int, ...]) -> None:
        last = await message_store.last_seq(self._db, room) or 0
        near = [s for s in seqs if s > last - CACHE_REACH]
        if near:
            changes = tuple(MessageChange(s, "removed") for s in near)
            self._messages_changed(MessagesChanged(room, changes, None))
