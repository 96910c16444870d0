"""A peer's word about changed messages, checked against the store.

A peer's ``edit`` event (:class:`~.changes.MessagesChanged`) claims that messages were changed
(by an administrator, by their sender, or by a reaction) or that a room was cleared. The store
decides: each claimed seq is re-read and the change is what the store now holds; a claim the
store does not show (the message as posted, without reactions) is dropped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ..store.messages import Message
from .changes import MessageChange, MessagesChanged

log = logging.getLogger(__name__)

LoadAfter = Callable[[int, int, int], Awaitable[list[Message]]]

# Message states that only a change makes.
CHANGED = ("replaced", "removed", "edited", "deleted")


async def verify_changes(
    load_after: LoadAfter, change: MessagesChanged, known_last: int | None = None
) -> tuple[MessagesChanged | None, int]:
    """The claim as the store has it, and how many of its parts the store contradicted.

    Each changed seq comes with its stored state, text, edit time and reactions (seqs the store
    shows unchanged are left out); the clear only if the store holds no message at or below
    ``cleared_through``. ``None`` if nothing is confirmed. The change number and the reaction
    named are the peer's (they only tell the client what changed; the state is the store's).
    A removal of a seq the store no longer holds at all (the retention purge deleted it) is
    confirmed when the seq is at most ``known_last``, the last seq delivered here: never for a
    seq still to come.
    """
    changes: list[MessageChange] = []
    if change.changes:
        low = min(c.seq for c in change.changes)
        span = min(max(c.seq for c in change.changes) - low + 1, 1000)
        found = {m.seq: m for m in await load_after(change.room, low - 1, span)}
        for claimed in change.changes:
            stored = found.get(claimed.seq)
            if stored is None:
                purged = known_last is not None and claimed.seq <= known_last
                if purged and claimed.state == "removed" and claimed.change_no is None:
                    changes.append(MessageChange(claimed.seq, "removed"))
                continue
            if claimed.reaction is not None or claimed.reactions is not None:
                if stored.state == "removed":
                    continue
                changes.append(MessageChange.of(stored, claimed.change_no, claimed.reaction))
            elif stored.state in CHANGED:
                if claimed.change_no is None and stored.state in ("replaced", "removed"):
                    changes.append(MessageChange(stored.seq, stored.state, stored.text))
                else:
                    changes.append(MessageChange.of(stored, claimed.change_no))
    cleared = change.cleared_through
    if cleared is not None:
        first = await load_after(change.room, 0, 1)
        if first and first[0].seq <= cleared and not first[0].removed:
            cleared = None
    dropped = len(change.changes) - len(changes) + (cleared != change.cleared_through)
    if dropped:
        log.warning(
            "room %d: ignored %d edits from a peer that the store does not show",
            change.room,
            dropped,
        )
    if not changes and cleared is None:
        return None, dropped
    return MessagesChanged(change.room, tuple(changes), cleared), dropped
