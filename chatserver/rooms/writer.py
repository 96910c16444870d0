"""Group commit: posts that arrive while a transaction runs are stored together in the next one
(on PostgreSQL, that next one is already sent while the previous one commits).

::

    submit(post) ──► queue ──► [one transaction: lock rooms, assign seqs, insert N rows] ──► commit
                                                                                   │
            futures resolved (acks sent) ◄── hub.deliver(new messages) ◄───────────┘

Nothing is acknowledged before its transaction commits (ARCHITECTURE invariant 1). A batch that
fails for one bad row is stored again in halves, down to the post that fails alone, which gets
``unavailable``; every other post of the batch is stored. A batch that fails because the store is
unreachable fails all its posts with ``unavailable`` (the client retries with the same cid).

Failures are logged once per change of state: the first failed batch, then (when a batch is
stored again) how long it lasted and how many batches and posts failed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from ..protocol.errors import UNAVAILABLE, ChatError
from ..store.db import Database
from ..store.health import StoreUnavailable, describe, unreachable
from ..store.messages import Message, NewPost, Stored, store_batch
from .capture import Capture
from .changes import Publisher

log = logging.getLogger(__name__)


class Writer:
    """Stores submitted posts in group commits; see the module docstring.

    ``deliver`` (the hub) and then ``publisher`` (the pool's other nodes) get each committed
    batch's new messages; ``on_mentions`` the results of a batch whose new messages mention
    someone (chatserver/rooms/unread.py); ``on_batch`` gets (posts, seconds) of each committed
    transaction (the node's metrics); ``capture`` says whether each batch records compliance
    ``CHAT`` events.
    """

    def __init__(
        self,
        db: Database,
        deliver: Callable[[list[Message]], None],
        publisher: Publisher,
        capture: Capture,
        *,
        on_batch: Callable[[int, float], None] | None = None,
        on_mentions: Callable[[list[Stored]], None] | None = None,
        max_batch: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        self._db = db
        self._capture = capture
        self._deliver = deliver
        self._publisher = publisher
        self._on_batch = on_batch
        self._on_mentions = on_mentions
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._queue: deque[tuple[NewPost, asyncio.Future[Stored]]] = deque()
        self._wakeup = asyncio.Event()
        # Set while no post is queued or being committed: files' chunk writes to the store wait
        # for it (briefly) so a group commit does not share the store with them (rooms/files.py).
        self.quiet = asyncio.Event()
        self.quiet.set()
        self._committing = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Observations for metrics and benchmarks.
        self.stored = 0
        self.last_batch_size = 0
        self.last_batch_seconds = 0.0
        self.failed_batches = 0
        # Failures since the last stored batch (logged when storing works again).
        self._failing_since: float | None = None
        self._failed_batches_now = 0
        self._failed_posts_now = 0

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
        self.quiet.clear()
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
        # A sender's posts to a room are stored in the order submitted: while a batch is in
        # flight, the next one leaves out every (room, sender) pair it holds (they wait for the
        # batch after), since which of two in-flight transactions locks a room first is not
        # known. Other senders' posts to the same rooms go ahead.
        limit = 2 if self._db.is_postgres else 1
        in_flight: dict[asyncio.Task[None], set[tuple[int, int]]] = {}
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if in_flight and not self._db.health.available:
                    # The store is away: the batch in flight finds out when it is back, and
                    # what waits behind it is answered now instead of a bound later.
                    self._reject_queued()
                    break
                batch: list[tuple[NewPost, asyncio.Future[Stored]]] = []
                if len(in_flight) < limit:
                    # While the store is away, one post at a time finds out when it is back.
                    size = self._max_batch if self._db.health.available else 1
                    batch = self._take(set().union(*in_flight.values()), size)
                if not batch:  # at the limit, or everything queued waits for a batch in flight
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                task = asyncio.get_running_loop().create_task(self._commit(batch))
                in_flight[task] = {(post.room, post.sender_id) for post, _ in batch}
                task.add_done_callback(in_flight.pop)
                self._committing += 1
                task.add_done_callback(self._committed)
                if limit == 1:
                    await task
            if self._closing:
                if in_flight:
                    await asyncio.wait(in_flight)
                return

    def _committed(self, _task: asyncio.Task[None]) -> None:
        self._committing -= 1
        if not self._committing and not self._queue:
            self.quiet.set()

    def _take(
        self, held: set[tuple[int, int]], size: int
    ) -> list[tuple[NewPost, asyncio.Future[Stored]]]:
        """The next batch: up to ``size`` queued posts, in order, leaving the (room, sender)
        pairs of ``held`` (and looking at most 4 times ``max_batch`` posts deep)."""
        queue = self._queue
        if not held:
            return [queue.popleft() for _ in range(min(len(queue), size))]
        taken: list[tuple[NewPost, asyncio.Future[Stored]]] = []
        waiting: deque[tuple[NewPost, asyncio.Future[Stored]]] = deque()
        budget = 4 * self._max_batch
        while queue and len(taken) < size and budget:
            item = queue.popleft()
            budget -= 1
            if (item[0].room, item[0].sender_id) in held:
                waiting.append(item)
            else:
                taken.append(item)
        waiting.extend(queue)
        self._queue = waiting
        return taken

    def _reject_queued(self) -> None:
        batch = list(self._queue)
        self._queue.clear()
        if not self._committing:
            self.quiet.set()
        self._failed(len(batch), StoreUnavailable("the store is unavailable"))
        _reject(batch)

    def _failed(self, posts: int, exc: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._failed_batches_now = self._failed_posts_now = 0
            log.error(
                "storing posts failed (%s); they are answered `unavailable` until a batch is"
                " stored again",
                describe(exc),
            )
        self._failed_batches_now += 1
        self._failed_posts_now += posts

    async def _commit(self, batch: list[tuple[NewPost, asyncio.Future[Stored]]]) -> None:
        started = time.perf_counter()
        try:
            results = await store_batch(
                self._db, [post for post, _ in batch], capture=self._capture.node
            )
        except Exception as exc:
            self.failed_batches += 1
            if len(batch) > 1 and not unreachable(exc):
                # One bad row must not fail everyone's posts: store the halves apart, down to
                # the row that fails alone (seq order within a room is kept: the first half's
                # posts were submitted first).
                log.warning(
                    "a batch of %d posts failed (%s); storing it in halves", len(batch), exc
                )
                half = len(batch) // 2
                await self._commit(batch[:half])
                await self._commit(batch[half:])
                return
            self._failed(len(batch), exc)
            _reject(batch)
            return
        self.last_batch_size = len(batch)
        self.last_batch_seconds = time.perf_counter() - started
        if self._failing_since is not None:
            log.warning(
                "posts are stored again after %.1f s; %d batches (%d posts) failed meanwhile"
                " and were answered `unavailable`",
                time.monotonic() - self._failing_since,
                self._failed_batches_now,
                self._failed_posts_now,
            )
            self._failing_since = None
        if self._on_batch is not None:
            self._on_batch(len(batch), self.last_batch_seconds)
        new = [r.message for r in results if r.message is not None and not r.duplicate]
        self.stored += len(new)
        if new:
            # Already in seq order within each room: a batch numbers a room's posts in the order
            # they were submitted (what the hub and the peers need; they group by room).
            try:
                self._deliver(new)
            except Exception:
                log.exception("delivering stored messages failed")
            try:
                self._publisher.publish_messages(new)
            except Exception:
                log.exception("publishing stored messages to the pool failed")
            if self._on_mentions is not None and any(r.mentioned for r in results):
                try:
                    self._on_mentions(results)
                except Exception:
                    log.exception("telling mentioned users failed")
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _reject(batch: list[tuple[NewPost, asyncio.Future[Stored]]]) -> None:
    error = ChatError(UNAVAILABLE, "the message could not be stored; retry with the same cid")
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
