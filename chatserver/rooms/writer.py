"""Group commit: posts that arrive while a transaction runs are stored together in the next one
(on PostgreSQL, that next one is already sent while the previous one commits).

::

    submit(post) ──► queue ──► [one transaction: lock rooms, assign seqs, insert N rows] ──► commit
                                                                                   │
            futures resolved (acks sent) ◄── hub.deliver(new messages) ◄───────────┘

Nothing is acknowledged before its transaction commits (ARCHITECTURE invariant 1); a failed
transaction fails every post in it with ``unavailable`` and stores none of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from ..protocol.errors import UNAVAILABLE, ChatError
from ..store.db import Database
from ..store.messages import Message, NewPost, Stored, store_batch

log = logging.getLogger(__name__)


class Writer:
    def __init__(
        self,
        db: Database,
        on_stored: Callable[[list[Message]], None],
        *,
        max_batch: int = 1000,
        max_pending: int = 100_000,
        capture: str | None = None,
    ) -> None:
        self._db = db
        # The node's name when compliance is on: each batch records its CHAT events too.
        self.capture = capture
        # Called with each committed batch's new messages, in seq order per room: the hub first,
        # then anything added with :meth:`add_listener` (the pool, which tells the peers).
        self._listeners: list[Callable[[list[Message]], None]] = [on_stored]
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._queue: deque[tuple[NewPost, asyncio.Future[Stored]]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Observations for metrics and benchmarks.
        self.batches = 0
        self.stored = 0
        self.last_batch_size = 0
        self.last_batch_seconds = 0.0
        self.failed_batches = 0
        # Called with (posts, seconds) after each committed batch (the node's metrics).
        self.on_batch: Callable[[int, float], None] | None = None

    def add_listener(self, listener: Callable[[list[Message]], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="writer")

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, post: NewPost) -> asyncio.Future[Stored]:
        if self._closing:
            raise ChatError(UNAVAILABLE, "the server is shutting down")
        if len(self._queue) >= self._max_pending:
            raise ChatError(UNAVAILABLE, "the server is overloaded; retry the post later")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._queue.append((post, future))
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Store what was submitted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        # On PostgreSQL the next batch is prepared and sent while the previous one commits (two
        # transactions in flight). They lock their rooms in id order, so a room shared by both
        # is stored by the first before the second reads its last_seq: seq order stays commit
        # order, and the hub puts any early delivery of another room's batch in order. SQLite
        # takes one writer at a time.
        limit = 2 if self._db.is_postgres else 1
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if len(in_flight) >= limit:
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    in_flight -= done
                    continue
                take = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
                task = asyncio.get_running_loop().create_task(self._commit(batch))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                if limit == 1:
                    await task
            if self._closing:
                if in_flight:
                    await asyncio.wait(in_flight)
                return

    async def _commit(self, batch: list[tuple[NewPost, asyncio.Future[Stored]]]) -> None:
        started = time.perf_counter()
        try:
            results = await store_batch(self._db, [post for post, _ in batch], capture=self.capture)
        except Exception as exc:
            log.error("storing a batch of %d posts failed: %s", len(batch), exc)
            self.failed_batches += 1
            error = ChatError(
                UNAVAILABLE, "the message could not be stored; retry with the same cid"
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches += 1
        self.last_batch_size = len(batch)
        self.last_batch_seconds = time.perf_counter() - started
        if self.on_batch is not None:
            self.on_batch(len(batch), self.last_batch_seconds)
        new = [r.message for r in results if r.message is not None and not r.duplicate]
        self.stored += len(new)
        if new:
            # Already in seq order within each room: a batch numbers a room's posts in the order
            # they were submitted (what the listeners need; they group by room themselves).
            for listener in self._listeners:
                try:
                    listener(new)
                except Exception:
                    log.exception("delivering stored messages failed")
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
