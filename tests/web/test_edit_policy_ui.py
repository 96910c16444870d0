"""The chat client offers Edit and Delete only where the room's edit policy allows them (the
``join`` reply's ``edit_policy`` and ``now``, docs/protocol.md 6.6 and 6.27): none under
"never", both under "always", under N minutes only while the message is younger than that —
and a row loses them when its window closes. One node (SQLite); the policies are set and an old
message stored through the store before the node starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chatserver.store.migrate import upgrade
from tests.conftest import scaled
from tests.web.conftest import (
    WebNode,
    in_thread,
    node_env,
    open_page,
    open_room,
    post,
    seed,
    shot,
    sign_in,
    token,
)

OLD = "posted ten minutes ago"


def _prepare(url: str, ids: dict[str, int]) -> None:
    from chatserver.store import lifecycle, messages
    from chatserver.store.db import Database, now_ms

    async def run() -> None:
        db = Database(url)
        try:
            await lifecycle.set_edit_policy(db, "room", ids["never-room"], "never")
            await lifecycle.set_edit_policy(db, "room", ids["always-room"], "always")
            await lifecycle.set_edit_policy(db, "room", ids["window-room"], "1")
            post = messages.NewPost(ids["window-room"], ids["alice"], "alice", "old-1", OLD)
            await messages.store_batch(db, [post], ts=now_ms() - 10 * 60_000)
        finally:
            await db.close()

    in_thread(run)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebNode, dict[str, int]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('editpolicy')}/chat.db"
    upgrade(url)
    ids = seed(
        url, ["alice"], [("never-room", "open"), ("always-room", "open"), ("window-room", "open")]
    )
    _prepare(url, ids)
    # The deployment's default would allow everything: every room here sets its own policy.
    web = WebNode("web-editpolicy", node_env("web-editpolicy", url)).start()
    try:
        yield web, ids
    finally:
        web.stop()


def _row(page: Any, text: str) -> Any:
    row = page.locator(".msg[data-seq]", has=page.locator(".text", has_text=text))
    row.locator("[data-act=reply]").wait_for(state="attached")  # drawn, with its actions
    return row


def _offered(row: Any) -> list[str]:
    return sorted(
        row.locator("[data-act=edit], [data-act=delete]").evaluate_all(
            "buttons => buttons.map((b) => b.dataset.act)"
        )
    )


def test_edit_and_delete_follow_the_rooms_policy(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    page, watch = open_page(browser, web.url)
    sign_in(page, "alice")
    # "always": both, on a message of hers.
    open_room(page, "always-room")
    text = f"always {token()}"
    post(page, text)
    assert _offered(_row(page, text)) == ["delete", "edit"]
    # "never": neither; and a forged edit from the page is still refused.
    open_room(page, "never-room")
    text = f"never {token()}"
    post(page, text)
    row = _row(page, text)
    assert _offered(row) == []
    seq = int(row.get_attribute("data-seq"))
    forged = page.evaluate(
        f"""Promise.all(["message.edit", "message.delete"].map((op) =>
             window.chatState.conn.request(op, {{room: {ids["never-room"]}, seq: {seq},
               text: "x", cid: "forged-" + op}}).then(() => "ok", (e) => e.code)))"""
    )
    assert forged == ["forbidden", "forbidden"]
    # One minute: not on the message ten minutes old, both on a new one.
    open_room(page, "window-room")
    assert _offered(_row(page, OLD)) == []
    text = f"window {token()}"
    post(page, text)
    row = _row(page, text)
    assert _offered(row) == ["delete", "edit"]
    shot(page, "edit-policy-window")
    # When its minute is over the row is drawn again without them: the page's idea of the
    # server's clock moves to a few seconds before that, and the room is drawn anew.
    room = ids["window-room"]
    page.evaluate(
        f"""() => {{ const s = window.chatState;
            const msg = s.roomData.get({room}).msgs.get({int(row.get_attribute("data-seq"))});
            s.clockSkew = msg.ts + 60_000 - {int(scaled(3) * 1000)} - Date.now(); }}"""
    )
    open_room(page, "always-room")
    open_room(page, "window-room")
    row = _row(page, text)
    assert _offered(row) == ["delete", "edit"]
    row.locator("[data-act=edit]").wait_for(state="detached")
    assert _offered(_row(page, text)) == []
    assert not watch.errors and not watch.dialogs
    page.context.close()
