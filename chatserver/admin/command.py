"""How a ``chatserver admin RESOURCE ACTION`` command is declared, and the helpers that turn
its arguments into a request.

A :class:`Command` names the route it calls (``"GET /api/v1/rooms/{room_id}"``, as the route
table in :mod:`chatserver.admin.routes` declares it), how its body and query are made from the
arguments, and what of the answer to print. Path parameters come from the arguments: ``…_id``
from ``ID``, ``node_name`` from ``NODE`` (or ``--node``). A command calls only the routes it
declares, and the look-ups of principals by name (:data:`~chatserver.admin.client.LOOKUPS`).
"""

from __future__ import annotations

import getpass
import re
import sys
from argparse import ArgumentParser, Namespace
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..cli_common import fail
from .client import Api


@dataclass(frozen=True)
class Arg:
    """One ``ArgumentParser.add_argument(*names, **options)``."""

    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


@dataclass(frozen=True)
class Command:
    resource: str
    verb: str
    help: str
    route: str
    body: Callable[[Namespace, Api], Any] | None = None
    query: Callable[[Namespace], dict[str, Any]] | None = None
    arguments: tuple[Arg, ...] = ()
    columns: list[str] | None = None
    output: Callable[[Namespace, Any], Any] | None = None  # what of the answer to print
    per_node: str | None = None  # the route with ``--node NODE``

    @property
    def routes(self) -> tuple[str, ...]:
        return (self.route,) if self.per_node is None else (self.route, self.per_node)

    def add_arguments(self, parser: ArgumentParser) -> None:
        if "_id}" in self.route:
            parser.add_argument("id", type=int)
        if "{node_name}" in self.route:
            parser.add_argument("node")
        for a in self.arguments:
            parser.add_argument(*a.names, **a.options)
        if self.per_node is not None:
            parser.add_argument("--node", help="for this node only")

    def run(self, args: Namespace, api: Api) -> Any:
        route = self.per_node if self.per_node is not None and args.node else self.route
        params = {
            name: args.id if name.endswith("_id") else args.node
            for name in re.findall(r"{(\w+)}", route)
        }
        body = None if self.body is None else self.body(args, api)
        query = None if self.query is None else self.query(args)
        result = api.call(route, params, body, query)
        return result if self.output is None else self.output(args, result)


# -- arguments ------------------------------------------------------------------------------


def principal(api: Api, text: str) -> dict[str, Any]:
    """``everyone``, ``user:ID``, ``group:ID``, ``user:NAME`` or ``group:NAME``."""
    if text == "everyone":
        return {"kind": "everyone", "id": 0}
    kind, sep, ident = text.partition(":")
    if not sep or kind not in ("user", "group") or not ident:
        fail(f"{text!r}: a principal is everyone, user:ID|NAME or group:ID|NAME", 2)
    if ident.isdigit():
        return {"kind": kind, "id": int(ident)}
    if kind == "user":
        found = [
            u for u in api.call("GET /api/v1/users", query={"query": ident}) if u["name"] == ident
        ]
    else:
        found = [g for g in api.call("GET /api/v1/groups") if g["name"] == ident]
    if not found:
        fail(f"no {kind} named {ident!r}", 1)
    return {"kind": kind, "id": found[0]["id"]}


def principals(api: Api, values: list[str] | None) -> list[dict[str, Any]]:
    return [principal(api, v) for v in values or []]


def flags(args: Namespace, names: list[str]) -> dict[str, Any]:
    """The options given, by name."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def patch_lists(api: Api, args: Namespace, names: dict[str, str]) -> dict[str, Any]:
    """``add`` and ``remove`` from ``--OPTION`` and ``--unOPTION`` (``names``: option → field)."""
    add: dict[str, Any] = {}
    remove: dict[str, Any] = {}
    for option, field in names.items():
        if getattr(args, option, None):
            add[field] = principals(api, getattr(args, option))
        if getattr(args, "un" + option, None):
            remove[field] = principals(api, getattr(args, "un" + option))
    out: dict[str, Any] = {}
    if add:
        out["add"] = add
    if remove:
        out["remove"] = remove
    return out


def lists(names: dict[str, str], *, undo: bool = False) -> tuple[Arg, ...]:
    """``--OPTION PRINCIPAL…`` per list (and ``--unOPTION`` with ``undo``)."""
    out = []
    for option in names:
        out.append(arg(f"--{option}", nargs="+", metavar="PRINCIPAL"))
        if undo:
            out.append(arg(f"--un{option}", nargs="+", metavar="PRINCIPAL"))
    return tuple(out)


def password(args: Namespace, prompt: str) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return getpass.getpass(prompt)
