"""The chat client on one node (SQLite): two users in two browser contexts, one shared browser.

Each test opens its own contexts (own sessionStorage, so own sign-in) and closes them.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatserver.store.migrate import upgrade
from tests.web.conftest import (
    WebNode,
    as_user,
    node_env,
    open_page,
    open_room,
    post,
    post_many,
    seed,
    shot,
    sign_in,
)

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&"
USERS = ["alice", "bob", ("mallory", f"Mal {XSS}")]
ROOMS = [
    ("lobby", "open", "the room for everyone"),
    ("random", "open"),
    ("history", "open"),
    ("vault", "secret"),
    (f"xss {XSS}", "open", f"desc {XSS}"),
]
HISTORY = 300  # messages in "history", for the scroll-back test


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebNode, dict[str, int]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('web')}/chat.db"
    upgrade(url)
    ids = seed(url, USERS, ROOMS)
    web = WebNode("web1", node_env("web1", url)).start()
    try:
        post_many(web, "bob", ids["history"], [f"old {i + 1}" for i in range(HISTORY)])
        yield web, ids
    finally:
        web.stop()


def test_page_headers_sign_in_and_post(browser: Any, node: tuple[WebNode, dict[str, int]]) -> None:
    web, _ids = node
    page, watch = open_page(browser, web.url)
    response = page.request.get(web.url)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "conn.js", "app.css"):
        assert (
            "script-src 'self'"
            in page.request.get(f"{web.url}static/{name}").headers["content-security-policy"]
        )
    assert page.request.get(f"{web.url}static/..%2Fclient.py").status == 404
    assert page.request.get(f"{web.url}static/index.html").status == 404
    sign_in(page, "alice")
    open_room(page, "lobby")
    post(page, "hello from alice")
    page.wait_for_selector(".msg .text >> text=hello from alice")
    # The message box takes Shift+Enter as a new line.
    page.fill("#composer-text", "line one")
    page.press("#composer-text", "Shift+Enter")
    page.keyboard.type("line two")
    page.press("#composer-text", "Enter")
    two_lines = page.locator(".msg .text", has_text="line one")
    two_lines.wait_for()
    assert two_lines.inner_text() == "line one\nline two"
    assert not watch.errors and not watch.dialogs
    page.context.close()


def test_two_users_chat_live_and_unread_counts_follow(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, _ids = node
    alice, alice_watch = open_page(browser, web.url)
    bob, bob_watch = open_page(browser, web.url)
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    open_room(bob, "random")  # joined: its counts are live from now on
    open_room(bob, "lobby")
    open_room(alice, "lobby")
    post(alice, "live one")
    bob.wait_for_selector(".msg .text >> text=live one")
    post(bob, "live two")
    alice.wait_for_selector(".msg .text >> text=live two")
    # Posts in another room show as unread, live, and go once bob reads them.
    open_room(alice, "random")
    random_badge = bob.locator(".room-button", has_text="random").locator(".badge.unread")
    post(alice, "unread 1")
    random_badge.filter(has_text="1").wait_for()
    post(alice, "unread 2 @bob")
    random_badge.filter(has_text="2").wait_for()
    bob.locator(".room-button", has_text="random").locator(".badge.mentions").wait_for()
    shot(bob, "chat")
    open_room(bob, "random")
    random_badge.wait_for(state="detached")
    # The mention is listed, and jumps to its message.
    bob.click("#open-mentions")
    bob.locator("#mention-list button", has_text="unread 2").click()
    bob.wait_for_selector(".msg.jumped .text >> text=unread 2 @bob")
    for watch in (alice_watch, bob_watch):
        assert not watch.errors and not watch.dialogs
    alice.context.close()
    bob.context.close()


def seqs(page: Any, room: int) -> list[int]:
    return page.evaluate(f"[...window.chatState.roomData.get({room}).seqs]")  # type: ignore[no-any-return]


def test_backchat_then_scroll_back_without_gaps(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    page, watch = open_page(browser, web.url)
    sign_in(page, "alice")
    open_room(page, "history")
    page.wait_for_selector(f".msg .text >> text=old {HISTORY}")
    backchat = seqs(page, ids["history"])
    assert backchat == list(range(HISTORY - 29, HISTORY + 1))  # the default backchat: 30
    # Scroll to the top until the first message is there.
    for _ in range(100):
        page.eval_on_selector("#messages", "el => { el.scrollTop = 0; }")
        if seqs(page, ids["history"])[0] == 1:
            break
        page.wait_for_timeout(100)
    assert seqs(page, ids["history"]) == list(range(1, HISTORY + 1))  # nothing missing, no double
    for _ in range(50):  # the first message is drawn at the top
        page.eval_on_selector("#messages", "el => { el.scrollTop = 0; }")
        if page.locator('.msg[data-seq="1"]').count():
            break
        page.wait_for_timeout(100)
    assert page.locator('.msg[data-seq="1"] .text').inner_text() == "old 1"
    rendered = page.locator(".msg[data-seq]").count()
    assert 0 < rendered < HISTORY / 2, rendered  # virtualized: only the rows near the viewport
    assert not watch.errors and not watch.dialogs
    page.context.close()


def test_virtual_list_scrolls_10000_messages(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, _ids = node
    page, watch = open_page(browser, web.url)
    page.wait_for_selector("#signin-user")
    result = page.evaluate(
        """async () => {
        const { VirtualList } = await import("/static/list.js");
        const scroller = document.createElement("div");
        scroller.style.cssText = "height:600px;overflow-y:auto;position:fixed;top:0;width:600px";
        const inner = document.createElement("div");
        inner.style.position = "relative";
        scroller.append(inner);
        document.body.append(scroller);
        const render = (item) => {
          const row = document.createElement("div");
          row.className = "msg";
          row.textContent = `message ${item.key} ` + "x".repeat(item.key % 200);
          return row;
        };
        const list = new VirtualList(scroller, inner, render, (item) => item.key);
        const items = Array.from({ length: 10000 }, (_, i) => ({ key: i + 1 }));
        list.setItems(items);
        const times = [];
        for (let step = 0; step <= 200; step++) {
          scroller.scrollTop = (scroller.scrollHeight * (200 - step)) / 200;
          const t0 = performance.now();
          list.draw();
          times.push(performance.now() - t0);
        }
        times.sort((a, b) => a - b);
        return { rows: inner.children.length, p50: times[100], max: times[times.length - 1] };
    }"""
    )
    print(f"virtual list, 10,000 messages: {result}")
    assert result["rows"] < 100  # a few screens of rows in the DOM, not 10,000
    assert result["p50"] < 16  # a frame's budget at 60 Hz, for the typical step
    assert not watch.errors
    page.context.close()


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x80\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_file_uploaded_by_one_is_downloaded_by_the_other(
    browser: Any, node: tuple[WebNode, dict[str, int]], tmp_path: Path
) -> None:
    web, _ids = node
    alice, alice_watch = open_page(browser, web.url)
    bob, bob_watch = open_page(browser, web.url)
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    open_room(alice, "lobby")
    open_room(bob, "lobby")
    data = os.urandom(300_000)
    source = tmp_path / "report.bin"
    source.write_bytes(data)
    alice.set_input_files("#file-input", str(source))
    bob_file = bob.locator(".msg .file", has_text="report.bin")
    bob_file.wait_for()
    with bob.expect_download() as info:
        bob_file.get_by_role("button", name="Download").click()
    saved = tmp_path / "downloaded.bin"
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    # An image is previewed from a blob: URL (the token never goes into a URL).
    image = tmp_path / "pic.png"
    image.write_bytes(png(40, 30))
    alice.set_input_files("#file-input", str(image))
    preview = bob.locator(".msg .file img")
    preview.wait_for()
    # (Polled from here: wait_for_function evaluates a string, which the page's CSP forbids.)
    for _ in range(100):
        if bob.evaluate("document.querySelector('.msg .file img').naturalWidth") == 40:
            break
        bob.wait_for_timeout(100)
    assert bob.evaluate("document.querySelector('.msg .file img').naturalWidth") == 40
    assert preview.get_attribute("src").startswith("blob:")
    # Over the size limit (from hello): refused before a byte is sent.
    limit = alice.evaluate("window.chatState.hello.limits.max_file_size_kb") * 1024
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(limit + 1)
    uploads = []
    alice.on("request", lambda r: uploads.append(r.url) if "/files" in r.url else None)
    alice.set_input_files("#file-input", str(big))
    alice.wait_for_selector("#composer-error >> text=at most")
    assert uploads == []
    shot(bob, "files")
    for watch in (alice_watch, bob_watch):
        assert not watch.dialogs and not watch.errors
    alice.context.close()
    bob.context.close()


def test_search_finds_and_jumps(browser: Any, node: tuple[WebNode, dict[str, int]]) -> None:
    web, ids = node
    post_many(web, "alice", ids["random"], ["the needle is here", "hay", "more hay"])
    page, watch = open_page(browser, web.url)
    sign_in(page, "bob")
    open_room(page, "lobby")
    page.click("#open-search")
    page.fill("#search-text", "needle")
    page.fill("#search-from", "alice")
    page.press("#search-text", "Enter")
    hit = page.locator("#search-results button", has_text="needle")
    hit.wait_for()
    assert hit.locator("mark").inner_text() == "needle"
    hit.click()
    page.wait_for_selector(".msg.jumped .text >> text=the needle is here")
    assert page.locator("#room-name").inner_text() == "random"
    # An old message far back in history: the jump loads the page around it.
    page.fill("#search-text", "old")
    page.fill("#search-from", "")
    page.check("#search-here")
    open_room(page, "history")
    page.click("#open-search")
    page.fill("#search-text", '"old 7"')
    page.press("#search-text", "Enter")
    page.locator("#search-results button", has_text="old 7").first.click()
    page.wait_for_selector(".msg.jumped .text >> text=old 7")
    shot(page, "search")
    assert not watch.errors and not watch.dialogs
    page.context.close()


def test_stored_xss_renders_as_text(
    browser: Any, node: tuple[WebNode, dict[str, int]], tmp_path: Path
) -> None:
    web, ids = node
    room = f"xss {XSS}"
    post_many(
        web, "mallory", ids[room], [f"msg {XSS} https://example.org/a?b=1 javascript:alert(3)"]
    )
    page, watch = open_page(browser, web.url)
    sign_in(page, "mallory")
    open_room(page, "xss")
    # (A file name keeps only what follows its last "/": no "</script>" in it.)
    file_name = "f <img src=x onerror=alert(4)> \"'&.txt"
    page.set_input_files(
        "#file-input", files=[{"name": file_name, "mimeType": "text/plain", "buffer": b"x"}]
    )
    assert page.locator(".file-name", has_text="f <img").inner_text() == file_name
    page.wait_for_selector(".msg .text >> text=msg <img")
    # Every field shows the payload as text: the room name and description, the display name,
    # the message, the file name; and nothing ran.
    assert page.locator("#room-name").inner_text() == room
    assert page.locator("#room-description").inner_text() == f"desc {XSS}"
    assert XSS in page.locator(".msg .who").first.inner_text()
    assert XSS in page.locator(".room-button", has_text="xss").inner_text()
    assert page.locator("img[src=x]").count() == 0
    assert page.evaluate("document.scripts.length") == 1  # app.js only
    links = page.locator(".msg .text a")
    assert links.count() == 1  # only the https URL; "javascript:" stays text
    assert links.first.get_attribute("href") == "https://example.org/a?b=1"
    assert links.first.get_attribute("rel") == "noopener noreferrer"
    # Search snippets too.
    page.click("#open-search")
    page.fill("#search-text", "msg")
    page.press("#search-text", "Enter")
    page.locator("#search-results button", has_text="<script>").wait_for()
    assert page.locator("img[src=x]").count() == 0
    # A right-to-left override stays inside its message.
    post(page, "\u202eevil reversed")
    page.wait_for_selector(".msg .text >> text=evil reversed")
    bidi = page.evaluate(  # in one turn of the page: no re-render in between
        "[...document.querySelectorAll('.msg .text, .msg .who, .room-button .name')]"
        ".map(e => getComputedStyle(e).unicodeBidi)"
    )
    assert bidi and set(bidi) == {"isolate"}, bidi
    page.wait_for_timeout(300)  # an onerror would fire by now
    assert not watch.dialogs and not watch.errors
    page.context.close()


def test_secret_rooms_never_appear_for_a_non_member(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    page, watch = open_page(browser, web.url)
    sign_in(page, "bob")
    page.locator(".room-button", has_text="lobby").wait_for()
    assert page.locator(".room-button", has_text="vault").count() == 0
    page.fill("#room-filter", "vau")
    page.wait_for_selector("#room-groups >> text=No room matches.")
    answer = page.evaluate(
        f"window.chatState.conn.request('join', {{room: {ids['vault']}}})"
        ".then(() => 'joined', (e) => e.code)"
    )
    assert answer == "not_found"
    assert not watch.dialogs
    page.context.close()


def test_narrow_screen_in_dark_mode(browser: Any, node: tuple[WebNode, dict[str, int]]) -> None:
    web, _ids = node
    context = browser.new_context(viewport={"width": 320, "height": 640}, color_scheme="dark")
    page = context.new_page()
    page.goto(web.url)
    sign_in(page, "alice")
    page.click("#menu")
    open_room(page, "lobby")
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 24, 28)", background  # the dark palette
    assert page.evaluate("document.querySelector('.top').offsetHeight") <= 48  # one row
    page.wait_for_timeout(300)  # the drawer's slide
    shot(page, "narrow-dark")
    context.close()


def test_first_run_open_the_printed_url_sign_in_as_admin_create_a_room_and_chat(
    browser: Any, tmp_path: Path
) -> None:
    """The README's promise: run, open the printed URL, sign in with the printed administrator
    password, create a room and chat, with no other step."""
    url = f"sqlite:///{tmp_path}/first.db"
    env = node_env("first", url)
    del env["CHATSERVER_ADMIN_PASSWORD"]
    web = WebNode("first", env).start()
    try:
        password = web.wait_for(r"created administrator 'admin' with password: (\S+)").group(1)
        printed = web.wait_for(r"web client: open (http://\S+) in a browser").group(1)
        assert printed == web.url
        page, watch = open_page(browser, printed)
        sign_in(page, "admin", password)
        page.click(".create summary")
        page.fill("#create-name", "my first room")
        page.click("#create-form button[type=submit]")
        page.wait_for_selector("#room-name >> text=my first room")
        post(page, "it works")
        page.wait_for_selector(".msg .text >> text=it works")
        shot(page, "first-run")
        # Sign out: the token is revoked and forgotten; the sign-in form is back.
        token = page.evaluate("sessionStorage.getItem('chatserver.token')")
        assert token
        page.click("#signout")
        page.wait_for_selector("#signin:not([hidden])")
        assert page.evaluate("sessionStorage.getItem('chatserver.token')") is None
        assert token_refused(web, token)
        assert not watch.errors and not watch.dialogs
        page.context.close()
    finally:
        web.stop()


def test_invitation_roster_feeds_and_add_in(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    page, watch = open_page(browser, web.url)
    sign_in(page, "bob")
    # A feed: saved, then its matches arrive live.
    page.click("#open-feeds")
    page.fill("#feed-name", "deploys")
    page.fill("#feed-query", "deploy")
    page.click("#feed-form button[type=submit]")
    page.locator("#feed-list li", has_text="deploys").wait_for()
    post_many(web, "alice", ids["random"], ["we deploy at noon"])
    page.locator("#feed-hits button", has_text="deploy at noon").click()
    page.wait_for_selector(".msg.jumped .text >> text=we deploy at noon")
    # An invitation: the administrator adds bob to a closed room; it appears, and opens.
    (created,) = as_user(web, "admin", ("room.create", {"name": "club", "privacy": "closed"}))
    club = created["room"]["id"]
    as_user(
        web,
        "admin",
        ("room.members", {"room": club, "add": {"members": [{"kind": "user", "id": ids["bob"]}]}}),
    )
    invitation = page.locator("#invitation-list li", has_text="club")
    invitation.wait_for()
    invitation.get_by_role("button", name="Open").click()
    page.wait_for_selector("#room-name >> text=club")
    # The roster: bob is there.
    page.click("#show-roster")
    page.locator("#roster-list li", has_text="bob").wait_for()
    assert "1 person is here" in page.inner_text("#roster-count")
    # An add-in in a sandboxed frame (no allow-same-origin).
    from chatserver.store.admin import create_addin

    addin = in_thread_db(web, lambda db: create_addin(db, "board", "https://addin.invalid/x"))
    as_user(web, "admin", ("room.update", {"room": club, "addin": addin["id"]}))
    page.locator("#show-addin:not([hidden])").click()
    frame = page.locator("#panel-addin iframe")
    assert frame.get_attribute("sandbox") == "allow-scripts allow-forms allow-popups"
    assert frame.get_attribute("src") == "https://addin.invalid/x"
    shot(page, "panels")
    assert not watch.dialogs
    page.context.close()


def in_thread_db(web: WebNode, work: Any) -> Any:
    from chatserver.store.db import Database
    from tests.web.conftest import in_thread

    async def run() -> Any:
        db = Database(web.env["CHATSERVER_DATABASE_URL"])
        try:
            return await work(db)
        finally:
            await db.close()

    return in_thread(run)


def test_the_page_weighs_under_300_kb_compressed() -> None:
    import gzip

    from chatserver.web.client import load_static

    files = load_static()
    assert {"index.html", "app.js", "conn.js", "list.js", "text.js", "files.js"} <= set(files)
    total = sum(len(gzip.compress(f.body, 9)) for f in files.values())
    print(f"web client: {len(files)} files, {total} bytes gzip-compressed")
    assert total < 300 * 1024


def token_refused(web: WebNode, token: str) -> bool:
    from chatserver.client import Client
    from tests.web.conftest import in_thread

    host, port = web.env["CHATSERVER_LISTEN_TCP"].rsplit(":", 1)

    async def run() -> bool:
        client = await Client.connect_tcp(host, int(port))
        try:
            await client.call("hello", protocol=1)
            reply = await client.request("auth", token=token)
            return reply["ok"] is False and reply["error"]["code"] == "unauthenticated"
        finally:
            await client.close()

    return in_thread(run)
