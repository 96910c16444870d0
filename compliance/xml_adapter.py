"""The XML adapter: compliance events in the reference system's format (conversations.xsd).

One export pass takes the events after the adapter's cursor, in chunks of at most
:data:`CHUNK` events; each chunk becomes one file (or, with ``one_room_per_file``, one file per
room) and moves the cursor, in one compliance-database transaction that holds the cursor's row
lock — so two adapter processes never export the same event. A file appears under its final
name only once the cursor that covers it is durable, so a consumer of the output folder sees
each event exactly once, and never sees a file change or vanish:

    lock cursor ─► finish or discard leftovers ─► read events ─► write files under temporary
    names (fsync) ─► move cursor, add to counts ─► commit ─► rename to the final names (fsync)

Killed before the commit, a pass leaves only temporary files above the cursor: the next pass
deletes them and exports those events again (perhaps in a larger chunk). Killed after the
commit, it leaves temporary files at or below the cursor: complete (fsynced before the commit),
so the next pass renames them. With ``[compliance] signing_key`` each chunk also carries a
signed checkpoint of its last event (``chat-F-L.checkpoint.json``).

``CHATSERVER_TEST_EXPORT_STOP=before-commit|before-rename`` (test-only) makes a pass print
``STOPPED <point>`` and wait there, so a test can kill it with SIGKILL inside the window.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from chatserver.config import Config
from chatserver.store.db import Database, now_ms
from chatserver.store.schema import categories, rooms, users

from . import checkpoint as checkpoints
from .schema import add_counts, cursors, events

NAME = "xml"
CHUNK = 10_000
CHANNEL_URI = "ma-chan://chatserver/room/{}"
ADMIN_URI = "ma-chan://chatserver/administration"
FILE_RE = re.compile(r"^chat-(\d{12})-(\d{12})(-[a-z0-9-]+)?\.(xml|checkpoint\.json)$")
TMP_RE = re.compile(r"^\.(chat-\d{12}-\d{12}.*)\.tmp$")
STOP_ENV = "CHATSERVER_TEST_EXPORT_STOP"
# .NET ticks (100 ns) at 1970-01-01 UTC: the reference format's "long" times.
TICKS_1970 = 621_355_968_000_000_000
# Characters XML 1.0 cannot carry; replaced by U+FFFD in the output (the database keeps them).
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(slots=True)
class ExportResult:
    events: int = 0
    files: list[Path] = field(default_factory=list)


def _text(value: str) -> str:
    return _INVALID_XML.sub("\ufffd", value)


def _time(parent: ET.Element, tag: str, ms: int) -> None:
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    ET.SubElement(
        parent,
        tag,
        since1970=str(ms),
        string=stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z",
        long=str(TICKS_1970 + ms * 10_000),
    )


class _Directory:
    """Room and user facts from the content store, for names and details."""

    def __init__(self) -> None:
        self.rooms: dict[int, Any] = {}
        self.users: dict[int, Any] = {}

    async def load(self, content: Database, room_ids: set[int], user_ids: set[int]) -> None:
        async with content.read() as conn:
            if room_ids:
                stmt = (
                    select(
                        rooms.c.id,
                        rooms.c.name,
                        rooms.c.description,
                        rooms.c.category_id,
                        rooms.c.privacy,
                        rooms.c.type,
                        rooms.c.disabled,
                        categories.c.name.label("category_name"),
                        categories.c.chat_history,
                    )
                    .join(categories, categories.c.id == rooms.c.category_id)
                    .where(rooms.c.id.in_(sorted(room_ids)))
                )
                self.rooms = {r.id: r for r in await conn.execute(stmt)}
            if user_ids:
                who = select(users.c.id, users.c.name, users.c.display_name, users.c.is_admin)
                who = who.where(users.c.id.in_(sorted(user_ids)))
                self.users = {r.id: r for r in await conn.execute(who)}


def _payload(row: Any) -> dict[str, Any]:
    try:
        value = json.loads(row.payload)
    except ValueError:
        return {"raw": row.payload}
    return value if isinstance(value, dict) else {"value": value}


class _Builder:
    def __init__(self, config: Config, directory: _Directory, chunk: list[Any]) -> None:
        self.options = config.compliance
        self.directory = directory
        # Names of rooms no longer in the store, from the chunk's own events.
        self.room_names: dict[int, str] = {}
        for row in chunk:
            name = _payload(row).get("name")
            if row.room_id is not None and isinstance(name, str):
                self.room_names.setdefault(row.room_id, name)

    def channel(self, parent: ET.Element, room_id: int | None) -> None:
        if room_id is None:
            ET.SubElement(
                parent, "Channel", uri=ADMIN_URI, name="(administration)", islogged="true"
            )
            return
        room = self.directory.rooms.get(room_id)
        name = room.name if room else self.room_names.get(room_id, f"room {room_id}")
        logged = bool(room.chat_history) if room else True
        attrs = {"uri": CHANNEL_URI.format(room_id), "name": _text(name), "islogged": _bool(logged)}
        if self.options.add_room_details and room is not None:
            attrs.update(
                description=_text(room.description),
                category=str(room.category_id),
                categoryName=_text(room.category_name),
                privacy=room.privacy,
                roomType=room.type,
                disabled=_bool(bool(room.disabled)),
            )
        ET.SubElement(parent, "Channel", attrs)

    def message(self, parent: ET.Element, tag: str, row: Any) -> None:
        payload = _payload(row)
        if row.kind in ("REPLACE", "EDIT"):
            content = payload.get("new_text") or payload.get("text") or ""
        elif row.kind == "REACT":
            content = payload.get("emoji") or ""
        elif row.kind == "SEARCH":  # what was searched for; the scope and hits are in details
            content = payload.get("query") or ""
        else:
            content = payload.get("text") or ""
        attrs = {
            "type": row.kind,
            "content": _text(content if isinstance(content, str) else json.dumps(content)),
            "id": str(row.seq),
            "eventId": row.event_id,
            "node": _text(row.node),
        }
        if isinstance(payload.get("seq"), int):  # CHAT, REMOVE, REPLACE: the message's seq
            attrs["roomSeq"] = str(payload["seq"])
        if row.kind != "CHAT" and payload:
            attrs["details"] = _text(json.dumps(payload, separators=(",", ":"), sort_keys=True))
        element = ET.SubElement(parent, tag, attrs)
        self.sender(element, row, payload)
        _time(element, "DateTimeUTC", row.ts_ms)

    def sender(self, parent: ET.Element, row: Any, payload: dict[str, Any]) -> None:
        if row.user_id is None:
            ET.SubElement(
                parent, "Sender", UserName="(system)", id="0", email="", internal="true", uri=""
            )
            return
        user = self.directory.users.get(row.user_id)
        login = user.name if user else str(payload.get("sender") or f"user {row.user_id}")
        display = user.display_name if user else login
        attrs = {
            "UserName": _text(display),
            "id": str(row.user_id),
            "email": "",
            "internal": "true",
            "uri": _text(f"user:{login}"),
        }
        if self.options.add_user_details:
            attrs["login"] = _text(login)
            if user is not None:
                attrs["admin"] = _bool(bool(user.is_admin))
        ET.SubElement(parent, "Sender", attrs)

    def conversations(self, rows: list[Any], first: int, last: int) -> ET.Element:
        root = ET.Element("Conversations", firstId=str(first), lastId=str(last))
        by_room: dict[int | None, list[Any]] = {}
        for row in rows:
            by_room.setdefault(row.room_id, []).append(row)
        for room_id, room_rows in by_room.items():  # in order of each room's first event
            conversation = ET.SubElement(root, "Conversation")
            self.channel(conversation, room_id)
            self.message(conversation, "FirstMessage", room_rows[0])
            messages = ET.SubElement(conversation, "Messages")
            for row in room_rows:
                self.message(messages, "Message", row)
            _time(conversation, "StartTimeUTC", min(r.ts_ms for r in room_rows))
            _time(conversation, "EndTimeUTC", max(r.ts_ms for r in room_rows))
        return root

    def manifest(self, rows: list[Any], conversations: str) -> ET.Element:
        root = ET.Element("Attachments", conversations=conversations)
        for row in rows:
            if row.kind not in ("FILEUPLOAD", "FILEDOWNLOAD"):
                continue
            payload = _payload(row)
            attrs = {
                "messageId": str(row.seq),
                "type": row.kind,
                "channelUri": CHANNEL_URI.format(row.room_id),
                "file": _text(str(payload.get("file", ""))),
                "name": _text(str(payload.get("name", ""))),
            }
            if isinstance(payload.get("size"), int):
                attrs["size"] = str(payload["size"])
            ET.SubElement(root, "Attachment", attrs)
        return root


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_temporary(path: Path, data: bytes | ET.Element) -> None:
    """Write the temporary file of ``path`` and fsync it (not yet visible under ``path``)."""
    with open(_tmp(path), "wb") as out:
        if isinstance(data, bytes):
            out.write(data)
        else:
            ET.ElementTree(data).write(out, encoding="UTF-8", xml_declaration=True)
        out.flush()
        os.fsync(out.fileno())


def publish(paths: list[Path]) -> None:
    """Rename the temporary files of ``paths`` to their final names, then fsync the folder. A
    file another pass already published is left as it is."""
    for path in paths:
        try:
            os.replace(_tmp(path), path)
        except FileNotFoundError:
            if not path.exists():
                raise
    if paths:
        fd = os.open(paths[0].parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: Path, root: ET.Element) -> None:
    """Write ``root`` to ``path``: a temporary name, fsync, rename, fsync of the directory."""
    write_temporary(path, root)
    publish([path])


def _settle_leftovers(directory: Path, last_seq: int) -> None:
    """Temporary files of a pass that committed (their range ends at or below the cursor) are
    complete: publish them. Those of a pass that did not commit are discarded. Files under
    their final name are never touched."""
    finished: list[Path] = []
    for path in directory.iterdir():
        tmp = TMP_RE.match(path.name)
        if tmp is None:
            continue
        match = FILE_RE.match(tmp.group(1))
        if match is not None and int(match.group(2)) <= last_seq:
            finished.append(directory / tmp.group(1))
        else:
            path.unlink(missing_ok=True)
    publish(sorted(finished))


def _test_stop(point: str) -> None:
    """Test-only: wait at ``point`` forever when CHATSERVER_TEST_EXPORT_STOP names it."""
    if os.environ.get(STOP_ENV) == point:
        print(f"STOPPED {point}", flush=True)
        sys.stdout.flush()
        while True:
            time.sleep(3600)


async def export(config: Config, comp: Database, content: Database) -> ExportResult:
    """Export every event after the cursor; returns how many events and which files."""
    result = ExportResult()
    while True:
        done = await _export_chunk(config, comp, content, result)
        if done:
            return result


async def _export_chunk(
    config: Config, comp: Database, content: Database, result: ExportResult
) -> bool:
    options = config.compliance
    directory = Path(options.output_dir)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    async with comp.write() as conn:
        cursor = (
            await conn.execute(select(cursors).where(cursors.c.adapter == NAME).with_for_update())
        ).one()
        last_seq = int(cursor.last_seq)
        await asyncio.to_thread(_settle_leftovers, directory, last_seq)
        chunk = list(
            await conn.execute(
                select(events).where(events.c.seq > last_seq).order_by(events.c.seq).limit(CHUNK)
            )
        )
        if not chunk:
            return True
        lookup = _Directory()
        await lookup.load(
            content,
            {r.room_id for r in chunk if r.room_id is not None},
            {r.user_id for r in chunk if r.user_id is not None},
        )
        builder = _Builder(config, lookup, chunk)
        first, last = int(chunk[0].seq), int(chunk[-1].seq)
        stem = f"chat-{first:012d}-{last:012d}"
        groups: list[tuple[str, list[Any]]]
        if options.one_room_per_file:
            by_room: dict[int | None, list[Any]] = {}
            for row in chunk:
                by_room.setdefault(row.room_id, []).append(row)
            groups = [
                (f"{stem}-{'admin' if room is None else f'room-{room}'}", rows)
                for room, rows in by_room.items()
            ]
        else:
            groups = [(stem, chunk)]
        written: list[Path] = []
        for name, rows in groups:
            path = directory / f"{name}.xml"
            await asyncio.to_thread(write_temporary, path, builder.conversations(rows, first, last))
            written.append(path)
            if options.attachments_manifest:
                manifest = directory / f"{name}-attachments.xml"
                await asyncio.to_thread(
                    write_temporary, manifest, builder.manifest(rows, path.name)
                )
                written.append(manifest)
        if options.signing_key:
            end = chunk[-1]
            signed = checkpoints.sign(
                checkpoints.load_private(options.signing_key),
                last,
                str(end.hash),
                str(end.event_id),
                int(end.ts_ms),
            )
            path = directory / f"{stem}.checkpoint.json"
            await asyncio.to_thread(write_temporary, path, signed.to_json().encode())
            written.append(path)
        _test_stop("before-commit")
        await conn.execute(
            update(cursors)
            .where(cursors.c.adapter == NAME)
            .values(last_seq=last, updated_ms=now_ms(), files=cursors.c.files + len(written))
        )
        await add_counts(conn, Counter(r.kind for r in chunk), "exported")
    _test_stop("before-rename")
    await asyncio.to_thread(publish, written)
    result.events += len(chunk)
    result.files += written
    return len(chunk) < CHUNK
