"""Applying what peers send, in arrival order: messages to the hub, changes through a handler table.

A peer's word is never a store write: received messages only reach the hub, which delivers them
in ``seq`` order and fills any gap from the store; received changes only drop caches, which are
then re-read from the store, and are enforced on this node's sessions before any later message
of the same frame is delivered.
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


class Inbox:
    def __init__(
        self,
        deliver: Callable[[list[Message]], None],
        handlers: Mapping[type, Handler],
    ) -> None:
        self._deliver = deliver
        self._handlers = handlers
        self._queue: deque[tuple[str, list[PeerEvent]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    def put(self, peer: str, events: list[PeerEvent]) -> None:
        if (
            not self._queue
            and self._worker is None
            and all(type(e) is MessageStored for e in events)
        ):
            self._deliver_messages(events)  # the common case: no await, no task
            return
        self._queue.append((peer, events))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _deliver_messages(self, events: list[PeerEvent]) -> None:
        messages = [e.message for e in events if isinstance(e, MessageStored)]
        if messages:
            self._deliver(messages)

    async def _work(self) -> None:
        """Apply queued events in arrival order; changes are enforced before later messages."""
        try:
            while self._queue:
                peer, events = self._queue.popleft()
                batch: list[PeerEvent] = []
                for event in events:
                    if type(event) is MessageStored:
                        batch.append(event)
                        continue
                    if batch:
                        self._deliver_messages(batch)
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
                    self._deliver_messages(batch)
        finally:
            self._worker = None
            if self._queue:
                self._worker = asyncio.get_running_loop().create_task(self._work())

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
