"""Search for users (docs/protocol.md, "Search"): the rooms a user may read right now, the
query, the store's full-text index, highlighted snippets, a cursor.

Which rooms are searched is decided before the store is asked, by the one authorization path
(:mod:`.access` over :class:`.facts.Facts`, as history and join decide): the store never sees a
room the caller may not read, so no hit, count, snippet or timing can come from one. ``in:`` and
``from:`` that name nothing readable answer an empty page, like names that do not exist.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

from ..config import SearchConfig
from ..protocol.errors import BAD_REQUEST, UNAVAILABLE, ChatError, RetryLater
from ..store import search as search_store
from ..store.db import Database
from ..store.messages import Message
from ..store.users import User
from . import access
from .authorization import Authorization
from .capture import Capture
from .facts import Facts
from .query import Query, parse
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

SNIPPET_CHARS = 200
SNIPPET_LEAD = 60
MAX_CACHED_USERS = 1000  # users whose readable rooms are remembered (a dict each)


@dataclass(frozen=True, slots=True)
class Cursor:
    before: tuple[int, int, int] | None = None  # newest first: the last hit's (ts, room, seq)
    offset: int = 0  # by relevance

    def encode(self) -> str:
        if self.before is not None:
            ts, room, seq = self.before
            text = f"n:{ts}:{room}:{seq}"
        else:
            text = f"r:{self.offset}"
        return base64.urlsafe_b64encode(text.encode()).decode()

    @staticmethod
    def decode(value: str) -> Cursor:
        try:
            text = base64.b64decode(value.encode(), altchars=b"-_", validate=True).decode()
            kind, _, rest = text.partition(":")
            numbers = [int(x) for x in rest.split(":")]
            if kind == "n" and len(numbers) == 3:
                return Cursor(before=(numbers[0], numbers[1], numbers[2]))
            if kind == "r" and len(numbers) == 1 and 0 <= numbers[0] <= 10_000:
                return Cursor(offset=numbers[0])
        except (ValueError, UnicodeDecodeError):
            pass
        raise ChatError(BAD_REQUEST, "field 'cursor' is not a cursor of this server")


def snippet(query: Query, text: str) -> tuple[str, list[list[int]]]:
    """At most SNIPPET_CHARS of ``text`` around its first match, and the ranges of matched
    words in it: [start, end) in characters (code points) of the snippet. An elided start or end
    is marked by "…" (part of the snippet, never inside a range)."""
    ranges = query.highlights(text)
    if len(text) <= SNIPPET_CHARS:
        return text, [[a, b] for a, b in ranges]
    start = max(0, ranges[0][0] - SNIPPET_LEAD) if ranges else 0
    end = min(len(text), start + SNIPPET_CHARS)
    head = "…" if start > 0 else ""
    piece = head + text[start:end] + ("…" if end < len(text) else "")
    shift = len(head) - start
    return piece, [[a + shift, b + shift] for a, b in ranges if a >= start and b <= end]


def hit(query: Query, message: Message) -> dict[str, Any]:
    text, ranges = snippet(query, message.text)
    out: dict[str, Any] = {
        "room": message.room,
        "seq": message.seq,
        "ts": message.ts,
        "sender": {"id": message.sender_id, "name": message.sender_name},
        "snippet": text,
        "highlights": ranges,
    }
    if message.file is not None:
        out["file"] = message.file.wire()
    return out


class Search:
    def __init__(
        self,
        db: Database,
        config: SearchConfig,
        facts: Facts,
        auth: Authorization,
        capture: Capture,
    ) -> None:
        self._db = db
        self.config = config
        self._facts = facts
        self._auth = auth
        self._capture = capture
        self._limiter = RateLimiter(config.per_user_per_s, burst=max(5.0, config.per_user_per_s))
        self._stats = search_store.TermStats()  # word frequencies: the newest-first plan
        # user id -> (facts generation, readable rooms by id -> name)
        self._readable: dict[int, tuple[int, dict[int, str]]] = {}

    def parse(self, text: str) -> Query:
        return parse(text, max_chars=self.config.max_query_chars, max_terms=self.config.max_terms)

    async def readable_rooms(self, user: User) -> dict[int, str]:
        """Every room ``user`` may read now, id -> name (remembered per facts generation)."""
        facts = self._facts
        generation = facts.generation
        known = self._readable.get(user.id)
        if known is not None and known[0] == generation:
            return known[1]
        actor = await facts.actor(user)
        out: dict[int, str] = {}
        candidates = await facts.rooms(list(await search_store.room_names(self._db)))
        for room_id, room in candidates.items():
            category = await facts.category(room.category_id)
            if category is not None and access.can_read(actor, room, category):
                out[room_id] = room.name
        if generation == facts.generation:
            if len(self._readable) >= MAX_CACHED_USERS:
                self._readable.clear()
            self._readable[user.id] = (generation, out)
        return out

    def allow(self, user: User) -> None:
        if not self._limiter.allow(user.id):
            log.warning("search by user %d refused: rate limited", user.id)
            raise RetryLater("too many searches; slow down", 1)

    async def search(
        self,
        user: User,
        text: str,
        *,
        room: int | None = None,
        order: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        source: str = "search",
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of hits, newest first (or by relevance) and the cursor of the next page."""
        self.allow(user)
        if order not in (None, "newest", "relevance"):
            raise ChatError(BAD_REQUEST, "field 'order' is 'newest' or 'relevance'")
        page_max = self.config.page_max
        if limit is not None and limit > page_max:
            raise ChatError(BAD_REQUEST, f"limit exceeds search.page_max={page_max}")
        limit = limit or min(20, page_max)
        query = self.parse(text)
        at = Cursor.decode(cursor) if cursor else Cursor()
        hits = await self._find(user, query, room, order == "relevance", at, limit + 1)
        page = [hit(query, m) for m in hits[:limit]]
        next_cursor = None
        if len(hits) > limit:
            last = hits[limit - 1]
            nxt = (
                Cursor(offset=at.offset + limit)
                if order == "relevance" and query.terms
                else Cursor(before=(last.ts, last.room, last.seq))
            )
            next_cursor = nxt.encode()
        if self._capture.on:
            shown = [[h["room"], h["seq"]] for h in page]
            await self._capture.searched(user, room, text, source, shown)
        return page, next_cursor

    async def _find(
        self, user: User, query: Query, room: int | None, relevance: bool, at: Cursor, limit: int
    ) -> list[Message]:
        if room is not None:
            readable = {room: (await self._auth.readable_room(user, room)).name}
        else:
            readable = await self.readable_rooms(user)
        rooms = list(readable)
        if query.room is not None:
            wanted = query.room
            rooms = [
                r
                for r, name in readable.items()
                if str(r) == wanted or name.casefold() == wanted.casefold()
            ]
        sender_id = None
        if query.sender is not None:
            sender_id = await search_store.user_id_by_name(self._db, query.sender)
            if sender_id is None:
                return []
        q = search_store.TextQuery(
            tuple((t.words, t.prefix) for t in query.terms),
            sender_id,
            query.since_ms,
            query.until_ms,
            query.has_file,
        )
        try:
            return await search_store.search(
                self._db,
                q,
                rooms=rooms,
                limit=limit,
                relevance=relevance,
                before=at.before,
                offset=at.offset,
                language=self.config.language,
                timeout_ms=self.config.timeout_ms,
                stats=self._stats,
            )
        except search_store.SearchTimeout:
            log.warning("search by user %d cancelled: over %d ms", user.id, self.config.timeout_ms)
            raise ChatError(UNAVAILABLE, "the search took too long; narrow it") from None
