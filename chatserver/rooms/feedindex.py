"""The saved feeds of the users connected to this node, indexed by what a message must contain;
pure (no I/O).

Matching a message must not cost a loop over feeds: each feed is filed under one *anchor*, a
thing every message it matches must have — a word of its query (its longest exact word), else
its longest prefix, else its author (``from:``), else its room (``in:``). A message looks up its
own words, their beginnings of the lengths that prefixes have, its sender and its room: only the
feeds found there are checked in full (:meth:`Query.matches_words` and the filters). The cost
per message is a few dictionary lookups per word, whatever the number of feeds.

Authorization is not decided here: a candidate hit is only a candidate until the feeds service
has asked the one authorization path whether its user may read the room now.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..store.messages import Message
from .query import WORD, Query


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
        return "prefix", max(prefixes, key=len)
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
        self._prefix_lengths: Counter[int] = Counter()  # of the prefix anchors filed

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
        if key[0] == "prefix":
            self._prefix_lengths[len(key[1])] += 1
        self._of_user.setdefault(entry.user_id, set()).add(entry.feed_id)
        return True

    def remove(self, feed_id: int) -> None:
        entry = self.entries.pop(feed_id, None)
        if entry is None:
            return
        kind, key = self._keys.pop(feed_id)
        if kind == "prefix":
            self._prefix_lengths[len(key)] -= 1
            if not self._prefix_lengths[len(key)]:
                del self._prefix_lengths[len(key)]
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
        tokens = [w.casefold() for w in WORD.findall(message.text)] if message.text else []
        word_index, prefix_index = by["word"], by["prefix"]
        lengths = list(self._prefix_lengths)
        for word in set(tokens):
            hit = word_index.get(word)
            if hit:
                found.update(hit)
            for length in lengths:
                if len(word) >= length:
                    hit = prefix_index.get(word[:length])
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
            if q.terms and not q.matches_words(tokens):
                continue
            out.append(entry)
        return out
