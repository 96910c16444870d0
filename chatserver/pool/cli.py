"""``chatserver pool …`` subcommands.

- ``pool up``: a whole pool on this machine (a local PostgreSQL cluster unless ``--database-url``,
  nodes on 127.0.0.1, 127.0.0.2, …), until Ctrl-C.
- ``pool nodes`` / ``activate`` / ``swap`` / ``drain``: the registry of the pool whose store the
  configuration names (``database.url``), through :mod:`chatserver.pool.control`.
- ``pool state`` / ``failover`` / ``failback``: the pool's store state (normal on
  ``database.url``, failed over onto ``database.backup_url``), through
  :mod:`chatserver.pool.failover`; the running nodes follow within ``failover_check_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def _fail(message: str, code: int = 2) -> None:
    print(f"chatserver: {message}", file=sys.stderr)
    raise SystemExit(code)


def _run(main: Awaitable[Any]) -> Any:
    import uvloop

    return uvloop.run(main)  # type: ignore[arg-type]


# -- pool up ---------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> None:
    if args.nodes < 1 or args.standby < 0 or args.nodes + args.standby > 32:
        _fail("--nodes must be at least 1 and --nodes + --standby at most 32")
    _run(_up(args))


async def _up(args: argparse.Namespace) -> None:
    from ..store.migrate import upgrade
    from .local import LocalPool, LocalPostgres

    cluster = None
    url = args.database_url
    if not url:
        cluster = LocalPostgres(Path(args.data) / "postgres" if args.data else None)
        print("chatserver: starting PostgreSQL …", flush=True)
        try:
            await asyncio.to_thread(cluster.start)
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            hint = f": {detail[-1]}" if detail else ""
            _fail(f"cannot start PostgreSQL ({' '.join(exc.cmd[-8:])}){hint}", 1)
        except Exception as exc:
            _fail(f"cannot start PostgreSQL (initdb and pg_ctl must be on PATH): {exc}", 1)
        url = cluster.url()
    password = os.environ.get("CHATSERVER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    addresses = "free" if args.free_ports else "hosts"
    if addresses == "hosts" and (taken := _taken_standard_port()):
        print(
            f"chatserver: {taken} is in use (a node of the tour, started with scripts/run?):"
            " every node gets free ports of 127.0.0.1 instead, as with --free-ports",
            flush=True,
        )
        addresses = "free"
    pool = LocalPool(
        url,
        addresses=addresses,
        env={
            "CHATSERVER_ADMIN_PASSWORD": password,
            "CHATSERVER_POOL_MAX_ACTIVE": str(args.nodes),
        },
        echo=args.verbose,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.to_thread(upgrade, url)
        if await _first_room(url):
            print(
                "chatserver: the store was empty: created the room 'lobby'; add users with"
                f" CHATSERVER_DATABASE_URL={_redact(url)} chatserver user add NAME",
                flush=True,
            )
        for _ in range(args.nodes + args.standby):
            starting = asyncio.ensure_future(pool.add())
            waiting = asyncio.ensure_future(stop.wait())
            await asyncio.wait([starting, waiting], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                starting.cancel()
                break
            waiting.cancel()
            starting.result()
        if not stop.is_set():
            print(f"chatserver: pool of {len(pool.nodes)} nodes on {_redact(url)}")
            print(f"chatserver: administrator 'admin', password {password}")
            print("chatserver: a fresh 256-bit pool secret was given to every node")
            for node in pool.describe():
                print(
                    f"  {node['node']:8} {node['state']:8} tcp {node['tcp']:21}"
                    f" {node['websocket']:27} peer {node['peer']:21}"
                    f" management {node['management']}"
                )
            print("chatserver: Ctrl-C stops every node", flush=True)
            watch = [asyncio.ensure_future(n.proc.wait()) for n in pool.nodes if n.proc]
            waiting = asyncio.ensure_future(stop.wait())
            await asyncio.wait([*watch, waiting], return_when=asyncio.FIRST_COMPLETED)
            for task in watch:
                if task.done():
                    print("chatserver: a node exited; stopping the pool", file=sys.stderr)
                task.cancel()
            waiting.cancel()
    except Exception as exc:
        print(f"chatserver: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        print("chatserver: stopping the pool", flush=True)
        await pool.stop()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)


def _taken_standard_port() -> str | None:
    """The first standard port of node 1 (127.0.0.1) that something else listens on."""
    import socket

    for port in (5041, 5080, 5081, 8011, 8012):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return f"127.0.0.1:{port}"
    return None


async def _first_room(url: str) -> bool:
    """Create the room ``lobby`` when the store has no room at all; True if it did."""
    from sqlalchemy import func, select

    from ..store import rooms as room_store
    from ..store.db import Database
    from ..store.schema import rooms

    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            count = (await conn.execute(select(func.count()).select_from(rooms))).scalar_one()
        if count:
            return False
        await room_store.create_room(db, "lobby", "Say hello")
        return True
    finally:
        await db.close()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return url


# -- registry commands -----------------------------------------------------------------------


def _with_db(
    args: argparse.Namespace, body: Callable[[Any, Any], Awaitable[dict[str, Any]]]
) -> None:
    from ..config import ConfigError, load_config
    from ..store.db import Database
    from .control import PoolControlError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _fail(str(exc))
    if not config.database.url.startswith(("postgresql://", "postgres://")):
        _fail("a pool's store is PostgreSQL: set database.url (or CHATSERVER_DATABASE_URL)")

    async def main() -> dict[str, Any]:
        db = Database(config.database.url)
        try:
            return await body(db, config)
        finally:
            await db.close()

    try:
        result = _run(main())
    except PoolControlError as exc:
        _fail(str(exc), 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for node in result["nodes"]:
        print(
            f"{node['name']:16} {node['state']:9} tcp {node['tcp']:21} peer {node['peer']:21}"
            f" management {node['management'] or '-':21}"
            f" heartbeat {node['heartbeat_age_s']:.1f} s ago"
        )


def cmd_nodes(args: argparse.Namespace) -> None:
    from .control import list_nodes

    _with_db(args, lambda db, config: list_nodes(db))


def cmd_activate(args: argparse.Namespace) -> None:
    from .control import set_active

    _with_db(
        args,
        lambda db, config: set_active(db, args.names, max_active=config.pool.max_active),
    )


def cmd_swap(args: argparse.Namespace) -> None:
    from .control import swap

    _with_db(args, lambda db, config: swap(db, args.active, args.standby))


def cmd_drain(args: argparse.Namespace) -> None:
    from .control import drain

    _with_db(args, lambda db, config: drain(db, args.name))


# -- store state ----------------------------------------------------------------------------


def _store_state(args: argparse.Namespace, state: str | None) -> None:
    from ..cli_common import cli_actor
    from ..config import ConfigError, load_config
    from ..store.db import Database
    from ..store.poolstate import FailoverError
    from .failover import StoreFailover, record_cli_change

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _fail(str(exc))
    if not config.database.backup_url:
        _fail("no backup store: set database.backup_url (or CHATSERVER_DATABASE_BACKUP_URL)")

    async def main() -> dict[str, Any]:
        db = Database(config.database.url)
        failover = StoreFailover(db, config.database.url, config.database.backup_url, 1.0)
        try:
            await failover.choose()
            before = failover.view()
            if state is None:
                return before.public()
            by = cli_actor()
            await failover.set_state(
                "failed_over" if state == "failed_over" else "normal",
                by=by,
                reason=args.reason,
                promote=args.promote,
            )
            after = failover.view()
            await record_cli_change(db, by, before, after)
            return after.public()
        finally:
            await db.close()

    try:
        result = _run(main())
    except FailoverError as exc:
        _fail(str(exc), 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    where = "database.url" if result["store"] == "main" else "database.backup_url"
    print(
        f"pool state {result['state']} on {where}"
        + (f" since {result['since_ms']} by {result['by']}" if result["since_ms"] else "")
        + (f": {result['reason']}" if result["reason"] else "")
    )


def cmd_state(args: argparse.Namespace) -> None:
    _store_state(args, None)


def cmd_failover(args: argparse.Namespace) -> None:
    _store_state(args, "failed_over")


def cmd_failback(args: argparse.Namespace) -> None:
    _store_state(args, "normal")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``pool`` command group to the top-level parser."""
    group = sub.add_parser("pool", help="run and manage a pool of nodes sharing PostgreSQL")
    actions = group.add_subparsers(dest="pool_command", required=True, metavar="ACTION")

    up = actions.add_parser("up", help="start a local pool (PostgreSQL and nodes) until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3, help="active nodes (default: 3)")
    up.add_argument("--standby", type=int, default=0, help="standby nodes (default: 0)")
    up.add_argument(
        "--data", metavar="DIR", help="keep PostgreSQL's data in DIR (default: a temporary one)"
    )
    up.add_argument(
        "--database-url", metavar="URL", help="use this PostgreSQL database instead of a local one"
    )
    up.add_argument(
        "--free-ports",
        action="store_true",
        help="every node on 127.0.0.1 with free ports (default: node N on 127.0.0.N, ports 5041,"
        " 5080, 8011, 8012)",
    )
    up.add_argument("--verbose", action="store_true", help="show every node's log")
    up.set_defaults(func=cmd_up)

    def registry_command(name: str, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[common], help=help)
        parser.add_argument("--json", action="store_true", help="print the nodes as JSON")
        return parser

    registry_command("nodes", "list the pool's nodes").set_defaults(func=cmd_nodes)
    activate = registry_command("activate", "make exactly these nodes active (others: standby)")
    activate.add_argument("names", nargs="+", metavar="NAME")
    activate.set_defaults(func=cmd_activate)
    swap = registry_command("swap", "move an active node to standby and a standby node to active")
    swap.add_argument("active")
    swap.add_argument("standby")
    swap.set_defaults(func=cmd_swap)
    drain = registry_command("drain", "tell a node's clients to move, then stop the node")
    drain.add_argument("name")
    drain.set_defaults(func=cmd_drain)

    state = actions.add_parser("state", parents=[common], help="show the pool's store state")
    state.add_argument("--json", action="store_true")
    state.set_defaults(func=cmd_state)
    for name, func, help in (
        ("failover", cmd_failover, "fail the pool over onto database.backup_url"),
        ("failback", cmd_failback, "bring the pool back onto database.url"),
    ):
        change = actions.add_parser(name, parents=[common], help=help)
        change.add_argument(
            "--promote",
            action="store_true",
            help="promote the target store if it is a standby (after fencing the other store and"
            " waiting until the standby has replayed its WAL)",
        )
        change.add_argument("--reason", default="", help="recorded with the state and audited")
        change.add_argument("--json", action="store_true")
        change.set_defaults(func=func)
