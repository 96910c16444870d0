"""The saved feeds of the users connected to this node, indexed by what a message must contain;
pure (no I/O).

Matching a message must not cost a loop over feeds: each feed is filed under one *anchor*, a
thing every message it matches must have — a word of its query (its longest exact word), else
the first two letters of a prefix, else its author (``from:``), else its room (``in:``). A
message looks up its own words, their first two letters, its sender and its room: only the feeds
found there are checked in full (:meth:`Query.matches` and the filters). The cost per message is
a few dictionary lookups per word, whatever the number of feeds.

Authorization is not decided here: a candidate hit is only a candidate until the feeds service
has asked the one authorization path whether its user may read the room now.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.messages import Message
from .query import WORD, Query

PREFIX_KEY = 2  # a prefix anchor is its first two letters (query.MIN_PREFIX)


@dataclass(frozen=True, slots=True)
class Entry:
    feed_id: int
    user_id: int
    name: str
    query: Query


def anchor(query: Query) -> tuple[str, str] | None:
    """(kind, key) a feed is filed under; ``None``: the query has nothing to file it under."""
    exact = [w for t in query.terms for w in (t.words[:-1] if t.prefix else t.words)]
    if exact:
        return "word", max(exact, key=len)
    prefixes = [t.words[-1] for t in query.terms if t.prefix]
    if prefixes:
        return "prefix", max(prefixes, key=len)[:PREFIX_KEY]
    if query.sender is not None:
        return "sender", query.sender.casefold()
    if query.room is not None:
        return "room", query.room.casefold()
    return None


class FeedIndex:
    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self._keys: dict[int, tuple[str, str]] = {}
        self._by: dict[str, dict[str, set[int]]] = {
            "word": {},
            "prefix": {},
            "sender": {},
            "room": {},
        }
        self._of_user: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: Entry) -> bool:
        """File ``entry`` (replacing one with its id); False if its query has no anchor."""
        key = anchor(entry.query)
        if key is None:
            return False
        self.remove(entry.feed_id)
        self.entries[entry.feed_id] = entry
        self._keys[entry.feed_id] = key
        self._by[key[0]].setdefault(key[1], set()).add(entry.feed_id)
        self._of_user.setdefault(entry.user_id, set()).add(entry.feed_id)
        return True

    def remove(self, feed_id: int) -> None:
        entry = self.entries.pop(feed_id, None)
        if entry is None:
            return
        kind, key = self._keys.pop(feed_id)
        bucket = self._by[kind][key]
        bucket.discard(feed_id)
        if not bucket:
            del self._by[kind][key]
        mine = self._of_user[entry.user_id]
        mine.discard(feed_id)
        if not mine:
            del self._of_user[entry.user_id]

    def remove_user(self, user_id: int) -> None:
        for feed_id in list(self._of_user.get(user_id, ())):
            self.remove(feed_id)

    def users(self) -> set[int]:
        return set(self._of_user)

    def candidates(self, message: Message) -> list[Entry]:
        """The feeds whose query matches ``message``'s text, author, date and file; their room
        filter (``in:``, a name or an id) is the caller's to check with the room it knows."""
        by = self._by
        found: set[int] = set()
        words = {w.casefold() for w in WORD.findall(message.text)} if message.text else set()
        word_index, prefix_index = by["word"], by["prefix"]
        for word in words:
            hit = word_index.get(word)
            if hit:
                found.update(hit)
            if prefix_index:
                hit = prefix_index.get(word[:PREFIX_KEY])
                if hit:
                    found.update(hit)
        if by["sender"]:
            found.update(by["sender"].get(message.sender_name.casefold(), ()))
        if by["room"]:
            found.update(by["room"].get(str(message.room), ()))
            # Feeds anchored on a room *name* alone (no word, no author): the caller, who knows
            # names, checks them; they are few (a user has at most search.max_feeds_per_user).
            for key, ids in by["room"].items():
                if not key.isdigit():
                    found.update(ids)
        if not found:
            return []
        out = []
        for feed_id in found:
            entry = self.entries[feed_id]
            q = entry.query
            if q.sender is not None and q.sender.casefold() != message.sender_name.casefold():
                continue
            if q.since_ms is not None and message.ts < q.since_ms:
                continue
            if q.until_ms is not None and message.ts >= q.until_ms:
                continue
            if q.has_file and message.file is None:
                continue
            if q.terms and not q.matches(message.text):
                continue
            out.append(entry)
        return out
