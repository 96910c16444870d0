"""``chatserver export``: the store to a file of the export format (:mod:`.format`), streamed.

Memory stays bounded whatever the size of the store: messages are read in keyset pages of
:data:`PAGE` rows per room (``seq > last``), file chunks :data:`CHUNK_PAGE` at a time, each page
in its own short read transaction, and every line goes straight into the gzip stream. The
directory (users, groups, categories, rooms, add-ins) is read in keyset pages too.

A room is exported up to the ``last_seq`` read with it, so a room's record and its messages
agree even while the deployment keeps running (later messages are simply not in this export).
"""

from __future__ import annotations

import gzip
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError

from ..store.db import Database, now_ms
from ..store.schema import (
    addins,
    categories,
    category_principals,
    deployment,
    file_chunks,
    files,
    group_members,
    groups,
    messages,
    room_principals,
    rooms,
    users,
)
from . import format as fmt

PAGE = 5000
CHUNK_PAGE = 8
SCOPES = ("all", "category", "room")


class ExportError(Exception):
    """The export cannot be made as asked (an unknown or ambiguous scope)."""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    scope: str = "all"  # all | category | room
    name: str | None = None  # the category's or room's name (or "#ID" for a room)
    within: str | None = None  # scope "room": the room must be in the category of this name
    since_ms: int | None = None  # messages and files from this time …
    until_ms: int | None = None  # … up to (excluding) this one
    messages: bool = True
    files: bool = False
    password_hashes: bool = False


async def deployment_id(db: Database) -> str:
    """This store's identity, made (once) by the first export."""
    async with db.read() as conn:
        found = (await conn.execute(select(deployment.c.uuid))).scalar_one_or_none()
    if found is not None:
        return str(found)
    try:
        async with db.write() as conn:
            values = {"id": 1, "uuid": str(uuid.uuid4()), "created_ms": now_ms()}
            await conn.execute(insert(deployment).values(**values))
    except IntegrityError:
        pass  # another export made it at the same moment
    async with db.read() as conn:
        return str((await conn.execute(select(deployment.c.uuid))).scalar_one())


async def _pages(db: Database, table: Table, key: Any, where: Any = None) -> AsyncIterator[Any]:
    """Every row of ``table`` in ``key`` order, a page per read transaction."""
    last: Any = None
    while True:
        stmt = select(table).order_by(key).limit(PAGE)
        if where is not None:
            stmt = stmt.where(where)
        if last is not None:
            stmt = stmt.where(key > last)
        async with db.read() as conn:
            page = list(await conn.execute(stmt))
        for row in page:
            yield row
        if len(page) < PAGE:
            return
        last = getattr(page[-1], key.name)


async def _scope_rooms(db: Database, options: ExportOptions) -> tuple[set[int], list[Any]]:
    """The categories and rooms in scope: (category ids, room rows in id order)."""
    async with db.read() as conn:
        if options.scope == "all":
            room_rows = list(await conn.execute(select(rooms).order_by(rooms.c.id)))
            every = {int(c) for c in (await conn.execute(select(categories.c.id))).scalars()}
            return every, room_rows
        if options.scope == "category":
            cat = (
                await conn.execute(select(categories.c.id).where(categories.c.name == options.name))
            ).scalar_one_or_none()
            if cat is None:
                raise ExportError(f"no category named {options.name!r}")
            stmt = select(rooms).where(rooms.c.category_id == cat).order_by(rooms.c.id)
            room_rows = list(await conn.execute(stmt))
            return {int(cat)}, room_rows
        if options.scope == "room":
            name = options.name or ""
            if name.startswith("#") and name[1:].isdigit():
                stmt = select(rooms).where(rooms.c.id == int(name[1:]))
            else:
                stmt = select(rooms).where(rooms.c.name == name)
            if options.within is not None:
                stmt = stmt.join(categories, categories.c.id == rooms.c.category_id).where(
                    categories.c.name == options.within
                )
            room_rows = list(await conn.execute(stmt))
            if not room_rows:
                where = "" if options.within is None else f" in category {options.within!r}"
                raise ExportError(f"no room named {name!r}{where}")
            if len(room_rows) > 1:
                ids = ", ".join(f"#{r.id}" for r in room_rows)
                raise ExportError(f"{len(room_rows)} rooms are named {name!r}: give one of {ids}")
        if options.scope not in ("category", "room"):
            raise ExportError(f"scope {options.scope!r} is not one of {SCOPES}")
    return {int(r.category_id) for r in room_rows}, room_rows


class _Out:
    def __init__(self, stream: gzip.GzipFile) -> None:
        self.stream = stream
        self.counts: Counter[str] = Counter()

    def write(self, record: Any) -> None:
        self.stream.write(fmt.dumps(record).encode())
        self.counts[record.T] += 1


async def export(db: Database, target: IO[bytes], options: ExportOptions) -> dict[str, int]:
    """Write the export to ``target`` (a binary file, gzip-compressed here); returns the number
    of records of each type."""
    source = await deployment_id(db)
    category_ids, room_rows = await _scope_rooms(db, options)
    with gzip.GzipFile(fileobj=target, mode="wb", mtime=0, compresslevel=6) as stream:
        out = _Out(stream)
        out.write(
            fmt.Header(
                fmt.FORMAT,
                fmt.VERSION,
                source,
                now_ms(),
                options.scope,
                options.name,
                options.since_ms,
                options.until_ms,
                options.messages,
                options.files,
                options.password_hashes,
            )
        )
        await _directory(db, out, options, category_ids, room_rows)
        if options.messages:
            for room in room_rows:
                await _messages(db, out, options, room)
        if options.files:
            await _files(db, out, options, room_rows)
        out.write(fmt.End(dict(sorted(out.counts.items()))))
        return dict(out.counts)


async def _directory(
    db: Database, out: _Out, options: ExportOptions, category_ids: set[int], room_rows: list[Any]
) -> None:
    async for u in _pages(db, users, users.c.id):
        enabled = u.persistent_chat_enabled
        out.write(
            fmt.User(
                u.id,
                u.name,
                u.display_name,
                bool(u.is_admin),
                u.created_ms,
                None if enabled is None else bool(enabled),
                u.password_hash if options.password_hashes else None,
            )
        )
    async for g in _pages(db, groups, groups.c.id):
        out.write(fmt.Group(g.id, g.name, g.description, g.created_ms))
    async with db.read() as conn:
        members = await conn.execute(
            select(group_members).order_by(
                group_members.c.group_id, group_members.c.member_kind, group_members.c.member_id
            )
        )
        for m in members:
            out.write(fmt.GroupMember(m.group_id, m.member_kind, m.member_id))
    async for a in _pages(db, addins, addins.c.id):
        out.write(fmt.Addin(a.id, a.name, a.url, a.created_ms))
    async with db.read() as conn:
        stmt = select(categories).where(categories.c.id.in_(sorted(category_ids)))
        for c in await conn.execute(stmt.order_by(categories.c.id)):
            out.write(
                fmt.Category(
                    c.id,
                    c.name,
                    c.description,
                    bool(c.invitations),
                    bool(c.file_upload),
                    bool(c.chat_history),
                    c.created_ms,
                )
            )
        cp = category_principals
        stmt = select(cp).where(cp.c.category_id.in_(sorted(category_ids)))
        stmt = stmt.order_by(cp.c.category_id, cp.c.role, cp.c.principal_kind, cp.c.principal_id)
        for p in await conn.execute(stmt):
            out.write(
                fmt.Principal("category", p.category_id, p.role, p.principal_kind, p.principal_id)
            )
    for r in room_rows:
        out.write(
            fmt.Room(
                r.id,
                r.name,
                r.description,
                r.category_id,
                r.last_seq,
                r.created_ms,
                r.privacy,
                r.type,
                bool(r.disabled),
                r.invitations,
                r.addin_id,
            )
        )
    rp = room_principals
    for r in room_rows:
        async with db.read() as conn:
            stmt = select(rp).where(rp.c.room_id == r.id)
            stmt = stmt.order_by(rp.c.role, rp.c.principal_kind, rp.c.principal_id)
            for p in await conn.execute(stmt):
                out.write(fmt.Principal("room", r.id, p.role, p.principal_kind, p.principal_id))


def _in_range(column: Any, options: ExportOptions) -> list[Any]:
    where = []
    if options.since_ms is not None:
        where.append(column >= options.since_ms)
    if options.until_ms is not None:
        where.append(column < options.until_ms)
    return where


async def _messages(db: Database, out: _Out, options: ExportOptions, room: Any) -> None:
    last = 0
    while True:
        stmt = (
            select(messages)
            .where(
                messages.c.room_id == room.id,
                messages.c.seq > last,
                messages.c.seq <= room.last_seq,
                *_in_range(messages.c.ts, options),
            )
            .order_by(messages.c.seq)
            .limit(PAGE)
        )
        async with db.read() as conn:
            page = list(await conn.execute(stmt))
        for m in page:
            out.write(fmt.Message(m.room_id, m.seq, m.sender_id, m.cid, m.text, m.ts, m.state))
        if len(page) < PAGE:
            return
        last = page[-1].seq


async def _files(db: Database, out: _Out, options: ExportOptions, room_rows: list[Any]) -> None:
    """The scope's files in id order (an import into an empty store gives them the same ids)."""
    last_seqs = {int(r.id): int(r.last_seq) for r in room_rows}
    where = files.c.state.in_(["ready", "removed"]) & _all(_in_range(files.c.created_ms, options))
    if options.scope != "all":
        where = where & files.c.room_id.in_(sorted(last_seqs))
    async for f in _pages(db, files, files.c.id, where):
        if f.seq is None or f.seq > last_seqs.get(int(f.room_id), 0):
            continue  # stored after the room was read: in the next export
        out.write(
            fmt.File(
                f.id,
                f.room_id,
                f.seq,
                f.uploader_id,
                f.name,
                f.media_type,
                f.size,
                f.sha256,
                f.chunk_size,
                f.created_ms,
                f.state,
            )
        )
        if f.state != "ready":
            continue
        idx = -1
        while True:
            async with db.read() as conn:
                page = list(
                    await conn.execute(
                        select(file_chunks.c.idx, file_chunks.c.data)
                        .where(file_chunks.c.file_id == f.id, file_chunks.c.idx > idx)
                        .order_by(file_chunks.c.idx)
                        .limit(CHUNK_PAGE)
                    )
                )
            for c in page:
                out.write(fmt.Chunk(f.id, c.idx, _b64(bytes(c.data))))
            if len(page) < CHUNK_PAGE:
                break
            idx = page[-1].idx


def _all(conditions: list[Any]) -> Any:
    from sqlalchemy import and_, true

    return and_(true(), *conditions)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
