"""The route table, its handler modules, its request models, and the ``chatserver admin``
commands checked against it: every route has a command, every command calls routes that exist."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import pkgutil
import re
import sys
import types
import typing
from collections.abc import AsyncIterator, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, RootModel

from chatserver.admin import handlers
from chatserver.admin.client import LOOKUPS, Api
from chatserver.admin.command import Command
from chatserver.admin.commands import COMMANDS, LOGIN_ROUTE
from chatserver.admin.routes import HANDLER_MODULES, ROUTES
from chatserver.admin.types import In
from chatserver.cli import build_parser, main
from chatserver.store.migrate import upgrade
from tests.conftest import PASSWORD, Harness, node_config, start_node

STATIC = "static-automation-token-0123456789"

# Routes deliberately without a ``chatserver admin`` command, each with the reason. (None now.)
NO_COMMAND: dict[str, str] = {
    # bytes, not JSON, and two ids: fetched with any HTTP client (docs/administration.md)
    "GET /api/v1/holds/{hold_id}/files/{file_id}": "a held file's bytes",
}

TABLE = {f"{r.method} {r.path}" for r in ROUTES}


def test_the_table_joins_every_handler_module() -> None:
    found = {name for _, name, _ in pkgutil.iter_modules(handlers.__path__)} - {"views"}
    listed = {module.__name__.rpartition(".")[2] for module in HANDLER_MODULES}
    assert found == listed, f"handler modules missing from routes.HANDLER_MODULES: {found - listed}"
    assert len(ROUTES) == len(TABLE), "a method and path declared twice"
    names = [r.handler.__name__ for r in ROUTES]
    assert len(names) == len(set(names)), "operation ids (handler names) must be unique"


def test_every_route_has_a_command_and_every_command_a_route() -> None:
    declared = {route for command in COMMANDS for route in command.routes} | {LOGIN_ROUTE}
    assert not declared - TABLE, f"commands call routes that do not exist: {declared - TABLE}"
    missing = TABLE - declared - set(NO_COMMAND)
    assert not missing, f"routes without a command (add one, or to NO_COMMAND): {missing}"
    assert set(NO_COMMAND) <= TABLE and not set(NO_COMMAND) & declared


def _admin_commands() -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    admin = subparsers(build_parser())["admin"]
    for resource, parser in subparsers(admin).items():
        for verb, command in subparsers(parser).items():
            yield resource, verb, command


def test_every_command_is_on_the_command_line() -> None:
    registered = {(resource, verb): p for resource, verb, p in _admin_commands()}
    assert set(registered) == {(c.resource, c.verb) for c in COMMANDS}
    for command in COMMANDS:
        parser = registered[command.resource, command.verb]
        assert parser.get_default("command_spec") is command


def _models(tp: Any) -> Iterator[type[BaseModel]]:
    """The models in a type annotation, and in their fields, recursively."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
        for field in tp.model_fields.values():
            yield from _models(field.annotation)
    elif isinstance(tp, types.UnionType) or typing.get_origin(tp) is not None:
        for arg in typing.get_args(tp):
            yield from _models(arg)


def _checked(model: type[BaseModel]) -> bool:
    """An In, or a RootModel that is a choice between Ins (each checks its own text)."""
    if issubclass(model, In):
        return True
    if issubclass(model, RootModel):
        root = model.model_fields["root"].annotation
        choices = typing.get_args(root) or (root,)
        return all(isinstance(c, type) and issubclass(c, In) for c in choices)
    return False


def test_every_request_model_checks_its_text() -> None:
    """Bodies and queries, and every model inside them, derive from In (the text check)."""
    models = {m for r in ROUTES for tp in (r.body, r.query) if tp for m in _models(tp)}
    assert len(models) > 20
    unchecked = sorted(m.__name__ for m in models if not _checked(m))
    assert not unchecked, f"request models that do not derive from In: {unchecked}"


# -- every command against a running node ----------------------------------------------------


def _pattern(route: str) -> re.Pattern[str]:
    method, _, template = route.partition(" ")
    path = re.sub(r"{(\w+)}", lambda m: "[0-9]+" if m[1].endswith("_id") else "[^/]+", template)
    return re.compile(f"{method} {path}")


class Runner:
    """Runs ``chatserver admin … --json`` in this process, in a worker thread (the node serves
    on the test's event loop), recording every request each command sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[Command | None, str]] = []
        self.ran: set[tuple[str, str]] = set()
        self._current: Command | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        request = Api.request

        def spy(api: Api, method: str, path: str, *rest: Any) -> Any:
            self.sent.append((self._current, f"{method} {path}"))
            return request(api, method, path, *rest)

        monkeypatch.setattr(Api, "request", spy)

    async def __call__(self, *argv: str, stdin: str = "", fails: str | None = None) -> Any:
        by_name = {(c.resource, c.verb): c for c in COMMANDS}
        self._current = by_name.get((argv[0], argv[1]))
        self.ran.add((argv[0], argv[1]))
        code, out, err = await asyncio.to_thread(self._run, ["admin", *argv, "--json"], stdin)
        if fails is not None:
            assert code == 1 and fails in err, (argv, code, out, err)
            return None
        assert code == 0, (argv, err)
        return json.loads(out)

    @staticmethod
    def _run(argv: list[str], stdin: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            sys.stdin = saved
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    url = f"sqlite:///{tmp_path}/chat.db"
    await asyncio.to_thread(upgrade, url)
    node = await start_node(
        node_config(
            url, management={"token": STATIC}, transfer={"directory": str(tmp_path / "transfer")}
        )
    )
    harness = Harness(node)
    await harness.user("root", admin=True)
    assert node.management is not None and node.management.address is not None
    host, port = node.management.address
    monkeypatch.setenv("CHATSERVER_ADMIN_URL", f"http://{host}:{port}")
    monkeypatch.setenv("CHATSERVER_ADMIN_TOKEN", STATIC)
    try:
        yield harness
    finally:
        await harness.close()


async def test_every_command_calls_its_route(
    running: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command once, against a real node: it succeeds (or is refused by the API, not by
    routing), every request it sends is a route it declares, and every route gets a request."""
    run = Runner()
    run.install(monkeypatch)
    assert (await run("login", "--user", "root", "--password-stdin", stdin=PASSWORD + "\n"))[
        "token"
    ]
    bob = (await run("users", "add", "bob", "--password-stdin", stdin=PASSWORD + "\n"))["id"]
    await run("users", "list", "--query", "bo")
    await run("users", "show", str(bob))
    await run("users", "policy", str(bob), "default")
    await run("users", "disconnect", str(bob))
    await run("users", "password", str(bob), "--password-stdin", stdin=PASSWORD + "\n")
    await run("sessions", "list")
    gid = str((await run("groups", "add", "legal"))["id"])
    await run("groups", "list")
    await run("groups", "members", gid, "--add", "user:bob")
    await run("groups", "show", gid)
    cid = str((await run("categories", "add", "Deals", "--allow", "group:legal"))["id"])
    await run("categories", "list")
    await run("categories", "update", cid, "--description", "M&A", "--creator", "user:bob")
    await run("categories", "show", cid)
    await run("categories", "eligible", cid)
    aid = str((await run("addins", "add", "board", "https://example.com/board"))["id"])
    await run("addins", "list")
    await run("addins", "show", aid)
    await run("addins", "update", aid, "--new-url", "https://example.com/b2")
    rid = str(
        (await run("rooms", "add", "merger", "--category", cid, "--member", "group:legal"))["id"]
    )
    await run("rooms", "list", "--category", cid)
    await run("rooms", "update", rid, "--addin", aid, "--manager", "user:bob")
    await run("rooms", "show", rid)
    await run("rooms", "eligible", rid)
    await run("rooms", "disable", rid)
    await run("rooms", "enable", rid)
    client = await running.login("bob")
    await client.call("join", room=int(rid))
    for n, text in enumerate(("keep this", "drop this", "replace this")):
        await client.call("post", room=int(rid), text=text, cid=f"c{n}")
    assert len((await run("messages", "search", "--room", rid))["messages"]) == 3
    assert (await run("messages", "remove", "--room", rid, "--keyword", "drop"))["changed"] == 1
    replaced = await run("messages", "replace", "--room", rid, "--keyword", "replace")
    assert replaced["changed"] == 1
    assert (await run("rooms", "clear", rid, "--until", "2999-01-01"))["removed"] == 2
    await run("config", "show")
    await run("config", "set", "default_chat_history=40")
    await run("config", "set", "max_file_size_kb=9", "--node", "test-node")
    await run("config", "unset", "max_file_size_kb", "--node", "test-node")
    await run("config", "unset", "default_chat_history")
    await run("pool", "show")
    not_pooled = "409 conflict"
    await run("pool", "activate", "test-node", fails=not_pooled)
    await run("pool", "swap", "test-node", "other", fails=not_pooled)
    await run("pool", "drain", "test-node", fails=not_pooled)
    await run("pool", "state")
    no_backup = "409 conflict"  # no database.backup_url
    await run("pool", "failover", "--promote", fails=no_backup)
    await run("pool", "failback", fails=no_backup)
    not_configured = "409 conflict"  # no [directory]: tests/userdir runs them against slapd
    await run("directory", "status", fails=not_configured)
    await run("directory", "sync", "--override-guard", fails=not_configured)
    await run("audit", "list", "--target", f"room:{rid}")
    await run("compliance", "show")
    # issue 18: the edit policy, retention, legal holds
    assert (await run("edit-policy", "room", rid, "15"))["effective"] == "15"
    await run("edit-policy", "category", cid, "inherit")
    await run("retention", "set-deployment", "--days", "365")
    await run("retention", "set-category", cid, "--days", "90", "--files-days", "30")
    await run("retention", "set-room", rid, "--days", "30", "--disabled")
    assert len((await run("retention", "list"))["policies"]) == 3
    await run("retention", "preview", "--scope", "room", "--scope-id", rid, "--days", "1")
    await run("retention", "run")
    await run("retention", "unset-room", rid)
    await run("retention", "unset-category", cid)
    await run("retention", "unset-deployment")
    placed = await run("holds", "place", "--name", "case", "--room", rid, "--since", "2026-01-01")
    await run("holds", "list")
    await run("holds", "messages", str(placed["id"]), "--limit", "10")
    await run("holds", "lift", str(placed["id"]))
    assert (await run("exports", "create", "all.jsonl.gz", "--files"))["counts"]["room"] >= 1
    imported = await run("imports", "create", "all.jsonl.gz", "--on-conflict", "skip")
    assert imported["complete"]
    await run("rooms", "delete", rid)
    await run("addins", "delete", aid)
    await run("categories", "delete", cid)
    await run("groups", "delete", gid)

    assert run.ran >= {(c.resource, c.verb) for c in COMMANDS}
    hit = set()
    for command, sent in run.sent:
        allowed = set(command.routes if command else (LOGIN_ROUTE,)) | LOOKUPS
        routes = [route for route in allowed if _pattern(route).fullmatch(sent)]
        assert routes, f"{sent} is not a route {command} declares"
        hit.update(routes)
    assert hit == TABLE - set(NO_COMMAND), f"routes no command called: {TABLE - hit}"
