"""The web client in a real browser: Debian's chromium driven by Playwright (the Python package;
``scripts/test`` installs chromium, Playwright's own browser download does not work here).

Nodes run as real ``chatserver run`` processes (:class:`WebNode`); one browser is shared by the
tests of a module, each user gets a browser context of their own (their own sessionStorage).
Screenshots go to ``tests/web/screenshots/`` (ignored by git; CI keeps them as artefacts).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatserver.pool.local import free_ports
from tests.conftest import PASSWORD, scaled

playwright_sync = pytest.importorskip("playwright.sync_api")

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
ROOT = Path(__file__).resolve().parents[2]


class WebNode:
    """One ``chatserver run`` process with every listener on a free loopback port."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._changed = threading.Condition()

    def start(self) -> WebNode:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatserver", "run"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(r"listening for HTTP clients")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + scaled(timeout)
        index = 0
        with self._changed:
            while True:
                while index < len(self.lines):
                    if match := re.search(pattern, self.lines[index]):
                        return match
                    index += 1
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n" + "".join(self.lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no {pattern!r} in\n" + "".join(self.lines))
                self._changed.wait(left)

    @property
    def url(self) -> str:
        return f"http://{self.env['CHATSERVER_LISTEN_HTTP']}/"

    def kill(self) -> None:
        """SIGKILL: the node dies without a word to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(20))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def node_env(name: str, database_url: str, **extra: str) -> dict[str, str]:
    tcp, websocket, management, peer, http = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env.update(
        CHATSERVER_NODE_NAME=name,
        CHATSERVER_DATABASE_URL=database_url,
        CHATSERVER_ADMIN_PASSWORD=PASSWORD,
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{tcp}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{websocket}",
        CHATSERVER_LISTEN_MANAGEMENT=f"127.0.0.1:{management}",
        CHATSERVER_LISTEN_PEER=f"127.0.0.1:{peer}",
        CHATSERVER_LISTEN_HTTP=f"127.0.0.1:{http}",
        CHATSERVER_LIMITS_POSTS_PER_USER_PER_S="100000",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion in a thread of its own: Playwright's sync API keeps an
    event loop running in the test's thread."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(asyncio.run(work()))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return out[0]


def post_many(node: WebNode, user: str, room: int, texts: list[str]) -> None:
    """Posts from a protocol client (TCP), in order."""
    from chatserver.client import Client

    host, port = node.env["CHATSERVER_LISTEN_TCP"].rsplit(":", 1)

    async def run() -> None:
        client = await Client.connect_tcp(host, int(port))
        try:
            await client.login(user, PASSWORD)
            for i, text in enumerate(texts):
                await client.call("post", room=room, text=text, cid=f"seed-{token()}-{i}")
        finally:
            await client.close()

    in_thread(run)


def as_user(node: WebNode, user: str, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Protocol calls by ``user`` (TCP), in order; their replies."""
    from chatserver.client import Client

    host, port = node.env["CHATSERVER_LISTEN_TCP"].rsplit(":", 1)

    async def run() -> list[dict[str, Any]]:
        client = await Client.connect_tcp(host, int(port))
        try:
            await client.login(user, PASSWORD)
            return [await client.call(op, **fields) for op, fields in calls]
        finally:
            await client.close()

    return in_thread(run)


def seed(
    url: str,
    users: list[str | tuple[str, str]],
    rooms: list[tuple[str, str] | tuple[str, str, str]],
) -> dict[str, int]:
    """Users (password PASSWORD; ``(name, display name)``) and rooms ``(name, privacy[,
    description])``; their ids by name."""
    from chatserver.passwords import hash_password
    from chatserver.store import rooms as room_store
    from chatserver.store import users as user_store
    from chatserver.store.db import Database

    async def run() -> dict[str, int]:
        db = Database(url)
        ids: dict[str, int] = {}
        try:
            password_hash = hash_password(PASSWORD)
            for user in users:
                name, display = (user, user) if isinstance(user, str) else user
                created = await user_store.create_user(
                    db, name, password_hash, display_name=display
                )
                ids[name] = created.id
            for name, privacy, *description in rooms:
                room = await room_store.create_room(
                    db, name, privacy=privacy, description=description[0] if description else ""
                )
                ids[name] = room.id
        finally:
            await db.close()
        return ids

    return in_thread(run)


@pytest.fixture(autouse=True)
def loop_errors() -> None:
    """Replaces the suite's check of the test's event loop: these tests have none of their own
    (the nodes are processes), and Playwright's sync API keeps its loop running in this thread,
    where no other can be run. The page's own errors are checked instead (:class:`Watch`)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("no /usr/bin/chromium (scripts/test installs it)")
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Watch:
    """What a page must never do: run a dialog, throw, log an error."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type == "error" else None,
        )


def open_page(browser: Any, url: str, width: int = 1100, height: int = 700) -> tuple[Any, Watch]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(scaled(15) * 1000)
    watch = Watch(page)
    page.goto(url)
    return page, watch


def sign_in(page: Any, user: str, password: str = PASSWORD) -> None:
    page.fill("#signin-user", user)
    page.fill("#signin-password", password)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#state[data-state=online]")


def open_room(page: Any, name: str) -> None:
    page.locator(".room-button", has_text=name).first.click()
    page.wait_for_selector("#room-head:not([hidden])")


def post(page: Any, text: str) -> None:
    page.fill("#composer-text", text)
    page.press("#composer-text", "Enter")


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def token() -> str:
    return secrets.token_hex(8)
