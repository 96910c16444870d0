"""Users' changes to stored messages: edit, delete, reactions; threads and resume's changes.

Every change runs in one transaction that locks the room's row (as a post does), takes the
room's next change number (``rooms.change_no``), changes the message, records the client id
(``message_ops``: a retry changes nothing and answers the first outcome) and, with capture on,
the compliance event (EDIT and DELETE carry the old and the new text; REACT the emoji). A
message a legal hold covers keeps its replaced version (:mod:`.holds`).

Whether a sender may still edit or delete is the policy (``edit_policy``: the room's, else its
category's, else the deployment's): "never", "always", or a number of minutes after posting,
compared with the store's clock.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from . import holds
from .db import Database, now_ms
from .files import remove_covered
from .messages import GONE, Message, _message, _select_messages
from .outbox import Event, record
from .schema import categories, message_ops, messages, reactions, rooms

# What an edit policy may be: "never", "always", or whole minutes (no leading zero).
POLICY_PATTERN = r"^(never|always|[1-9][0-9]{0,5})$"


class NotFound(Exception):
    """No such message (or room) — the caller answers exactly as for a room it may not read."""


class Refused(Exception):
    """The change is not allowed: ``code`` (forbidden | conflict | too_large) and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Outcome:
    """The message after the change (or after the first op with this client id)."""

    message: Message
    change_no: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_reactions: int  # per message, every user's together
    max_distinct: int  # distinct emoji per message


def parse_policy(value: str | None) -> int | bool | None:
    """ "always" → None (no limit), "never" → False, "15" → 15 (minutes)."""
    if value is None or value == "always":
        return None
    if value == "never":
        return False
    return int(value)


def effective_policy(room: str | None, category: str | None, default: str) -> str:
    """The policy that applies: the room's own, else its category's, else the deployment's."""
    if room is not None:
        return room
    return category if category is not None else default


def refusal(policy: str, ts: int, now: int) -> str | None:
    """Why the sender of a message posted at ``ts`` may not change it at ``now`` (ms) under the
    effective ``policy``; None when they may. (The web client applies the same rule to the
    ``edit_policy`` of a ``join`` reply, chatserver/web/static/editpolicy.js.)"""
    limit = parse_policy(policy)
    if limit is False:
        return "editing and deleting messages is off in this room"
    if isinstance(limit, int) and now - ts > limit * 60_000:
        return f"messages may be changed only {limit} minutes after posting"
    return None


def check_policy(value: str) -> str:
    """A policy as stored, or ValueError: "never", "always" or whole minutes 1 … 999999."""
    if value in ("never", "always"):
        return value
    if re.fullmatch(POLICY_PATTERN, value):
        return value
    raise ValueError("edit_policy is never, always, or a number of minutes (1 to 999999)")


async def _lock(
    conn: AsyncConnection, room: int, user: int, cid: str, seq: int, op: str
) -> tuple[int, tuple[str | None, str | None], Outcome | None]:
    """Lock the room's row; its change_no and edit policies (the room's own, its category's),
    or the outcome of the earlier op with this client id."""
    row = (
        await conn.execute(
            select(rooms.c.change_no, rooms.c.edit_policy, categories.c.edit_policy.label("cat"))
            .join(categories, categories.c.id == rooms.c.category_id)
            .where(rooms.c.id == room)
            .with_for_update(of=rooms)
        )
    ).one_or_none()
    if row is None:
        raise NotFound
    done = (
        await conn.execute(
            select(message_ops.c.op, message_ops.c.seq, message_ops.c.change_no).where(
                message_ops.c.room_id == room,
                message_ops.c.user_id == user,
                message_ops.c.cid == cid,
            )
        )
    ).one_or_none()
    if done is not None:
        if done.op != op or done.seq != seq:
            raise Refused("conflict", f"client id {cid!r} was used for another change")
        current = await _read(conn, room, seq)
        if current is None:
            raise NotFound
        return row.change_no, (None, None), Outcome(current, done.change_no, True)
    return int(row.change_no), (row.edit_policy, row.cat), None


async def _read(conn: AsyncConnection, room: int, seq: int) -> Message | None:
    row = (
        await conn.execute(
            _select_messages().where(messages.c.room_id == room, messages.c.seq == seq)
        )
    ).one_or_none()
    return None if row is None else _message(row)


async def _bump(
    conn: AsyncConnection, room: int, user: int, cid: str, seq: int, op: str, change_no: int
) -> int:
    number = change_no + 1
    await conn.execute(update(rooms).where(rooms.c.id == room).values(change_no=number))
    await conn.execute(
        insert(message_ops).values(
            room_id=room, user_id=user, cid=cid, op=op, seq=seq, change_no=number, ts=now_ms()
        )
    )
    return number


def _own(message: Message | None, user: int, policy: str) -> Message:
    """The message if ``user`` may still change it under the (effective) policy."""
    if message is None or message.state == "removed":
        raise NotFound
    if message.sender_id != user:
        raise Refused("forbidden", "only its sender may change a message")
    if message.state == "deleted":
        raise Refused("conflict", "the message was deleted")
    reason = refusal(policy, message.ts, now_ms())
    if reason is not None:
        raise Refused("forbidden", reason)
    return message


async def edit(
    db: Database,
    room: int,
    seq: int,
    user: int,
    cid: str,
    text: str,
    *,
    default_policy: str,
    capture: str | None,
) -> Outcome:
    """The sender's edit: the message gets ``text`` (state "edited")."""
    return await _change_own(db, room, seq, user, cid, text, default_policy, capture)


async def delete_own(
    db: Database,
    room: int,
    seq: int,
    user: int,
    cid: str,
    *,
    default_policy: str,
    capture: str | None,
) -> Outcome:
    """The sender's delete: the message stays as a placeholder (state "deleted", no text, no
    file, no reactions) with its seq."""
    return await _change_own(db, room, seq, user, cid, None, default_policy, capture)


async def _change_own(
    db: Database,
    room: int,
    seq: int,
    user: int,
    cid: str,
    text: str | None,  # the new text; None: delete
    default_policy: str,
    capture: str | None,
) -> Outcome:
    kind = "edit" if text is not None else "delete"
    async with db.write() as conn:
        change_no, (own, category), done = await _lock(conn, room, user, cid, seq, kind)
        if done is not None:
            return done
        policy = effective_policy(own, category, default_policy)
        old = _own(await _read(conn, room, seq), user, policy)
        where = messages.c.seq == seq
        await holds.keep_held(conn, room, where, kind)
        number = await _bump(conn, room, user, cid, seq, kind, change_no)
        if text is not None:
            values = {"text": text, "state": "edited", "edited_ms": now_ms()}
        else:
            values = {"text": "", "state": "deleted", "reactions": None}
        await conn.execute(
            update(messages)
            .where(messages.c.room_id == room, where)
            .values(change_no=number, **values)
        )
        if text is None:  # the placeholder keeps no reactions and no file
            await conn.execute(
                delete(reactions).where(reactions.c.room_id == room, reactions.c.seq == seq)
            )
            await remove_covered(conn, room, [seq])
        if capture is not None:
            payload = {"seq": seq, "cid": cid, "original_text": old.text, "new_text": text}
            await record(conn, capture, [Event(kind.upper(), room, user, payload)])
        new = await _read(conn, room, seq)
        if new is None:  # purged meanwhile (the retention purge does not lock the room)
            raise NotFound
    return Outcome(new, number, False)


async def react(
    db: Database,
    room: int,
    seq: int,
    user: int,
    cid: str,
    emoji: str,
    add: bool,
    *,
    limits: Limits,
    capture: str | None,
) -> Outcome:
    """Add (or remove) ``user``'s ``emoji`` on the message; adding one already there, or
    removing one not there, changes nothing (and takes no change number)."""
    op = "react+" if add else "react-"
    async with db.write() as conn:
        change_no, _policies, done = await _lock(conn, room, user, cid, seq, op)
        if done is not None:
            return done
        message = await _read(conn, room, seq)
        if message is None or message.state in GONE:
            raise NotFound
        key = (
            (reactions.c.room_id == room)
            & (reactions.c.seq == seq)
            & (reactions.c.user_id == user)
            & (reactions.c.emoji == emoji)
        )
        there = await conn.scalar(select(func.count()).select_from(reactions).where(key))
        if bool(there) == add:
            return Outcome(message, change_no, True)
        if add:
            counts = message.reactions or {}
            if sum(counts.values()) >= limits.max_reactions:
                raise Refused(
                    "too_large", f"a message takes at most {limits.max_reactions} reactions"
                )
            if emoji not in counts and len(counts) >= limits.max_distinct:
                raise Refused(
                    "too_large", f"a message takes at most {limits.max_distinct} distinct emoji"
                )
            await conn.execute(
                insert(reactions).values(
                    room_id=room, seq=seq, user_id=user, emoji=emoji, ts=now_ms()
                )
            )
        else:
            await conn.execute(delete(reactions).where(key))
        number = await _bump(conn, room, user, cid, seq, op, change_no)
        summary = await _counts(conn, room, seq)
        await conn.execute(
            update(messages)
            .where(messages.c.room_id == room, messages.c.seq == seq)
            .values(
                reactions=json.dumps(summary, sort_keys=True) if summary else None, change_no=number
            )
        )
        if capture is not None:
            payload = {"seq": seq, "cid": cid, "emoji": emoji, "added": add}
            await record(conn, capture, [Event("REACT", room, user, payload)])
        new = await _read(conn, room, seq)
        if new is None:  # purged meanwhile (the retention purge does not lock the room)
            raise NotFound
    return Outcome(new, number, False)


async def _counts(conn: AsyncConnection, room: int, seq: int) -> dict[str, int]:
    rows = await conn.execute(
        select(reactions.c.emoji, func.count().label("n"))
        .where(reactions.c.room_id == room, reactions.c.seq == seq)
        .group_by(reactions.c.emoji)
    )
    return {r.emoji: int(r.n) for r in rows}


async def thread(
    db: Database, room: int, seq: int, after: int, limit: int
) -> tuple[Message | None, list[Message]]:
    """The message ``seq`` and the first ``limit`` answers to it after seq ``after``."""
    async with db.read() as conn:
        root = await _read(conn, room, seq)
        rows = await conn.execute(
            _select_messages()
            .where(
                messages.c.room_id == room,
                messages.c.reply_to == seq,
                messages.c.seq > after,
                messages.c.state != "removed",
            )
            .order_by(messages.c.seq)
            .limit(limit)
        )
        replies = [_message(r) for r in rows]
    if root is not None and root.state == "removed":
        root = None
    return root, replies


async def changed_since(
    db: Database, room: int, change_no: int, through_seq: int, limit: int
) -> tuple[int, list[Message]]:
    """The room's change number, and the messages at or below ``through_seq`` changed after
    ``change_no`` (oldest change first, at most ``limit``): what a resuming client missed."""
    async with db.read() as conn:
        current = await conn.scalar(select(rooms.c.change_no).where(rooms.c.id == room))
        rows = await conn.execute(
            _select_messages()
            .where(
                messages.c.room_id == room,
                messages.c.change_no > change_no,
                messages.c.seq <= through_seq,
            )
            .order_by(messages.c.change_no)
            .limit(limit)
        )
        found = [_message(r) for r in rows]
    return int(current or 0), found


async def set_edit_policy(db: Database, scope: str, ident: int, policy: str | None) -> bool:
    """Set (None: inherit) the edit policy of a room or a category; False if there is none."""
    table = rooms if scope == "room" else categories
    async with db.write() as conn:
        result = await conn.execute(
            update(table).where(table.c.id == ident).values(edit_policy=policy)
        )
    return bool(result.rowcount)


async def edit_policies(db: Database, room: int) -> tuple[str | None, str | None] | None:
    """The room's own policy and its category's (None: inherit), or None if no such room."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(rooms.c.edit_policy, categories.c.edit_policy.label("cat"))
                .join(categories, categories.c.id == rooms.c.category_id)
                .where(rooms.c.id == room)
            )
        ).one_or_none()
    return None if row is None else (row.edit_policy, row.cat)


async def room_edit_policy(db: Database, room: int, default: str) -> str | None:
    """The policy that applies in the room (as :func:`edit` and :func:`delete_own` decide it),
    or None if there is no such room."""
    found = await edit_policies(db, room)
    return None if found is None else effective_policy(*found, default)


async def category_edit_policy(db: Database, category: int) -> tuple[str | None] | None:
    """The category's own policy (in a 1-tuple), or None if there is no such category."""
    async with db.read() as conn:
        row = (
            await conn.execute(select(categories.c.edit_policy).where(categories.c.id == category))
        ).one_or_none()
    return None if row is None else (row.edit_policy,)
