"""Fixtures for the management pages' browser tests: a node on free loopback ports (its
WebSocket admits pages from its own client HTTP listener), and Debian's Chromium driven by
Playwright (async, on the test's event loop, beside the node).

The tests skip, saying why, when the ``playwright`` package or ``/usr/bin/chromium`` is missing
(``apt-get install chromium``; Playwright's own browser download is never used). Screenshots go
to ``tests/web/screenshots/`` (ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chatserver.client import Client
from chatserver.server import Node
from tests.conftest import PASSWORD, Harness, node_config, start_node

CHROMIUM = os.environ.get("CHATSERVER_CHROMIUM", "/usr/bin/chromium")
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
SHOTS = Path(__file__).resolve().parent / "screenshots"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@dataclass
class Site:
    """A running node, its page addresses, and helpers to set it up over the protocol."""

    node: Node
    harness: Harness
    http: str  # the client HTTP listener, http://127.0.0.1:port
    management: str  # the management port
    ids: dict[str, int] = field(default_factory=dict)

    async def user(self, name: str, *, admin: bool = False, display_name: str = "") -> int:
        user = await self.node.accounts.add_user(
            name, PASSWORD, by="test", is_admin=admin, display_name=display_name or None
        )
        self.ids[name] = user.id
        return user.id

    async def login(self, name: str) -> Client:
        return await self.harness.login(name)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    # The node's own origin is admitted to its WebSocket (no websocket_origins needed).
    node = await start_node(node_config(f"sqlite:///{tmp_path}/chat.db"))
    harness = Harness(node)
    host, port = node.addresses["http"]
    mhost, mport = node.addresses["management"]
    try:
        yield Site(node, harness, f"http://{host}:{port}", f"http://{mhost}:{mport}")
    finally:
        await harness.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    why = browser_missing()
    if why is not None:
        pytest.skip(why)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def new_page(
    browser: Any, width: int = 1100, height: int = 760, scheme: str = "light"
) -> Any:
    """A page in its own context (its own session storage), collecting console errors."""
    context = await browser.new_context(
        viewport={"width": width, "height": height}, color_scheme=scheme
    )
    page = await context.new_page()
    page.errors = []  # type: ignore[attr-defined]

    def console(message: Any) -> None:
        # the browser asks for /favicon.ico on its own (the pages have none): not the page's error
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            page.errors.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


async def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def sign_in(page: Any, url: str, name: str, password: str = PASSWORD) -> None:
    await page.goto(url)
    await page.locator("#signin input[name=user]").fill(name)
    await page.locator("#signin input[name=password]").fill(password)
    await page.locator("#signin button[type=submit]").click()
    await page.locator("#signin").wait_for(state="detached")


async def sign_in_by_keyboard(page: Any, url: str, name: str, password: str = PASSWORD) -> None:
    """The sign-in form with the keyboard alone: the name field has the focus, Tab, Enter."""
    await page.goto(url)
    await page.locator("#signin input[name=user]").wait_for()
    await page.keyboard.type(name)
    await page.keyboard.press("Tab")
    await page.keyboard.type(password)
    await page.keyboard.press("Enter")
    await page.locator("#signin").wait_for(state="detached")
