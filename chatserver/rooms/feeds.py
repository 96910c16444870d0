"""Topic feeds (docs/protocol.md, "Topic feeds"): saved queries whose new matches arrive live.

A feed is stored per user (:mod:`chatserver.store.feeds`). A node indexes the feeds of the users
connected to it (:class:`~.feedindex.FeedIndex`), read when a user's first session here signs
in and dropped when their last one closes. Every message the node accepts — stored here, or
from a peer and accepted by the pool's inbox — passes :meth:`Feeds.observe` (the hub's
``on_deliver``), which does only dictionary lookups; a candidate hit then waits in a bounded
queue for a worker that asks the one authorization path whether the feed's user may read the
room *now*, and only then sends a ``feed`` event to each of the user's sessions on this node.
A change to a user's feeds is published (:class:`~.changes.FeedsChanged`) so that every node
where the user is connected re-reads them and tells the sessions (``feeds`` event).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from typing import Any

from ..config import SearchConfig
from ..protocol.errors import BAD_REQUEST, CONFLICT, NOT_FOUND, TOO_LARGE, ChatError
from ..protocol.events import FeedHit, FeedsUpdated, Outgoing
from ..store import feeds as feed_store
from ..store.db import Database
from ..store.messages import Message
from ..store.users import User
from .authorization import Authorization
from .changes import FeedsChanged, Publisher
from .feedindex import Entry, FeedIndex, anchor
from .presence import Presence
from .search import Search, hit

log = logging.getLogger(__name__)

MAX_PENDING_HITS = 10_000  # candidate hits waiting for their authorization check
MAX_SEEN = 100_000  # (room, seq) already matched: a message delivered twice is matched once


class Feeds:
    def __init__(
        self,
        db: Database,
        config: SearchConfig,
        search: Search,
        auth: Authorization,
        presence: Presence,
        publisher: Publisher,
    ) -> None:
        self._db = db
        self._config = config
        self._search = search
        self._auth = auth
        self._presence = presence
        self._publisher = publisher
        self.index = FeedIndex()
        self._seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._pending: deque[tuple[Entry, Message]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._dropping = False  # logged once per episode
        # Observations (metrics, tests, the benchmark).
        self.candidates = 0
        self.delivered = 0
        self.refused = 0  # candidate hits the user may not read
        self.dropped = 0  # candidate hits past MAX_PENDING_HITS

    # -- who is here ------------------------------------------------------------------------

    async def online(self, user: User) -> None:
        """``user`` signed in on this node: index their feeds (once, for the first session)."""
        if user.id in self.index.users():
            return
        await self._load(user.id)

    def offline(self, user_id: int) -> None:
        """A session of ``user_id`` closed: drop their feeds when it was the last one here."""
        if user_id not in self._presence:
            self.index.remove_user(user_id)

    async def _load(self, user_id: int) -> list[feed_store.Feed]:
        saved = await feed_store.of_user(self._db, user_id)
        self.index.remove_user(user_id)
        if user_id in self._presence:  # still here after the read
            for feed in saved:
                try:
                    query = self._search.parse(feed.query)
                except ChatError:
                    continue  # saved under other limits: kept, not matched
                self.index.add(Entry(feed.id, user_id, feed.name, query))
        return saved

    async def changed(self, event: FeedsChanged) -> None:
        """A user's feeds changed (here or on another node): re-read them if they are here,
        and tell their sessions."""
        if event.user not in self._presence:
            return
        saved = await self._load(event.user)
        update = Outgoing.event(FeedsUpdated([f.public() for f in saved]))
        for member in self._presence.of(event.user):
            member.send(update)

    # -- ops --------------------------------------------------------------------------------

    async def add(self, user: User, name: str, text: str) -> dict[str, Any]:
        query = self._search.parse(text)
        if anchor(query) is None:
            raise ChatError(BAD_REQUEST, "a feed needs a word, a phrase, from: or in:")
        try:
            feed = await feed_store.add(
                self._db, user.id, name, text, self._config.max_feeds_per_user
            )
        except feed_store.FeedRefused as exc:
            if exc.reason == "exists":
                raise ChatError(CONFLICT, f"you have a feed named {name!r}") from None
            log.warning("feed of user %d refused: %d feeds already", user.id, len(self.index))
            limit = self._config.max_feeds_per_user
            raise ChatError(TOO_LARGE, f"at most {limit} feeds per user") from None
        await self._announce(user.id)
        return feed.public()

    async def saved(self, user: User) -> list[dict[str, Any]]:
        return [f.public() for f in await feed_store.of_user(self._db, user.id)]

    async def remove(self, user: User, feed_id: int) -> None:
        if not await feed_store.remove(self._db, user.id, feed_id):
            raise ChatError(NOT_FOUND, f"no feed {feed_id}")
        await self._announce(user.id)

    async def history(
        self, user: User, feed_id: int, cursor: str | None, limit: int | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
        """Page back a feed: a search with its query, newest first."""
        mine = {f.id: f for f in await feed_store.of_user(self._db, user.id)}
        feed = mine.get(feed_id)
        if feed is None:
            raise ChatError(NOT_FOUND, f"no feed {feed_id}")
        hits, next_cursor = await self._search.search(
            user, feed.query, cursor=cursor, limit=limit, source="feed"
        )
        return feed.public(), hits, next_cursor

    async def _announce(self, user_id: int) -> None:
        change = FeedsChanged(user_id)
        self._publisher.publish(change)
        await self.changed(change)

    # -- matching ---------------------------------------------------------------------------

    def observe(self, messages: list[Message]) -> None:
        """The hub accepted ``messages``: queue the candidate hits (no await, no store)."""
        index = self.index
        if not index.entries:
            return
        seen = self._seen
        for message in messages:
            if message.removed:
                continue
            key = (message.room, message.seq)
            if key in seen:
                continue
            seen[key] = None
            if len(seen) > MAX_SEEN:
                seen.popitem(last=False)
            for entry in index.candidates(message):
                self.candidates += 1
                if len(self._pending) >= MAX_PENDING_HITS:
                    if not self._dropping:
                        self._dropping = True
                        log.warning("feed hits dropped: %d wait for their check", MAX_PENDING_HITS)
                    self.dropped += 1
                    continue
                self._pending.append((entry, message))
        if self._pending and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._pending:
                entry, message = self._pending.popleft()
                try:
                    await self._deliver(entry, message)
                except Exception:
                    log.exception("feed %d: delivering a hit failed", entry.feed_id)
        finally:
            self._worker = None
            if self._dropping and not self._pending:
                self._dropping = False
                log.warning("feed hits no longer dropped (%d so far)", self.dropped)
            if self._pending:
                self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _deliver(self, entry: Entry, message: Message) -> None:
        members = self._presence.of(entry.user_id)
        user = next((m.user for m in members if m.user is not None), None)
        if user is None or entry.feed_id not in self.index.entries:
            return
        try:
            room = await self._auth.readable_room(user, message.room)
        except ChatError:
            self.refused += 1
            return
        wanted = entry.query.room
        if wanted is not None and wanted.casefold() not in (str(room.id), room.name.casefold()):
            return
        event = Outgoing.event(FeedHit(entry.feed_id, entry.name, hit(entry.query, message)))
        for member in self._presence.of(entry.user_id):
            member.send(event)
        self.delivered += 1
