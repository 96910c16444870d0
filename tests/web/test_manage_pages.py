"""The room management pages in a real browser (Debian's Chromium through Playwright): a manager
makes a room and adds a member, a plain member is offered nothing and refused when forging, an
administrator edits a category and finds the change in the audit log, stored markup stays text.
"""

from __future__ import annotations

import asyncio
import shutil
from base64 import b64encode
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.client import RequestFailed
from tests.conftest import PASSWORD, scaled
from tests.web.manage_fixtures import (
    SHOTS,
    Site,
    new_page,
    shot,
    sign_in,
    sign_in_by_keyboard,
)
from tests.web.manage_fixtures import browser as browser
from tests.web.manage_fixtures import site as site

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "manage.png"
XSS_NAME = '<img src=x onerror="window.__xss=1">'
XSS_TEXT = "<script>window.__xss=2</script>"
XSS_CATEGORY = '<b id="xss">bold</b><img src=x onerror="window.__xss=3">'


async def make_creator(site: Site, name: str) -> None:
    """``name`` may create rooms in General (category 1)."""
    root = await site.login("root")
    await root.call(
        "category.update", category=1, add={"creators": [{"kind": "user", "id": site.ids[name]}]}
    )


async def test_a_manager_creates_a_closed_room_and_adds_a_member(site: Site, browser: Any) -> None:
    await site.user("root", admin=True)
    await site.user("alice", display_name="Alice A.")
    await site.user("bob", display_name="Bob B.")
    await make_creator(site, "alice")
    bob = await site.login("bob")

    page = await new_page(browser)
    await page.goto(site.http + "/manage/")
    await page.locator("#signin").wait_for()
    await shot(page, "manage-signin")
    await sign_in(page, site.http + "/manage/", "alice")
    await page.get_by_role("button", name="New room").click()
    form = page.locator("#create-form")
    await form.get_by_label("Name").fill("Design reviews")
    await form.get_by_label("Description").fill("Weekly design reviews")
    assert await form.get_by_label("Privacy").input_value() == "closed"
    await form.get_by_role("button", name="Create").click()
    await page.locator("#settings-form").wait_for()

    # the room is closed: bob finds it but may not read it yet
    listed = (await bob.call("rooms"))["rooms"]
    assert [(r["name"], r["privacy"]) for r in listed] == [("Design reviews", "closed")]
    with pytest.raises(RequestFailed) as refused:
        await bob.call("join", room=listed[0]["id"])
    assert refused.value.code == "forbidden"
    await page.locator("#people-search").fill("bo")
    await page.get_by_role("button", name="Add bob (Bob B.)").wait_for()
    # with the keyboard: from the search field, Tab past the role to the first result's button
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused == "Add bob (Bob B.)"
    await page.keyboard.press("Enter")
    await page.locator("#role-members li", has_text="bob").wait_for()

    invited = await bob.next_event("invited", timeout=scaled(10))
    assert invited["room"]["name"] == "Design reviews"
    assert invited["room"]["roles"] == ["member"]
    joined = await bob.call("join", room=listed[0]["id"])
    assert joined["ok"]
    await shot(page, "manage-room")
    SHOTS.mkdir(exist_ok=True)
    DOCS_IMAGE.parent.mkdir(exist_ok=True)
    shutil.copyfile(SHOTS / "manage-room.png", DOCS_IMAGE)

    # settings: the page's changes are the server's (an add-in the administrators made, too)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            site.management + "/api/v1/addins",
            json={"name": "Whiteboard", "url": "https://addins.example/board"},
            headers={"Authorization": "Basic " + b64encode(f"root:{PASSWORD}".encode()).decode()},
        ) as response:
            assert response.status == 201
            addin = (await response.json())["id"]
    options = page.locator("#settings-form select[name=addin] option", has_text="Whiteboard")
    async with asyncio.timeout(scaled(10)):  # the node re-reads the add-ins every 2 s
        while not await options.count():
            await asyncio.sleep(0.5)
            await page.locator("#room-list button.room").first.click()  # the editor, read again
            await page.locator("#settings-form").wait_for()
    await page.locator("#settings-form").get_by_label("Add-in").select_option("Whiteboard")
    await page.locator("#settings-form").get_by_label("Type").select_option("auditorium")
    await page.locator("#settings-form").get_by_role("button", name="Save").click()
    await page.locator("#settings-form h2 .tag", has_text="auditorium").wait_for()
    room = (await bob.call("room.get", room=listed[0]["id"]))["room"]
    assert room["type"] == "auditorium" and room["can_post"] is False
    assert room["addin"] == addin and room["addin_info"]["name"] == "Whiteboard"
    await page.get_by_role("button", name="Disable the room").click()
    await page.get_by_role("button", name="Enable the room").wait_for()
    with pytest.raises(RequestFailed):
        await bob.call("room.get", room=room["id"])  # disabled: gone for bob

    narrow = await new_page(browser, width=320, height=700)
    await sign_in(narrow, site.http + "/manage/", "alice")
    await narrow.locator("#room-list button.room").first.click()
    await narrow.locator("#settings-form").wait_for()
    await shot(narrow, "manage-320px")
    width = await narrow.evaluate("document.documentElement.scrollWidth")
    assert width <= 320, f"the page is {width} px wide at 320 px"
    assert page.errors == [] and narrow.errors == []


async def test_a_member_is_offered_nothing_and_forged_requests_are_refused(
    site: Site, browser: Any
) -> None:
    await site.user("root", admin=True)
    await site.user("alice")
    await site.user("bob")
    await make_creator(site, "alice")
    alice = await site.login("alice")
    room = (await alice.call("room.create", name="Ops", privacy="closed"))["room"]["id"]
    await alice.call(
        "room.members", room=room, add={"members": [{"kind": "user", "id": site.ids["bob"]}]}
    )

    page = await new_page(browser, scheme="dark")
    await sign_in_by_keyboard(page, site.http + "/manage/", "bob")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 24, 28)"  # the dark scheme's --bg
    await page.get_by_text("You manage no room and may not create rooms.").wait_for()
    assert await page.get_by_role("button", name="New room").count() == 0
    assert await page.locator("#room-list button.room").count() == 0
    assert await page.locator("#settings-form").count() == 0
    await shot(page, "manage-member")

    # A forged request from the page's origin, over its own WebSocket, with bob's token.
    token = await page.evaluate("sessionStorage.getItem('chatserver.token')")
    ws_port = site.node.addresses["websocket"][1]
    answers = await page.evaluate(
        """async ([url, token, room, bob]) => {
            const ws = new WebSocket(url);
            await new Promise((ok) => ws.addEventListener("open", ok, {once: true}));
            const replies = [];
            ws.addEventListener("message", (e) => replies.push(JSON.parse(e.data)));
            const send = (o) => ws.send(JSON.stringify(o));
            send({op: "hello", id: 1, protocol: 1});
            send({op: "auth", id: 2, token});
            send({op: "room.members", id: 3, room,
                  add: {managers: [{kind: "user", id: bob}]}});
            send({op: "room.update", id: 4, room, name: "mine now"});
            send({op: "room.choices", id: 5, room, query: "a"});
            send({op: "room.disable", id: 6, room});
            while (replies.filter((r) => "re" in r).length < 6)
                await new Promise((ok) => setTimeout(ok, 20));
            ws.close();
            return replies.filter((r) => "re" in r && r.re >= 3)
                          .map((r) => [r.re, r.ok, r.error && r.error.code]);
        }""",
        [f"ws://127.0.0.1:{ws_port}/", token, room, site.ids["bob"]],
    )
    assert sorted(answers) == [
        [3, False, "forbidden"],
        [4, False, "forbidden"],
        [5, False, "forbidden"],
        [6, False, "forbidden"],
    ]
    seen = (await alice.call("room.get", room=room))["room"]
    assert seen["name"] == "Ops" and seen["disabled"] is False
    assert seen["managers"] == [{"kind": "user", "id": site.ids["alice"]}]


async def test_an_admin_edits_a_category_and_sees_the_audit_entry(site: Site, browser: Any) -> None:
    await site.user("root", admin=True)
    await site.user("bob")
    root = await site.login("root")
    research = (await root.call("category.create", name="Research"))["category"]["id"]

    page = await new_page(browser)
    await sign_in(page, site.management + "/admin/", "root")
    await page.locator("#category-list").get_by_role("button", name="Research").click()
    await page.locator("#category-form").wait_for()
    await page.get_by_label("Add to").select_option("allowed")
    await page.get_by_label("Find users and groups").fill("bob")
    await page.get_by_role("button", name="Add bob").click()
    await page.locator("#list-allowed li", has_text="bob").wait_for()
    await shot(page, "admin-category")

    category = next(c for c in (await root.call("categories"))["categories"] if c["id"] == research)
    assert category["allowed"] == [{"kind": "user", "id": site.ids["bob"]}]

    await page.get_by_role("button", name="Audit log").click()
    row = page.locator("#audit-rows tr", has_text="category.update")
    await row.first.wait_for()
    assert f"category:{research}" in await row.first.inner_text()
    assert "root" in await row.first.inner_text()
    await shot(page, "admin-audit")
    for tab in ("Groups", "Users", "Add-ins", "Settings"):
        await page.get_by_role("button", name=tab, exact=True).click()
        await page.locator("#tab-body section, #tab-body form").first.wait_for()
    await shot(page, "admin-settings")
    # a user's policy: off, and bob can no longer sign in
    await page.get_by_role("button", name="Users", exact=True).click()
    await page.get_by_label("Persistent chat for bob").select_option("off")
    await page.get_by_text("Policy of bob saved.").wait_for()
    with pytest.raises(RequestFailed) as refused:
        await site.login("bob")
    assert refused.value.code == "forbidden"
    assert page.errors == []


async def test_stored_markup_renders_as_text(site: Site, browser: Any) -> None:
    await site.user("root", admin=True)
    await site.user("alice")
    await site.user("mallory", display_name='<img src=x onerror="window.__xss=4">')
    await make_creator(site, "alice")
    alice = await site.login("alice")
    room = (await alice.call("room.create", name=XSS_NAME, description=XSS_TEXT))["room"]["id"]
    root = await site.login("root")
    await root.call("category.create", name=XSS_CATEGORY, description=XSS_TEXT)
    await root.call("group.create", name=XSS_NAME)

    page = await new_page(browser)
    await sign_in(page, site.http + "/manage/", "alice")
    button = page.locator("#room-list button.room")
    assert XSS_NAME in await button.inner_text()
    await button.click()
    await page.locator("#settings-form").wait_for()
    assert await page.locator("#settings-form h2").inner_text() == XSS_NAME + "closed, normal"
    assert await page.locator("#settings-form input[name=description]").input_value() == XSS_TEXT
    await page.locator("#people-search").fill("mallory")
    result = page.locator("#search-results li", has_text="mallory")
    await result.wait_for()
    assert 'onerror="window.__xss=4"' in await result.inner_text()
    assert await page.locator("#editor img, #room-list img, #editor script").count() == 0

    admin = await new_page(browser)
    await sign_in(admin, site.management + "/admin/", "root")
    item = admin.locator("#category-list button", has_text="<b")
    assert await item.inner_text() == XSS_CATEGORY
    await item.click()
    await admin.locator("#category-form").wait_for()
    await admin.get_by_role("button", name="Groups").click()
    await admin.get_by_role("button", name=XSS_NAME).wait_for()
    await admin.get_by_role("button", name="Audit log").click()
    await admin.locator("#audit-rows tr").first.wait_for()
    await asyncio.sleep(scaled(0.3))  # any handler an injected element had would have run
    for p in (page, admin):
        assert await p.evaluate("window.__xss") is None
        assert await p.locator("main img, main b#xss, main script").count() == 0
    assert page.errors == [] and admin.errors == []
    assert room > 0
