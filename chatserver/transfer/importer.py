"""``chatserver import``: a file of the export format into this store, idempotently.

::

    read the directory (every record before the first message) ─► match each object:
      already imported from this source (import_ids) → reuse it
      its name is free here                          → create it
      its name is taken                              → the conflict choice:
         skip   reuse the existing user / group / add-in / category; a room is not imported
         rename create it as "NAME (import N)"
         fail   report every conflict and change nothing
    ─► create, each object with its import_ids row in one transaction
    ─► stream messages, files and chunks in batches: INSERT … ON CONFLICT DO NOTHING

Rooms keep their ``seq`` (``last_seq`` is at least the source's before any message arrives, so a
node posting meanwhile continues after it) and messages their client ids, so clients and
compliance agree. Killed at any point, a re-run of the same file completes the import and
creates nothing twice. Imported directly into the store: run it with the deployment's nodes
stopped (the migration path), or restart them after it, so their caches learn of the new rooms.
"""

from __future__ import annotations

import gzip
import logging
import re
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..passwords import hash_password
from ..store.db import Database
from ..store.schema import (
    addins,
    categories,
    category_principals,
    file_chunks,
    files,
    group_members,
    groups,
    import_ids,
    messages,
    room_principals,
    rooms,
    users,
)
from . import format as fmt

log = logging.getLogger(__name__)

BATCH = 1000
CHOICES = ("skip", "rename", "fail")
HASH_RE = re.compile(r"^scrypt\$\d+\$\d+\$\d+\$[0-9a-f]{1,128}\$[0-9a-f]{1,256}$")
NAMED: dict[str, Table] = {
    "user": users,
    "group": groups,
    "addin": addins,
    "category": categories,
    "room": rooms,
}


class ImportConflict(Exception):
    """``fail`` was chosen and names are taken: nothing was changed."""

    def __init__(self, report: ImportReport) -> None:
        super().__init__(f"{len(report.conflicts)} names are taken; nothing was imported")
        self.report = report


@dataclass(frozen=True, slots=True)
class Conflict:
    kind: str
    name: str
    action: str  # skipped (reused, or a room not imported) | renamed | failed
    new_name: str | None = None

    def line(self) -> str:
        if self.action == "renamed":
            return f"conflict: {self.kind} {self.name!r} exists: imported as {self.new_name!r}"
        if self.action == "skipped" and self.kind == "room":
            return f"conflict: room {self.name!r} exists: not imported (nor its messages)"
        if self.action == "skipped":
            return f"conflict: {self.kind} {self.name!r} exists: the existing one is used"
        return f"conflict: {self.kind} {self.name!r} exists"


@dataclass(slots=True)
class ImportReport:
    source: str = ""
    created: Counter[str] = field(default_factory=Counter)
    reused: Counter[str] = field(default_factory=Counter)  # imported before from this source
    conflicts: list[Conflict] = field(default_factory=list)
    read: Counter[str] = field(default_factory=Counter)  # records read, by type
    complete: bool = False  # the file's end record was read and its counts match

    def lines(self) -> list[str]:
        out = [f"source: {self.source}"]
        out += [c.line() for c in self.conflicts]
        for kind in NAMED:
            plural = "categories" if kind == "category" else f"{kind}s"
            out.append(f"{plural}: {self.created[kind]} created, {self.reused[kind]} already here")
        out.append(f"messages: {self.read['message']} read (stored unless already there)")
        out.append(f"files: {self.read['file']} read, {self.created['file']} created")
        out.append("result: complete" if self.complete else "result: INCOMPLETE (truncated file)")
        return out


def records(stream: IO[bytes]) -> Iterator[Any]:
    """The records of a gzip-compressed export, parsed and checked one line at a time."""
    with gzip.GzipFile(fileobj=stream, mode="rb") as lines:
        number = 0
        while True:
            line = lines.readline(fmt.MAX_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > fmt.MAX_LINE:
                raise fmt.FormatError(f"line {number}: longer than {fmt.MAX_LINE} bytes")
            yield fmt.loads(line, number)


class _Importer:
    def __init__(self, db: Database, on_conflict: str) -> None:
        if on_conflict not in CHOICES:
            raise ValueError(f"on_conflict must be one of {CHOICES}")
        self.db = db
        self.on_conflict = on_conflict
        self.report = ImportReport()
        self.ids: dict[tuple[str, int], int] = {}  # (kind, source id) -> id here
        self.skipped_rooms: set[int] = set()
        self.last_seqs: dict[int, int] = {}  # source room id -> its last_seq in the file
        self.locked_hash = ""

    def insert(self, table: Table) -> Any:
        return (pg_insert if self.db.is_postgres else sqlite_insert)(table)

    async def known(self, source: str) -> None:
        """What earlier runs imported from ``source`` and is still here."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(import_ids).where(import_ids.c.source == source))
            for r in rows:
                self.ids[(r.kind, int(r.source_id))] = int(r.target_id)
            for kind, table in NAMED.items():
                mine = [t for (k, _), t in self.ids.items() if k == kind]
                present = {
                    int(i)
                    for start in range(0, len(mine), BATCH)
                    for i in (
                        await conn.execute(
                            select(table.c.id).where(table.c.id.in_(mine[start : start + BATCH]))
                        )
                    ).scalars()
                }
                for key, target in list(self.ids.items()):
                    if key[0] == kind and target not in present:
                        del self.ids[key]  # deleted here since: import it again

    async def plan(self, directory: list[Any]) -> dict[tuple[str, int], str]:
        """The name each new object gets (conflicts resolved); raises ImportConflict for fail."""
        names: dict[tuple[str, int], str] = {}
        for kind, table in NAMED.items():
            wanted = [r for r in directory if r.T == kind and (kind, r.id) not in self.ids]
            async with self.db.read() as conn:
                taken = set()
                for start in range(0, len(wanted), BATCH):
                    part = [r.name for r in wanted[start : start + BATCH]]
                    stmt = select(table.c.name).where(table.c.name.in_(part))
                    taken |= set((await conn.execute(stmt)).scalars())
                for r in wanted:
                    if r.name not in taken:
                        names[(kind, r.id)] = r.name
                        taken.add(r.name)
                        continue
                    same = await self._same_category(conn, r) if kind == "category" else None
                    if same is not None:  # e.g. "General", which every store starts with
                        self.ids[(kind, r.id)] = same
                        self.report.reused[kind] += 1
                        continue
                    if self.on_conflict == "fail":
                        self.report.conflicts.append(Conflict(kind, r.name, "failed"))
                    elif self.on_conflict == "skip":
                        self.report.conflicts.append(Conflict(kind, r.name, "skipped"))
                        if kind == "room":
                            self.skipped_rooms.add(r.id)
                        else:
                            stmt = select(table.c.id).where(table.c.name == r.name)
                            self.ids[(kind, r.id)] = int((await conn.execute(stmt)).scalar_one())
                    else:
                        new = await self._free_name(conn, table, r.name, taken)
                        names[(kind, r.id)] = new
                        taken.add(new)
                        self.report.conflicts.append(Conflict(kind, r.name, "renamed", new))
        if self.on_conflict == "fail" and self.report.conflicts:
            raise ImportConflict(self.report)
        return names

    async def _same_category(self, conn: Any, r: fmt.Category) -> int | None:
        """An existing category with the same name and settings: the same one, not a conflict."""
        c = categories.c
        stmt = select(c.id).where(
            c.name == r.name,
            c.description == r.description,
            c.invitations == r.invitations,
            c.file_upload == r.file_upload,
            c.chat_history == r.chat_history,
        )
        found = (await conn.execute(stmt)).scalar_one_or_none()
        return None if found is None else int(found)

    async def _free_name(self, conn: Any, table: Table, name: str, taken: set[str]) -> str:
        for n in range(1, 10_000):
            candidate = f"{name[: fmt.MAX_NAME - 16]} (import {n})"
            if candidate in taken:
                continue
            stmt = select(table.c.id).where(table.c.name == candidate)
            if (await conn.execute(stmt)).first() is None:
                return candidate
        raise ImportConflict(self.report)

    async def create(self, kind: str, source_id: int, values: dict[str, Any]) -> None:
        """Insert one object and its import_ids row in one transaction."""
        table = NAMED.get(kind, files)
        async with self.db.write() as conn:
            new = int(
                (
                    await conn.execute(insert(table).values(**values).returning(table.c.id))
                ).scalar_one()
            )
            await conn.execute(
                insert(import_ids).values(
                    source=self.report.source, kind=kind, source_id=source_id, target_id=new
                )
            )
        self.ids[(kind, source_id)] = new
        self.report.created[kind] += 1

    def target(self, kind: str, source_id: int | None) -> int | None:
        if source_id is None:
            return None
        return self.ids.get((kind, source_id))

    def principal(self, kind: str, source_id: int) -> int | None:
        return 0 if kind == "everyone" else self.target(kind, source_id)

    async def directory(self, header: fmt.Header, directory: list[Any]) -> None:
        for r in directory:
            if r.T in NAMED and (r.T, r.id) in self.ids:
                self.report.reused[r.T] += 1
            if isinstance(r, fmt.Room):
                self.last_seqs[r.id] = r.last_seq
        names = await self.plan(directory)
        for r in directory:
            name = names.get((r.T, getattr(r, "id", -1)))
            if name is None:
                continue
            if isinstance(r, fmt.User):
                await self.create("user", r.id, self._user(r, name))
            elif isinstance(r, fmt.Group):
                await self.create("group", r.id, _values(r, name, "id"))
            elif isinstance(r, fmt.Addin):
                await self.create("addin", r.id, _values(r, name, "id"))
            elif isinstance(r, fmt.Category):
                await self.create("category", r.id, _values(r, name, "id"))
            elif isinstance(r, fmt.Room):
                await self._room(r, name)
        await self._links(directory)

    def _user(self, r: fmt.User, name: str) -> dict[str, Any]:
        if r.password_hash is not None and not HASH_RE.match(r.password_hash):
            raise fmt.FormatError(f"user {r.name!r}: the password hash is not a scrypt hash")
        if r.password_hash is None and not self.locked_hash:
            # Nobody knows this password: an imported user signs in after a reset. Verifying
            # against it costs what any password check costs (no timing difference).
            self.locked_hash = hash_password(secrets.token_hex(32))
        return {
            "name": name,
            "display_name": r.display_name,
            "password_hash": r.password_hash or self.locked_hash,
            "is_admin": r.is_admin,
            "created_ms": r.created_ms,
            "persistent_chat_enabled": r.persistent_chat_enabled,
        }

    async def _room(self, r: fmt.Room, name: str) -> None:
        category = self.target("category", r.category)
        if category is None:
            raise fmt.FormatError(f"room {r.name!r}: its category {r.category} is not in the file")
        values = _values(r, name, "id", "category", "addin")
        values.update(category_id=category, addin_id=self.target("addin", r.addin))
        await self.create("room", r.id, values)

    async def _links(self, directory: list[Any]) -> None:
        """Group members and category / room principals (existing ones left as they are)."""
        rows: dict[Table, list[dict[str, Any]]] = {
            group_members: [],
            category_principals: [],
            room_principals: [],
        }
        for r in directory:
            if isinstance(r, fmt.GroupMember):
                group, member = self.target("group", r.group), self.target(r.kind, r.member)
                if group is not None and member is not None:
                    rows[group_members].append(
                        {"group_id": group, "member_kind": r.kind, "member_id": member}
                    )
            elif isinstance(r, fmt.Principal):
                on = self.target(r.on, r.id)
                who = self.principal(r.kind, r.principal)
                if on is None or who is None or (r.on == "room" and r.id in self.skipped_rooms):
                    continue
                table = category_principals if r.on == "category" else room_principals
                rows[table].append(
                    {
                        f"{r.on}_id": on,
                        "role": r.role,
                        "principal_kind": r.kind,
                        "principal_id": who,
                    }
                )
        for table, values in rows.items():
            for start in range(0, len(values), BATCH):
                async with self.db.write() as conn:
                    stmt = self.insert(table).on_conflict_do_nothing()
                    await conn.execute(stmt, values[start : start + BATCH])

    async def messages(self, batch: list[fmt.Message]) -> None:
        values = []
        for m in batch:
            room, sender = self.target("room", m.room), self.target("user", m.sender)
            if m.room in self.skipped_rooms or room is None:
                continue
            if sender is None:
                raise fmt.FormatError(f"message {m.room}/{m.seq}: sender {m.sender} not in file")
            if not 0 < m.seq <= self.last_seqs[m.room]:
                raise fmt.FormatError(f"message {m.room}/{m.seq}: seq beyond the room's last_seq")
            values.append(
                {
                    "room_id": room,
                    "seq": m.seq,
                    "sender_id": sender,
                    "cid": m.cid,
                    "text": m.text,
                    "ts": m.ts,
                    "state": m.state,
                }
            )
        if values:
            async with self.db.write() as conn:
                await conn.execute(self.insert(messages).on_conflict_do_nothing(), values)

    async def file(self, f: fmt.File) -> None:
        room, uploader = self.target("room", f.room), self.target("user", f.uploader)
        if f.room in self.skipped_rooms or room is None or ("file", f.id) in self.ids:
            return
        if uploader is None:
            raise fmt.FormatError(f"file {f.id}: uploader {f.uploader} not in the file")
        if not 0 < f.seq <= self.last_seqs[f.room]:
            raise fmt.FormatError(f"file {f.id}: seq beyond the room's last_seq")
        values = _values(f, f.name, "id", "room", "uploader")
        values.update(room_id=room, uploader_id=uploader, node="")
        await self.create("file", f.id, values)

    async def chunks(self, batch: list[fmt.Chunk]) -> None:
        values = []
        for c in batch:
            target = self.target("file", c.file)
            if target is None:
                continue
            try:
                data = c.raw()
            except ValueError:
                raise fmt.FormatError(f"chunk {c.file}/{c.idx}: not base64") from None
            values.append({"file_id": target, "idx": c.idx, "data": data})
        if values:
            async with self.db.write() as conn:
                await conn.execute(self.insert(file_chunks).on_conflict_do_nothing(), values)

    async def raise_last_seqs(self, directory: list[Any]) -> None:
        """Every imported room's last_seq is at least the source's (before its messages)."""
        for r in directory:
            room = self.target("room", r.id) if isinstance(r, fmt.Room) else None
            if room is None or r.id in self.skipped_rooms:
                continue
            async with self.db.write() as conn:
                await conn.execute(
                    update(rooms)
                    .where(rooms.c.id == room, rooms.c.last_seq < r.last_seq)
                    .values(last_seq=r.last_seq)
                )


def _values(record: Any, name: str, *drop: str) -> dict[str, Any]:
    import dataclasses

    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    for key in drop:
        values.pop(key)
    values["name"] = name
    return values


async def import_file(db: Database, stream: IO[bytes], *, on_conflict: str) -> ImportReport:
    """Import an export file (see the module docstring); returns what was done."""
    importer = _Importer(db, on_conflict)
    report = importer.report
    it = records(stream)
    header = next(it, None)
    if not isinstance(header, fmt.Header) or header.format != fmt.FORMAT:
        raise fmt.FormatError("line 1: not a chatserver export (no header)")
    if header.version != fmt.VERSION:
        raise fmt.FormatError(f"export format version {header.version} is not {fmt.VERSION}")
    report.read["header"] += 1
    report.source = header.source
    await importer.known(header.source)
    directory: list[Any] = []
    pending: list[Any] = []
    end: fmt.End | None = None
    started = False
    for record in it:
        report.read[record.T] += 1
        if isinstance(record, fmt.End):
            end = record
            break
        if not started and isinstance(record, fmt.Message | fmt.File | fmt.Chunk):
            started = True
            await importer.directory(header, directory)
            await importer.raise_last_seqs(directory)
        if not started:
            directory.append(record)
            continue
        if pending and (pending[0].T != record.T or len(pending) >= BATCH):
            await _flush(importer, pending)
            pending = []
        if isinstance(record, fmt.File):
            await _flush(importer, pending)
            pending = []
            await importer.file(record)
        else:
            pending.append(record)
    if not started:
        await importer.directory(header, directory)
        await importer.raise_last_seqs(directory)
    await _flush(importer, pending)
    expected = {k: v for k, v in report.read.items() if k != "end"}
    report.complete = end is not None and end.counts == expected
    if end is not None and next(it, None) is not None:
        raise fmt.FormatError("records after the end record")
    if not report.complete:
        log.warning("import from %s: the file is incomplete (truncated or damaged)", header.source)
    return report


async def _flush(importer: _Importer, pending: list[Any]) -> None:
    if not pending:
        return
    if isinstance(pending[0], fmt.Message):
        await importer.messages(pending)
    elif isinstance(pending[0], fmt.Chunk):
        await importer.chunks(pending)
    else:
        raise fmt.FormatError(f"a {pending[0].T} record after the first message")
