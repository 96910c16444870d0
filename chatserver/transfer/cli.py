"""``chatserver export`` and ``chatserver import`` (docs/export-format.md, docs/operations.md)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import zlib
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy.exc import SQLAlchemyError

from ..cli_common import config_of, fail


def _when(text: str) -> int:
    """Epoch ms, or an ISO 8601 date / date-time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date, a date-time or epoch ms"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _url(args: argparse.Namespace) -> str:
    return str(args.database or config_of(args).database.url)


def _run(main: Any) -> Any:
    import uvloop

    return uvloop.run(main)


def cmd_export(args: argparse.Namespace) -> None:
    from ..store.db import Database
    from .exporter import ExportError, ExportOptions, export

    scope, name = "all", None
    if args.room is not None:  # with --category too: the room of that name in that category
        scope, name = "room", args.room
    elif args.category is not None:
        scope, name = "category", args.category
    options = ExportOptions(
        scope=scope,
        name=name,
        within=args.category if args.room is not None else None,
        since_ms=args.since,
        until_ms=args.until,
        messages=not args.no_messages,
        files=args.files and not args.no_messages,
        password_hashes=args.with_password_hashes,
    )
    url = _url(args)
    tmp = f"{args.out}.part"

    async def main(out: IO[bytes]) -> dict[str, int]:
        db = Database(url, pool_size=1)
        try:
            return await export(db, out, options)
        finally:
            await db.close()

    try:
        with open(tmp, "wb") as out:
            counts = _run(main(out))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, args.out)
    except ExportError as exc:
        os.unlink(tmp)
        fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        fail(f"export: {exc}", 1)
    print(f"chatserver: exported to {args.out}: " + json.dumps(counts, sort_keys=True))


def cmd_import(args: argparse.Namespace) -> None:
    from ..store.db import Database
    from .format import FormatError
    from .importer import ImportConflict, import_file

    url = _url(args)

    async def main(src: IO[bytes]) -> Any:
        db = Database(url, pool_size=1)
        try:
            return await import_file(db, src, on_conflict=args.on_conflict)
        finally:
            await db.close()

    try:
        with open(args.file, "rb") as src:
            report = _run(main(src))
    except ImportConflict as exc:
        print("\n".join(exc.report.lines()[:1] + [c.line() for c in exc.report.conflicts]))
        fail(f"import: {exc} (choose --on-conflict skip or rename)", 1)
    except (FormatError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        fail(f"import: {args.file}: {exc}", 1)
    except (OSError, SQLAlchemyError) as exc:
        fail(f"import: {exc}", 1)
    print("\n".join(report.lines()))
    if not report.complete:
        raise SystemExit(1)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``export`` and ``import`` to the top-level parser."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--database", metavar="URL", help="the store (default: [database] url)")
    p = sub.add_parser(
        "export",
        parents=[common, store],
        help="write categories, groups, rooms, add-ins, users, messages and files to a file",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file (gzip JSON Lines)")
    p.add_argument("--category", metavar="NAME", help="only this category and its rooms")
    p.add_argument("--room", metavar="NAME", help="only this room (NAME, or #ID)")
    p.add_argument("--since", type=_when, metavar="WHEN", help="messages and files from then")
    p.add_argument("--until", type=_when, metavar="WHEN", help="messages and files before then")
    p.add_argument("--no-messages", action="store_true", help="the directory only")
    p.add_argument("--files", action="store_true", help="include files (their bytes)")
    p.add_argument(
        "--with-password-hashes",
        action="store_true",
        help="include users' password hashes (without: imported users must reset)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", parents=[common, store], help="import a file of `export`")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--on-conflict",
        choices=["skip", "rename", "fail"],
        default="fail",
        help="a name that exists: reuse it / skip the room, import under a new name, or stop"
        " before changing anything (default: fail)",
    )
    p.set_defaults(func=cmd_import)
