"""Export and import (docs/export-format.md) through the management API.

The files live in one folder, ``[transfer] directory`` on the node that answers: a request
names a file by a plain name (letters, digits, ``.``, ``_``, ``-``; no path), so the API can
neither read nor write anywhere else. After an import every node of the pool drops its cached
rooms, categories and rights (as after a category change), so imported rooms are seen at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from ...protocol.errors import BAD_REQUEST, CONFLICT, NOT_FOUND, ChatError
from ...transfer.exporter import ExportError, ExportOptions, export
from ...transfer.format import FormatError
from ...transfer.importer import ImportConflict, ImportReport, import_file
from ..context import Ctx
from ..routing import Router
from ..types import In, When, epoch_ms

log = logging.getLogger(__name__)

router = Router()

FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ExportIn(In):
    file: str = Field(pattern=FILE_NAME, description="the file to write in [transfer] directory")
    category: str | None = Field(None, min_length=1, max_length=256)
    room: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="NAME, or #ID; with category, the room of that name in that category",
    )
    since: When | None = None
    until: When | None = None
    messages: bool = True
    files: bool = False
    password_hashes: bool = False

    @field_validator("since", "until")
    @classmethod
    def _check(cls, value: int | str | None) -> int | str | None:
        epoch_ms(value)
        return value


class ExportOut(BaseModel):
    file: str
    bytes: int
    counts: dict[str, int]


class ImportIn(In):
    file: str = Field(pattern=FILE_NAME, description="a file in [transfer] directory")
    on_conflict: Literal["fail", "skip", "rename"] = "fail"


class ConflictOut(BaseModel):
    kind: str
    name: str
    action: str
    new_name: str | None


class ImportOut(BaseModel):
    source: str
    created: dict[str, int]
    reused: dict[str, int]
    read: dict[str, int]
    conflicts: list[ConflictOut]
    complete: bool


def _path(ctx: Ctx, name: str) -> Path:
    # The pattern already keeps a request inside the folder; this is the second lock.
    folder = Path(ctx.node.config.transfer.directory).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or path.name.startswith("."):
        raise ChatError(BAD_REQUEST, f"{name!r} is not a file name in the transfer folder")
    return path


def _report(report: ImportReport) -> dict[str, Any]:
    return {
        "source": report.source,
        "created": dict(report.created),
        "reused": dict(report.reused),
        "read": dict(report.read),
        "conflicts": [
            {"kind": c.kind, "name": c.name, "action": c.action, "new_name": c.new_name}
            for c in report.conflicts
        ],
        "complete": report.complete,
    }


@router.route(
    "POST",
    "/api/v1/exports",
    tag="transfer",
    summary="Export the deployment (or a category or room) to a file in [transfer] directory",
    body=ExportIn,
    response=ExportOut,
)
async def create_export(ctx: Ctx) -> Any:
    b: ExportIn = ctx.body
    scope, name = "all", None
    if b.room is not None:  # with category too: the room of that name in that category
        scope, name = "room", b.room
    elif b.category is not None:
        scope, name = "category", b.category
    options = ExportOptions(
        scope=scope,
        name=name,
        within=b.category if b.room is not None else None,
        since_ms=epoch_ms(b.since),
        until_ms=epoch_ms(b.until),
        messages=b.messages,
        files=b.files and b.messages,
        password_hashes=b.password_hashes,
    )
    path = _path(ctx, b.file)
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    try:
        with open(partial, "wb") as out:  # noqa: ASYNC230 (a local file, written in pages)
            counts = await export(ctx.db, out, options)
        await asyncio.to_thread(os.replace, partial, path)
    except ExportError as exc:
        partial.unlink(missing_ok=True)
        raise ChatError(NOT_FOUND, str(exc)) from None
    result = {"file": b.file, "bytes": path.stat().st_size, "counts": counts}
    await ctx.audit("export", f"file:{b.file}", dataclasses.asdict(options), result)
    return result


@router.route(
    "POST",
    "/api/v1/imports",
    tag="transfer",
    summary="Import a file of [transfer] directory (made by an export)",
    body=ImportIn,
    response=ImportOut,
)
async def create_import(ctx: Ctx) -> Any:
    b: ImportIn = ctx.body
    path = _path(ctx, b.file)
    if not path.is_file():
        raise ChatError(NOT_FOUND, f"no file {b.file!r} in the transfer folder")
    try:
        with open(path, "rb") as src:  # noqa: ASYNC230 (read a line at a time)
            report = await import_file(ctx.db, src, on_conflict=b.on_conflict)
    except ImportConflict as exc:
        names = "; ".join(c.line() for c in exc.report.conflicts[:20])
        log.warning("import of %s refused: %s", b.file, names)
        raise ChatError(CONFLICT, f"{exc}: {names}") from None
    except (FormatError, EOFError, OSError, zlib.error) as exc:
        log.warning("import of %s refused: %s", b.file, exc)
        raise ChatError(BAD_REQUEST, f"{b.file}: {exc}") from None
    ctx.gov.imported()
    result = _report(report)
    await ctx.audit("import", f"file:{b.file}", None, result)
    return result
