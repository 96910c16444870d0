"""The ``chatserver`` command: run a node, migrate the store, add users and rooms."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

# The helpers the subcommands share live in cli_common, which they import instead of this module.
from .cli_common import cli_actor
from .cli_common import config_of as _config
from .cli_common import fail as _fail
from .config import Config

# The cyclic collector's thresholds in `chatserver run` (see _serve).
GC_THRESHOLD = (50_000, 2, 20)


def _run_loop(main: Awaitable[Any]) -> Any:
    import uvloop

    return uvloop.run(main)  # type: ignore[arg-type]


# -- run -----------------------------------------------------------------------------------


async def _serve(config: Config) -> None:
    from .server import Node, StartupError
    from .store.health import StoreUnavailable
    from .store.migrate import SchemaError

    try:
        node = Node(config)
    except StartupError as exc:
        _fail(str(exc))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            print("chatserver: forced exit", file=sys.stderr)
            raise SystemExit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)  # before start: a signal during it is not lost
    try:
        await node.start()
    except (SchemaError, StartupError) as exc:
        await node.stop()
        _fail(str(exc))
    except (OSError, SQLAlchemyError, StoreUnavailable) as exc:
        await node.stop()
        cause = exc.__cause__ if isinstance(exc, StoreUnavailable) and exc.__cause__ else exc
        _fail(f"cannot use the store at {_redact(config.database.url)}: {_reason(cause)}", 1)
    # The objects made at start-up live as long as the process: take them out of the cyclic
    # collector's sight, and collect less often. A node holds many long-lived objects (a
    # connection and its session each keep dozens); with the default thresholds a busy node
    # spent about a quarter of its fan-out time walking them (loadtest/RESULTS.md, P4b).
    # Generation 1 is collected after every GC_THRESHOLD[1] young collections, so it holds at
    # most that many times GC_THRESHOLD[0] objects: with 20, a node in an 80,000-user join
    # storm (where almost everything it makes lives on) stopped for 2-3 s per collection of
    # generation 1, and its peers closed their links.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    await stop.wait()
    print("chatserver: shutting down", flush=True)
    await node.stop()


def cmd_run(args: argparse.Namespace) -> None:
    from .logs import configure

    config = _config(args)
    configure(args.log_level, config.log.format, config.node.name, config.log.connections)
    if args.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    print(f"chatserver: node {config.node.name}, store {_redact(config.database.url)}", flush=True)
    _run_loop(_serve(config))


def _reason(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's wrapping and links."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0] if str(orig) else type(orig).__name__


def _redact(url: str) -> str:
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)  # the parameter form (store/dsn.py)
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


# -- store commands ------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> None:
    from .store.migrate import head_revision, upgrade

    config = _config(args)
    try:
        upgrade(config.database.url)
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"cannot use the store at {_redact(config.database.url)}: {_reason(exc)}", 1)
    print(f"chatserver: schema is at revision {head_revision()}")


def _with_store(args: argparse.Namespace, body: Callable[[Any, Any], Awaitable[None]]) -> None:
    """Run ``body(config, db)`` against the configured store (its schema checked first)."""
    from .store.db import Database
    from .store.migrate import SchemaError, check_schema, upgrade

    config = _config(args)
    if config.database.url.startswith("sqlite"):
        upgrade(config.database.url)

    async def main() -> None:
        db = Database(config.database.url)
        try:
            await check_schema(db)
            await body(config, db)
        except SchemaError as exc:
            _fail(str(exc))
        except (OSError, SQLAlchemyError) as exc:
            _fail(f"cannot use the store at {_redact(config.database.url)}: {_reason(exc)}", 1)
        finally:
            await db.close()

    _run_loop(main())


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            _fail("no terminal to ask for a password; use --password-stdin")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            _fail("the passwords differ")
    if len(password) < 8:
        _fail("the password must have at least 8 characters")
    return password


def cmd_user_add(args: argparse.Namespace) -> None:
    from .protocol.errors import ChatError

    _config(args)  # a bad configuration is reported before the password is asked for
    password = _read_password(args)

    async def body(config: Any, db: Any) -> None:
        from .accounts import add_user
        from .password_policy import PasswordPolicy
        from .rooms.audit import Audit

        try:
            user = await add_user(
                db,
                Audit(db),
                args.name,
                password,
                by=cli_actor(),
                is_admin=args.admin,
                display_name=args.display_name,
                policy=PasswordPolicy(config.passwords),
            )
        except ChatError as exc:
            _fail(exc.message, 1)
        role = "administrator" if user.is_admin else "user"
        print(f"chatserver: added {role} {user.name!r} (id {user.id})")

    _with_store(args, body)


def cmd_room_add(args: argparse.Namespace) -> None:
    from .store import rooms as room_store

    if not 1 <= len(args.name) <= 256:
        _fail("a room name has 1 to 256 characters")
    if len(args.description) > 256:
        _fail("a room description has at most 256 characters")

    async def body(config: Any, db: Any) -> None:
        from .rooms.audit import Audit, room_state
        from .store import categories as category_store

        if args.category not in await category_store.load_categories(db):
            _fail(f"no category {args.category}", 1)
        try:
            room = await room_store.create_room(
                db,
                args.name,
                args.description,
                category_id=args.category,
                privacy=args.privacy,
                type=args.type,
            )
        except room_store.RoomExists:
            _fail(f"a room named {args.name!r} exists", 1)
        await Audit(db).record(
            cli_actor(), "room.create", f"room:{room.id}", None, room_state(room)
        )
        print(f"chatserver: added room {room.name!r} (id {room.id})")

    _with_store(args, body)


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $CHATSERVER_CONFIG, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(prog="chatserver", description="A persistent chat server.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run a chat node")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    migrate = sub.add_parser("migrate", parents=[common], help="create or upgrade the store schema")
    migrate.set_defaults(func=cmd_migrate)

    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", required=True, metavar="ACTION"
    )
    user_add = user.add_parser("add", parents=[common], help="add a user")
    user_add.add_argument("name")
    user_add.add_argument("--admin", action="store_true", help="make the user an administrator")
    user_add.add_argument("--display-name", help="the name others see (default: NAME)")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user_add.set_defaults(func=cmd_user_add)
    from .cli_users import register as register_users

    register_users(user, common, _with_store, _read_password)

    room = sub.add_parser("room", help="manage rooms").add_subparsers(
        dest="room_command", required=True, metavar="ACTION"
    )
    room_add = room.add_parser("add", parents=[common], help="add a room")
    room_add.add_argument("name")
    room_add.add_argument("--description", default="")
    room_add.add_argument(
        "--category", type=int, default=1, help="category id (default: 1, General)"
    )
    room_add.add_argument(
        "--privacy",
        choices=["open", "closed", "secret"],
        default="open",
        help="who may find and enter the room (default: open)",
    )
    room_add.add_argument("--type", choices=["normal", "auditorium"], default="normal")
    room_add.set_defaults(func=cmd_room_add)

    from compliance.cli import register as register_compliance

    from .admin.cli import register as register_admin
    from .pool.cli import register as register_pool
    from .transfer.cli import register as register_transfer

    register_admin(sub, common)
    register_pool(sub, common)
    register_compliance(sub, common)
    register_transfer(sub, common)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
