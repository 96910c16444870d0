"""The chat client's message lifecycle (docs/protocol.md, 6.27): edit and delete one's own
messages, replies and threads, reactions, live through ``message.changed`` and caught up by
``join`` with ``changes`` after a reconnect. One node (SQLite), alice and bob in two browser
contexts of one shared browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chatserver.store.migrate import upgrade
from tests.web.conftest import (
    Watch,
    WebNode,
    as_user,
    node_env,
    open_page,
    open_room,
    post,
    seed,
    shot,
    sign_in,
    token,
)

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebNode, dict[str, int]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle')}/chat.db"
    upgrade(url)
    ids = seed(
        url,
        ["alice", ("bob", "Robert Bobson the Second")],
        [("edits", "open"), ("replies", "open"), ("away", "open")],
    )
    web = WebNode("web-lifecycle", node_env("web-lifecycle", url)).start()
    try:
        yield web, ids
    finally:
        web.stop()


def two(browser: Any, web: WebNode, room: str, width: int = 1100) -> tuple[Any, Any, list[Watch]]:
    alice, alice_watch = open_page(browser, web.url, width=width)
    bob, bob_watch = open_page(browser, web.url, width=width)
    for page, user in ((alice, "alice"), (bob, "bob")):
        sign_in(page, user)
        if width < 700:
            page.click("#menu")
        open_room(page, room)
    return alice, bob, [alice_watch, bob_watch]


def row(page: Any, text: str) -> Any:
    """The message row whose text holds ``text``."""
    return page.locator(".msg[data-seq]", has=page.locator(".text", has_text=text))


def seq_of(page: Any, text: str) -> int:
    return int(row(page, text).first.get_attribute("data-seq"))


def at(page: Any, seq: int) -> Any:
    return page.locator(f'.msg[data-seq="{seq}"]')


def held(page: Any, room: int, seq: int) -> dict[str, Any]:
    return page.evaluate(  # type: ignore[no-any-return]
        f"JSON.parse(JSON.stringify(window.chatState.roomData.get({room}).msgs.get({seq}) ?? null))"
    )


def active(page: Any) -> str | None:
    return page.evaluate("document.activeElement.dataset.act ?? null")  # type: ignore[no-any-return]


def test_edit_and_delete_own_messages_live_and_never_anothers(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    room = ids["edits"]
    alice, bob, watches = two(browser, web, "edits")
    text = f"draft {token()}"
    post(alice, text)
    bob.wait_for_selector(f".msg .text >> text={text}")
    seq = seq_of(alice, text)
    mine = at(alice, seq)
    # Escape cancels an edit: nothing is sent.
    mine.hover()
    mine.locator("[data-act=edit]").click()
    box = mine.locator("textarea.edit-text")
    assert box.input_value() == text
    box.fill("not this")
    box.press("Escape")
    mine.locator(".text", has_text=text).wait_for()
    assert held(alice, room, seq).get("state") is None
    # By keyboard: Enter on Edit, the box takes focus, Enter saves and focus goes back to Edit;
    # bob's page shows the new text and "(edited)" live.
    alice.wait_for_function("() => document.activeElement.dataset.act === 'edit'")
    mine.locator("[data-act=edit]").focus()
    alice.keyboard.press("Enter")
    alice.wait_for_function("() => document.activeElement.classList.contains('edit-text')")
    alice.keyboard.press("Control+A")
    alice.keyboard.type("final words")
    alice.keyboard.press("Enter")
    alice.wait_for_function("() => document.activeElement.dataset.act === 'edit'")
    theirs = at(bob, seq)
    theirs.locator(".text", has_text="final words").wait_for()
    theirs.locator(".edited", has_text="(edited)").wait_for()
    assert held(bob, room, seq)["state"] == "edited"
    # Bob gets no Edit or Delete on alice's message, and a forged edit from his page is refused.
    theirs.hover()
    theirs.locator("[data-act=reply]").wait_for()
    assert theirs.locator("[data-act=edit], [data-act=delete]").count() == 0
    forged = bob.evaluate(
        f"""Promise.all(["message.edit", "message.delete"].map((op) =>
             window.chatState.conn.request(op, {{room: {room}, seq: {seq}, text: "hacked",
               cid: "forged-" + op}}).then(() => "ok", (e) => e.code)))"""
    )
    assert forged == ["forbidden", "forbidden"]
    assert (
        as_user(web, "alice", ("history", {"room": room, "after": seq - 1, "limit": 1}))[0][
            "messages"
        ][0]["text"]
        == "final words"
    )
    # An edit that is markup shows as text on both pages; nothing runs.
    mine.hover()
    mine.locator("[data-act=edit]").click()
    mine.locator("textarea.edit-text").fill(f"edited {XSS}")
    mine.locator("textarea.edit-text").press("Enter")
    theirs.locator(".text", has_text="edited <img").wait_for()
    assert theirs.locator(".text").inner_text() == f"edited {XSS}"
    assert mine.locator(".text").inner_text() == f"edited {XSS}"
    for page in (alice, bob):
        assert page.locator("img[src=x]").count() == 0
    # Delete asks inline (no dialog); "no" keeps it, "yes" leaves a placeholder in its place.
    after = f"after {token()}"
    post(alice, after)
    bob.wait_for_selector(f".msg .text >> text={after}")
    mine.hover()
    mine.locator("[data-act=delete]").click()
    mine.locator(".confirm", has_text="Delete?").wait_for()
    mine.locator("[data-act=delete-no]").click()
    mine.locator("[data-act=delete]").wait_for()
    # By keyboard: the question takes focus on "no"; Shift+Tab, Enter says yes.
    mine.locator("[data-act=delete]").focus()
    alice.keyboard.press("Enter")
    alice.wait_for_function("() => document.activeElement.dataset.act === 'delete-no'")
    alice.keyboard.press("Shift+Tab")
    assert active(alice) == "delete-yes"
    alice.keyboard.press("Enter")
    theirs.locator(".text.deleted", has_text="message deleted").wait_for()
    mine.locator(".text.deleted", has_text="message deleted").wait_for()
    assert held(bob, room, seq)["state"] == "deleted"
    seqs = bob.evaluate(f"[...window.chatState.roomData.get({room}).seqs]")
    assert seq in seqs and seqs.index(seq) + 1 == seqs.index(seq_of(bob, after))
    assert theirs.locator("[data-act]").count() == 0  # no reply, no reaction on a placeholder
    shot(alice, "lifecycle-edit-delete")
    alice.wait_for_timeout(300)  # an onerror would fire by now
    for watch in watches:
        assert not watch.errors and not watch.dialogs
    alice.context.close()
    bob.context.close()


def test_reply_shows_its_reference_and_the_thread_lists_it(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    room = ids["replies"]
    alice, bob, watches = two(browser, web, "replies", width=320)
    tag = token()
    question = f"q {tag} {XSS}"  # under 80 characters: quoted whole
    post(alice, question)
    row(bob, tag).wait_for()
    seq = seq_of(bob, tag)
    for i in range(8):  # so the original scrolls away
        post(alice, f"filler {i}")
    bob.wait_for_selector(".msg .text >> text=filler 7")
    original = at(bob, seq)
    original.scroll_into_view_if_needed()
    original.locator("[data-act=reply]").click()
    replying = bob.locator("#replying-to", has_text=f"Replying to alice: q {tag}")
    assert replying.inner_text() == f"Replying to alice: {question}"
    assert bob.evaluate("document.activeElement.id") == "composer-text"
    post(bob, "the answer")
    assert bob.locator("#replying").is_hidden()
    answer = row(alice, "the answer")
    answer.locator(".reply-ref", has_text=tag).wait_for()
    assert answer.locator(".reply-ref").inner_text() == f"↪ alice: {question}"
    answer_seq = seq_of(alice, "the answer")
    assert held(alice, room, answer_seq)["reply_to"] == seq
    # At 320 px the actions of bob's own message wrap inside the list: nothing scrolls sideways.
    own = row(bob, "the answer")
    own.hover()
    own.locator("[data-act=delete]").wait_for()
    assert bob.evaluate("document.documentElement.scrollWidth") <= 320
    sizes = own.locator(".meta").evaluate("m => [m.scrollWidth, m.clientWidth]")
    assert sizes[0] <= sizes[1], sizes
    shot(bob, "lifecycle-reply-narrow")
    # The reference jumps to the original.
    answer.locator(".reply-ref").click()
    alice.wait_for_selector(f'.msg.jumped[data-seq="{seq}"]')
    # The thread view lists the answers, oldest first, and one posted elsewhere comes live.
    original = at(bob, seq)
    original.scroll_into_view_if_needed()
    original.locator("[data-act=thread]").click()
    bob.locator("#thread-list li", has_text="the answer").wait_for()
    as_user(
        web,
        "alice",
        ("post", {"room": room, "text": "another answer", "cid": token(), "reply_to": seq}),
    )
    bob.locator("#thread-list li", has_text="another answer").wait_for()
    listed = bob.locator("#thread-list li .text").all_inner_texts()
    assert listed == [question, "the answer", "another answer"]
    assert bob.locator("#thread-count").inner_text() == "2 replies"
    for page in (alice, bob):
        assert page.locator("img[src=x]").count() == 0
    for watch in watches:
        assert not watch.errors and not watch.dialogs
    alice.context.close()
    bob.context.close()


def reaction(page: Any, seq: int, emoji: str) -> Any:
    return at(page, seq).locator(f'.reaction[data-emoji="{emoji}"]')


def test_reactions_count_on_both_pages_and_toggle(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    alice, bob, watches = two(browser, web, "replies")
    text = f"react to me {token()}"
    post(alice, text)
    bob.wait_for_selector(f".msg .text >> text={text}")
    seq = seq_of(alice, text)
    # Alice picks 👍 from the fixed set.
    at(alice, seq).hover()
    at(alice, seq).locator("[data-act=react]").click()
    at(alice, seq).locator(".reaction").nth(5).wait_for()
    assert at(alice, seq).locator(".reaction").count() == 6
    reaction(alice, seq, "👍").click()
    reaction(bob, seq, "👍").locator(".count", has_text="1").wait_for()
    assert reaction(alice, seq, "👍").get_attribute("aria-pressed") == "true"
    # Bob adds his: 2 on both pages; clicking again takes his back.
    reaction(bob, seq, "👍").click()
    reaction(alice, seq, "👍").locator(".count", has_text="2").wait_for()
    reaction(bob, seq, "👍").locator(".count", has_text="2").wait_for()
    assert reaction(bob, seq, "👍").get_attribute("aria-pressed") == "true"
    reaction(bob, seq, "👍").click()
    reaction(alice, seq, "👍").locator(".count", has_text="1").wait_for()
    reaction(bob, seq, "👍").locator(".count", has_text="1").wait_for()
    assert reaction(bob, seq, "👍").get_attribute("aria-pressed") == "false"
    # After a reload alice's page does not know her reaction: a click still takes it back.
    alice.reload()
    alice.wait_for_selector("#state[data-state=online]")
    open_room(alice, "replies")
    reaction(alice, seq, "👍").click()
    reaction(bob, seq, "👍").wait_for(state="detached")
    reaction(alice, seq, "👍").wait_for(state="detached")
    stored = as_user(web, "bob", ("history", {"room": ids["replies"], "around": seq, "limit": 1}))
    assert "reactions" not in next(m for m in stored[0]["messages"] if m["seq"] == seq)
    for watch in watches:
        assert not watch.errors and not watch.dialogs
    alice.context.close()
    bob.context.close()


def test_changes_while_away_show_after_the_reconnect(
    browser: Any, node: tuple[WebNode, dict[str, int]]
) -> None:
    web, ids = node
    room = ids["away"]
    alice, bob, watches = two(browser, web, "away")
    texts = [f"keep {token()}", f"edit {token()}", f"drop {token()}"]
    for text in texts:
        post(alice, text)
    bob.wait_for_selector(f".msg .text >> text={texts[2]}")
    keep, edit, drop = (seq_of(bob, t) for t in texts)
    # Bob's page loses its connection and cannot get it back for now.
    bob.evaluate(
        """() => { const c = window.chatState.conn; window.savedUrls = [...c.urls];
                  c.urls.splice(0, c.urls.length, "ws://127.0.0.1:9"); c.ws.close(); }"""
    )
    bob.wait_for_selector("#state[data-state=reconnecting]")
    # While away: bob reacts (queued with its cid), alice edits, deletes and reacts.
    reaction_box = at(bob, keep)
    reaction_box.hover()
    reaction_box.locator("[data-act=react]").click()
    reaction(bob, keep, "🎉").click()
    assert bob.evaluate("window.chatState.changes.length") == 1
    cid = bob.evaluate("window.chatState.changes[0].cid")
    as_user(
        web,
        "alice",
        ("message.edit", {"room": room, "seq": edit, "text": "changed while away", "cid": token()}),
        ("message.delete", {"room": room, "seq": drop, "cid": token()}),
        ("reaction.add", {"room": room, "seq": keep, "emoji": "😮", "cid": token()}),
    )
    assert at(bob, edit).locator(".text", has_text=texts[1]).count() == 1  # not live: away
    bob.evaluate(
        """() => { const c = window.chatState.conn;
                  c.urls.splice(0, c.urls.length, ...window.savedUrls); }"""
    )
    bob.wait_for_selector("#state[data-state=online]", timeout=30_000)
    at(bob, edit).locator(".text", has_text="changed while away").wait_for()
    at(bob, edit).locator(".edited").wait_for()
    at(bob, drop).locator(".text.deleted").wait_for()
    reaction(bob, keep, "😮").locator(".count", has_text="1").wait_for()
    # Bob's queued reaction went once the page was back, and alice sees it live.
    reaction(alice, keep, "🎉").locator(".count", has_text="1").wait_for()
    reaction(bob, keep, "🎉").locator(".count", has_text="1").wait_for()
    assert bob.evaluate("window.chatState.changes.length") == 0
    # It went with the cid it was queued with: the same cid again is a duplicate.
    again = as_user(
        web, "bob", ("reaction.add", {"room": room, "seq": keep, "emoji": "🎉", "cid": cid})
    )
    assert again[0]["duplicate"] is True and again[0]["message"]["reactions"]["🎉"] == 1
    assert bob.evaluate(f"window.chatState.roomData.get({room}).changeNo") >= 4
    for watch in watches:  # (the refused reconnects log the browser's own error lines)
        assert not [e for e in watch.errors if "WebSocket connection" not in e]
        assert not watch.dialogs
    alice.context.close()
    bob.context.close()
