"""Applying what peers send, in arrival order: messages to the hub, changes through a handler table.

A peer's word is never a store write: received messages only reach the hub, which delivers them
in ``seq`` order, fills any gap from the store and re-reads a seq when two events for it differ;
received changes only drop caches, which are then re-read from the store, or are re-checked
against the store before they act (the handler table), and are enforced on this node's sessions
before any later message of the same frame is delivered.

Messages from a link the pool does not trust yet (``verify``: see ``Pool.received``) go through
the worker and ``verify``, which delivers the store's version of them instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..store.messages import Message
from .events import MessageStored, PeerEvent

log = logging.getLogger("chatserver.pool")

Handler = Callable[[Any], Awaitable[None]]

# Frames waiting for the worker (changes that need the store, messages being checked) at most.
MAX_QUEUED_FRAMES = 10_000


class Inbox:
    def __init__(
        self,
        deliver: Callable[[list[Message]], None],
        handlers: Mapping[type, Handler],
        verify: Callable[[list[Message]], Awaitable[int]],
    ) -> None:
        self._deliver = deliver
        self._handlers = handlers
        self._verify = verify
        self._queue: deque[tuple[str, list[PeerEvent], bool]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def put(self, peer: str, events: list[PeerEvent], *, verify: bool = False) -> bool:
        """Apply ``events`` in turn; False (nothing queued) when MAX_QUEUED_FRAMES frames already
        wait: the caller drops the link, and catch-up reads what it carried from the store."""
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            return False
        if (
            not verify
            and not self._queue
            and self._worker is None
            and all(type(e) is MessageStored for e in events)
        ):
            self._deliver_messages(events)  # the common case: no await, no task
            return True
        self._queue.append((peer, events, verify))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return True

    def _deliver_messages(self, events: list[PeerEvent]) -> None:
        messages = [e.message for e in events if isinstance(e, MessageStored)]
        if messages:
            self._deliver(messages)

    async def _messages(self, peer: str, events: list[PeerEvent], verify: bool) -> None:
        if not verify:
            self._deliver_messages(events)
            return
        claimed = [e.message for e in events if isinstance(e, MessageStored)]
        try:
            dropped = await self._verify(claimed)
        except Exception as exc:  # the store cannot say: deliver nothing; catch-up will
            log.warning("pool: cannot check %d messages from %s: %s", len(claimed), peer, exc)
            return
        if dropped:
            log.warning(
                "pool: dropped %d message events from %s the store does not have", dropped, peer
            )

    async def _work(self) -> None:
        """Apply queued events in arrival order; changes are enforced before later messages."""
        try:
            while self._queue:
                peer, events, verify = self._queue.popleft()
                batch: list[PeerEvent] = []
                for event in events:
                    if type(event) is MessageStored:
                        batch.append(event)
                        continue
                    if batch:
                        await self._messages(peer, batch, verify)
                        batch = []
                    handler = self._handlers.get(type(event))
                    if handler is None:
                        log.warning("pool: no handler for %s from %s", type(event).__name__, peer)
                        continue
                    try:
                        await handler(event)
                    except Exception:
                        log.exception("pool: applying %s from %s failed", event, peer)
                if batch:
                    await self._messages(peer, batch, verify)
        finally:
            self._worker = None
            if self._queue:
                self._worker = asyncio.get_running_loop().create_task(self._work())

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
