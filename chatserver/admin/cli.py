"""``chatserver admin …``: the management API from the command line (and ``chatserver
directory …``, the same as ``chatserver admin directory …``), and ``chatserver selftest``.

Every admin subcommand is one request to the management port (``--url``, default
``$CHATSERVER_ADMIN_URL`` or ``http://127.0.0.1:8012``), declared in
:mod:`chatserver.admin.commands` with the route it calls. The token comes from
``$CHATSERVER_ADMIN_TOKEN``; without it the command asks for an administrator's name and password
and logs in (``chatserver admin login`` prints a token to export). Output is a table, or the API's
JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from ..cli_common import fail
from .client import DEFAULT_URL, Api, ApiError, basic, show
from .command import Command
from .commands import COMMANDS, LOGIN_ROUTE, RESOURCES
from .commands_directory import COMMANDS as DIRECTORY_COMMANDS


def _url(args: argparse.Namespace) -> str:
    return args.url or os.environ.get("CHATSERVER_ADMIN_URL") or DEFAULT_URL


def _api(args: argparse.Namespace) -> Api:
    url = _url(args)
    token = os.environ.get("CHATSERVER_ADMIN_TOKEN")
    if token:
        return Api(url, "Bearer " + token)
    if not sys.stdin.isatty():
        fail("set CHATSERVER_ADMIN_TOKEN (see `chatserver admin login`), or run in a terminal", 1)
    name = input("administrator: ")
    password = getpass.getpass("password: ")
    try:
        token = str(Api(url, basic(name, password)).call(LOGIN_ROUTE)["token"])
    except ApiError as exc:
        fail(str(exc), 1)
    return Api(url, "Bearer " + token)


def _run(args: argparse.Namespace) -> None:
    command: Command = args.command_spec
    api = _api(args)
    api.allowed = frozenset(command.routes)
    try:
        result = command.run(args, api)
    except ApiError as exc:
        fail(str(exc), 1)
    show(result, as_json=args.json, columns=command.columns)


def login(args: argparse.Namespace) -> None:
    if not args.password_stdin and not sys.stdin.isatty():
        fail(
            "no terminal to ask for the password: give it on standard input with"
            " --password-stdin (and the name with --user)",
            2,
        )
    if args.password_stdin and not args.user:
        fail("--password-stdin needs --user NAME (standard input holds the password)", 2)
    try:
        name = args.user or input("administrator: ")
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("password: ")
    except (EOFError, KeyboardInterrupt):
        fail("no password given", 2)
    try:
        result: Any = Api(_url(args), basic(name, password)).call(LOGIN_ROUTE)
    except ApiError as exc:
        fail(str(exc), 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"export CHATSERVER_ADMIN_TOKEN={result['token']}")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``admin`` and ``selftest`` to the top-level parser."""
    http = argparse.ArgumentParser(add_help=False)
    http.add_argument(
        "--url", help=f"management API (default: $CHATSERVER_ADMIN_URL or {DEFAULT_URL})"
    )
    http.add_argument("--json", action="store_true", help="print the API's JSON")

    admin = sub.add_parser(
        "admin", help="administer a deployment through its management API"
    ).add_subparsers(dest="resource", required=True, metavar="RESOURCE")

    p = admin.add_parser("login", parents=[http], help="log in and print a token to export")
    p.add_argument("--user", help="administrator name (asked when missing)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (for scripts)",
    )
    p.set_defaults(func=login)

    resources = {
        name: admin.add_parser(name, help=text).add_subparsers(
            dest="verb", required=True, metavar="ACTION"
        )
        for name, text in RESOURCES.items()
    }
    for command in COMMANDS:
        p = resources[command.resource].add_parser(command.verb, parents=[http], help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=_run, command_spec=command)

    # ``chatserver directory …``: the same commands as ``chatserver admin directory …``.
    directory = sub.add_parser(
        "directory", help="the LDAP directory sync: its status, a run now (management API)"
    ).add_subparsers(dest="verb", required=True, metavar="ACTION")
    for command in DIRECTORY_COMMANDS:
        p = directory.add_parser(command.verb, parents=[http], help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=_run, command_spec=command)

    p = sub.add_parser(
        "selftest",
        parents=[common],
        help="two test users join a room, exchange a message each and leave; reports each step",
    )
    p.add_argument("--tcp", metavar="HOST:PORT", help="the node to test (default: listen.tcp)")
    p.add_argument("--room", default="selftest", help="the room to use (created if missing)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per step")
    p.set_defaults(func=_selftest)


def _selftest(args: argparse.Namespace) -> None:
    from .selftest import run

    run(args)
