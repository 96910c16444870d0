"""The search syntax (docs/protocol.md, "Search"), parsed into a :class:`Query`; pure.

``deploy "release notes" rel* from:alice in:ops after:2026-01-01 has:file``: words (all must
occur), quoted phrases, prefixes (``word*``), and filters. A word is a run of letters and digits
(``\\w+``), compared case-insensitively; anything else in a term separates words. The same
:class:`Query` drives the store's full-text search (:mod:`chatserver.store.search`), the
highlighting of snippets, and the matching of topic feeds against new messages
(:meth:`Query.matches`), so the three agree on what a word is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..protocol.errors import BAD_REQUEST, TOO_LARGE, ChatError

WORD = re.compile(r"\w+")
_TOKEN = re.compile(r'(\w+):"([^"]*)"|"([^"]*)"|(\S+)')
FILTERS = ("from", "in", "before", "after", "on", "has")
MIN_PREFIX = 2  # a prefix shorter than this would match half the store
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Term:
    """One word, a prefix (``prefix``: the last word is a prefix), or a phrase (several words
    in a row). Words are case-folded."""

    words: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    terms: tuple[Term, ...] = ()
    sender: str | None = None  # from:
    room: str | None = None  # in: a room id or name
    since_ms: int | None = None  # ts >= since_ms
    until_ms: int | None = None  # ts < until_ms
    has_file: bool = False

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(w for t in self.terms for w in t.words)

    def matches(self, text: str) -> bool:
        """Do ``text``'s words hold every term? (The filters are the caller's to check.)"""
        if not self.terms:
            return True
        return self.matches_words([w.casefold() for w in WORD.findall(text)])

    def matches_words(self, tokens: list[str]) -> bool:
        """:meth:`matches` over a text already split into case-folded words."""
        return all(_holds(term, tokens) for term in self.terms)

    def highlights(self, text: str) -> list[tuple[int, int]]:
        """The character ranges of ``text`` that match a term's word, in order."""
        exact = {w for t in self.terms for w in (t.words if not t.prefix else t.words[:-1])}
        prefixes = tuple(t.words[-1] for t in self.terms if t.prefix)
        out = []
        for m in WORD.finditer(text):
            word = m.group().casefold()
            if word in exact or (prefixes and word.startswith(prefixes)):
                out.append((m.start(), m.end()))
        return out


def _holds(term: Term, tokens: list[str]) -> bool:
    words, n = term.words, len(term.words)
    if n == 1 and not term.prefix:
        return words[0] in tokens
    for i in range(len(tokens) - n + 1):
        if tokens[i : i + n - 1] == list(words[:-1]):
            last = tokens[i + n - 1]
            if last == words[-1] or (term.prefix and last.startswith(words[-1])):
                return True
    return False


def _day(value: str, name: str) -> int:
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ChatError(BAD_REQUEST, f"{name}: takes a date YYYY-MM-DD (UTC)") from None
    return int(day.timestamp() * 1000)


def parse(text: str, *, max_chars: int, max_terms: int, allow_empty: bool = False) -> Query:
    """Parse ``text``; ``bad_request`` naming the problem, ``too_large`` past the limits.
    A query without a word or a filter is refused unless ``allow_empty`` (it matches all)."""
    if len(text) > max_chars:
        raise ChatError(TOO_LARGE, f"a query is at most {max_chars} characters")
    terms: list[Term] = []
    values: dict[str, str] = {}
    for m in _TOKEN.finditer(text):
        key, quoted_value, phrase, bare = m.groups()
        if key is None and bare is not None and ":" in bare:
            head, _, rest = bare.partition(":")
            if head.lower() in FILTERS:
                key, quoted_value = head, rest
        if key is not None:
            key = key.lower()
            if key not in FILTERS:
                raise ChatError(BAD_REQUEST, f"unknown filter {key[:32]!r}:")
            if key in values:
                raise ChatError(BAD_REQUEST, f"{key}: given twice")
            values[key] = quoted_value or ""
            continue
        raw = phrase if phrase is not None else bare or ""
        prefix = phrase is None and raw.endswith("*")
        words = tuple(w.casefold() for w in WORD.findall(raw))
        if not words:
            continue
        if prefix and len(words[-1]) < MIN_PREFIX and allow_empty:
            prefix = False  # the administrators' search: read as a word
        if prefix and len(words[-1]) < MIN_PREFIX:
            raise ChatError(BAD_REQUEST, f"a prefix has at least {MIN_PREFIX} characters")
        terms.append(Term(words, prefix))
    if len(terms) > max_terms or sum(len(t.words) for t in terms) > 4 * max_terms:
        raise ChatError(TOO_LARGE, f"a query has at most {max_terms} words and phrases")
    since = until = None
    if "after" in values:
        since = _day(values["after"], "after") + DAY_MS
    if "before" in values:
        until = _day(values["before"], "before")
    if "on" in values:
        day = _day(values["on"], "on")
        since = day if since is None else max(since, day)
        until = day + DAY_MS if until is None else min(until, day + DAY_MS)
    has = values.get("has")
    if has is not None and has != "file":
        raise ChatError(BAD_REQUEST, "has: takes 'file'")
    for key in ("from", "in"):
        if key in values and not values[key]:
            raise ChatError(BAD_REQUEST, f"{key}: needs a value")
    query = Query(
        text,
        tuple(terms),
        values.get("from"),
        values.get("in"),
        since,
        until,
        has is not None,
    )
    if not terms and query.sender is None and query.room is None and not query.has_file:
        if since is None and until is None and not allow_empty:
            raise ChatError(BAD_REQUEST, "a query needs a word, a phrase or a filter")
    return query


def iso_day(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).date().isoformat()
